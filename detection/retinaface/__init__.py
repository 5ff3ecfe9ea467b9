"""RetinaFace (MobileNet-0.25 / ResNet-50): network, anchors and targets, loss, photo detector, training."""
