"""Frame extraction from a video file or stream into an image folder with a manifest."""
