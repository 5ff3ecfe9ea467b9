"""RetinaFace training: config schema, data, model, loss and the shared trainer, wired together."""
from __future__ import annotations


import torch

from common.config import ConfigError
from common.engine import init_distributed, resolve_device
from common.tiling import pad_to_multiple
from common.registry import build_model
from detection.data.dataset import FaceDetectionDataset
from detection.training import detection_grid, fit_detector, validation_metrics
from detection.data.readers import read_train_val
from detection.retinaface.config import resolve_weights
from detection.retinaface.detector import BACKBONES, load_weights, preprocess
from detection.retinaface.loss import RetinaFaceLoss, anchor_metrics
from detection.retinaface.postprocess import RetinaFacePostprocessor
from detection.retinaface.targets import INPUT_MULTIPLE, RetinaFaceAnchors, RetinaFaceTargetBuilder, flavor_of

class RetinaFaceTask:
    """The RetinaFace pieces the trainer calls: one training step, validation, and image grids."""

    def __init__(self, cfg: dict, device: torch.device):
        self.device = device
        self.input_size = cfg["train"]["input_size"]
        self.anchors = RetinaFaceAnchors.of_flavor(cfg["model"]["flavor"])
        loss_cfg = dict(cfg["loss"])
        self.targets = RetinaFaceTargetBuilder(self.anchors, self.input_size, loss_cfg.pop("positive_iou"),
                                               loss_cfg.pop("negative_iou"))
        self.loss = RetinaFaceLoss(self.targets.anchors_cxcywh, self.anchors.coder, **loss_cfg)
        self.postprocess = RetinaFacePostprocessor(self.anchors, cfg["eval"]["score_threshold"],
                                                   cfg["eval"]["nms_iou"])

    def _forward(self, model, batch):
        images, targets = batch
        encoded = {k: v.to(self.device) for k, v in self.targets(targets).items()}
        outputs = model(pad_to_multiple(preprocess(images.to(self.device)), INPUT_MULTIPLE))
        return outputs, encoded

    def _terms(self, outputs, encoded) -> dict:
        box_offsets, logits, landmark_offsets = (t.float() for t in outputs)
        terms = self.loss(box_offsets, logits, landmark_offsets, encoded)
        terms.update(anchor_metrics(box_offsets, logits, encoded, self.targets.anchors_cxcywh, self.anchors.coder))
        return terms

    def step(self, model, batch) -> dict:
        return self._terms(*self._forward(model, batch))

    def detections(self, outputs):
        return self.postprocess(*outputs, self.input_size, self.input_size)

    def evaluate(self, model, loader) -> dict:
        def batches():
            for batch in loader:
                outputs, encoded = self._forward(model, batch)
                yield self._terms(outputs, encoded), self.detections(outputs), batch[1]
        return validation_metrics(batches())

    def visualize(self, model, batch, max_images: int = 8) -> torch.Tensor:
        images, targets = batch
        images = images[:max_images]
        outputs = model(pad_to_multiple(preprocess(images.to(self.device)), INPUT_MULTIPLE))
        return detection_grid(images, targets, self.detections(outputs))


def build_retinaface_model(cfg: dict) -> torch.nn.Module:
    model_cfg = cfg["model"]
    if model_cfg["backbone"] not in BACKBONES:
        raise ConfigError(f"unknown model.backbone {model_cfg['backbone']!r}; choose from {', '.join(BACKBONES)}")
    model = build_model(BACKBONES[model_cfg["backbone"]], backbone_weights=model_cfg["backbone_weights"],
                        leaky_slope=flavor_of(model_cfg["flavor"]).leaky_slope)
    if model_cfg["pretrained"]:
        if not model_cfg["weights"]:
            raise ConfigError("model.pretrained needs model.weights (e.g. mobilenet0.25_Final.pth) or --weights")
        load_weights(model, resolve_weights(model_cfg["weights"]))
    return model


def run_retinaface_training(cfg: dict) -> list[dict]:
    device = resolve_device(cfg["train"]["device"])
    init_distributed(device)
    torch.manual_seed(cfg["train"]["seed"])
    model = build_retinaface_model(cfg)
    tcfg = cfg["train"]
    train, val = read_train_val(cfg["data"])
    augmentation = cfg["data"]["augmentation"] if cfg["data"]["augment"] else None
    train_set = FaceDetectionDataset(train, tcfg["input_size"], augmentation, seed=tcfg["seed"])
    val_set = FaceDetectionDataset(val, tcfg["input_size"], None)
    task = RetinaFaceTask(cfg, device)
    return fit_detector(model, task, train_set, val_set, cfg, "RetinaFace", device)
