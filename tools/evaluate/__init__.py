"""Evaluation of an ONNX detector on a labelled YOLO folder, through the daemon's own inference code."""
