"""Procedural conveyor-belt scenes with exact ground truth (used by tools/synth and the built-in demo)."""

from streamd.synth.conveyor import CLASSES, ConveyorScene, SceneConfig, render_video

__all__ = ["CLASSES", "ConveyorScene", "SceneConfig", "render_video"]
