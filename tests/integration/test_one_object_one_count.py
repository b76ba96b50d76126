"""One object, one count by default: the first example configuration (Traffic.mp4, YOLOX-Nano, four vehicle
classes, one line, class-aware NMS) counts the 11 cars that cross, not 13 (car and truck boxes on one car)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from streamd.analytics import stream
from streamd.analytics.stream import StreamAnalytics
from streamd.config.models import PipelineConfig
from streamd.infer.classnames import class_index
from streamd.infer.postprocess import PostprocessParams
from tools.evaluate.runner import Detector

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
MEDIA = Path(os.environ.get("STREAMD_MEDIA", PROJECT.parent / "shared" / "media"))
VIDEO = MEDIA / "videos" / "Traffic.mp4"
MODEL = MEDIA / "models" / "yolox-nano" / "yolox_nano.onnx"
LABELS = MEDIA / "models" / "coco.names"


@pytest.fixture(scope="module")
def traffic() -> tuple[PipelineConfig, list[str], list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]]:
    if not (VIDEO.is_file() and MODEL.is_file() and LABELS.is_file()):
        pytest.skip(f"the shared media folder {MEDIA} (Traffic.mp4, YOLOX-Nano) is absent")
    raw = yaml.safe_load((PROJECT / "configs" / "traffic.yaml").read_text())["pipelines"]["traffic"]
    raw.pop("class_agnostic_nms", None)  # the defaults: class-aware NMS, as a user who leaves it out gets
    pipeline = PipelineConfig.model_validate({**raw, "model": str(MODEL), "labels": str(LABELS)})
    detector = Detector.open(str(MODEL), PostprocessParams(), labels=str(LABELS))
    names = detector.model.names
    index = class_index(names)
    params = PostprocessParams(confidence=pipeline.confidence, iou=pipeline.iou, class_agnostic=False,
                               max_detections=pipeline.max_detections,
                               class_ids=frozenset(index[c] for c in pipeline.classes or []))
    detector.params = params
    frames = []
    with av.open(str(VIDEO)) as container:
        for decoded in container.decode(video=0):
            dets = detector.detect([decoded.to_ndarray(format="bgr24")])[0]
            frames.append((float(decoded.time), dets.xyxy.copy(), dets.confidence.copy(),
                           dets.class_id.astype(np.int64)))
    return pipeline, names, frames


def count(pipeline: PipelineConfig, names: list[str], frames: list) -> dict[str, int]:
    analytics = StreamAnalytics(pipeline, names)
    counts: dict[str, int] = {}
    for t, xyxy, confidence, class_id in frames:
        for _, crossing in analytics.update(xyxy, confidence, class_id, t).crossings:
            counts[names[crossing.class_id]] = counts.get(names[crossing.class_id], 0) + 1
    return counts


def test_the_traffic_example_counts_each_vehicle_once(traffic) -> None:
    pipeline, names, frames = traffic
    assert count(pipeline, names, frames) == {"car": 11}


def test_without_the_merge_class_aware_nms_counts_a_car_twice(traffic, monkeypatch) -> None:
    # what the merge is for: the detector gives some cars a car box and a truck box, each of which became a track
    pipeline, names, frames = traffic
    assert any(len(set(c.tolist())) > 1 for _, _, _, c in frames)
    monkeypatch.setattr(stream, "merge_cross_class", lambda xyxy, confidence, class_id: np.arange(len(confidence)))
    assert sum(count(pipeline, names, frames).values()) > 11
