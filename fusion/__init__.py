"""Merging the faces several detectors (or several tiles of one photo) found: NMS, soft-NMS, weighted box fusion,
per-detector score calibration, and the fused photo detector (``--detector fusion``)."""
