"""Shared core: boxes, anchors, box coder, matcher, registry, config, checkpoint, engine, io."""
