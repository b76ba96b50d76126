"""Dataset tools for YOLO-format folders: convert, validate, dedupe, split, resize, augment, stats."""
