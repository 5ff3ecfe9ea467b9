"""Shared core, imported by every package and importing none: boxes, anchors, box coder, matcher, tiling, registry,
errors, config, checkpoint, engine, io, metrics, ONNX export, the command-line wrapper."""
