"""YOLO-style anchor-free face detector (CSP backbone, PAN, decoupled heads, SimOTA): network, targets, loss,
photo detector, mosaic data, pseudo-labelling by the fused teachers, training."""
