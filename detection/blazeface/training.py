"""BlazeFace training: config schema, data, model, loss and the shared trainer, wired together."""
from __future__ import annotations


import torch

from common.config import ConfigError, existing_path
from common.engine import init_distributed, resolve_device
from common.registry import build_model
from detection.blazeface.config import blazeface_weights
from detection.blazeface.detector import load_weights, normalize
from detection.blazeface.loss import BlazeFaceLoss, anchor_metrics
from detection.blazeface.postprocess import BlazeFacePostprocessor
from detection.blazeface.targets import BlazeFaceAnchors, BlazeFaceTargetBuilder
from detection.data.dataset import FaceDetectionDataset
from detection.training import detection_grid, fit_detector, validation_metrics
from detection.data.readers import read_train_val

def load_datasets(cfg: dict, input_size: int):
    data = cfg["data"]
    train, val = read_train_val(data)
    augmentation = data["augmentation"] if data["augment"] else None
    return (FaceDetectionDataset(train, input_size, augmentation, seed=cfg["train"]["seed"]),
            FaceDetectionDataset(val, input_size, None))


class BlazeFaceTask:
    """The BlazeFace pieces the trainer calls: one training step, validation, and image grids."""

    def __init__(self, cfg: dict, device: torch.device):
        self.device = device
        self.anchors = BlazeFaceAnchors(cfg["model"]["variant"])
        loss_cfg = dict(cfg["loss"])
        self.targets = BlazeFaceTargetBuilder(self.anchors, loss_cfg.pop("positive_iou"), loss_cfg.pop("negative_iou"))
        self.loss = BlazeFaceLoss(self.anchors.input_size, **loss_cfg)
        self.postprocess = BlazeFacePostprocessor(self.anchors, cfg["eval"]["score_threshold"], cfg["eval"]["nms_iou"])

    def _forward(self, model, batch):
        images, targets = batch
        encoded = {k: v.to(self.device) for k, v in self.targets(targets).items()}
        raw_regressors, raw_scores = model(normalize(images.to(self.device)))
        return raw_regressors, raw_scores, encoded

    def step(self, model, batch) -> dict:
        raw_regressors, raw_scores, encoded = self._forward(model, batch)
        terms = self.loss(raw_regressors.float(), raw_scores.float(), encoded)
        terms.update(anchor_metrics(raw_regressors, raw_scores, encoded, self.anchors))
        return terms

    def evaluate(self, model, loader) -> dict:
        def batches():
            for batch in loader:
                raw_regressors, raw_scores, encoded = self._forward(model, batch)
                terms = self.loss(raw_regressors, raw_scores, encoded)
                terms.update(anchor_metrics(raw_regressors, raw_scores, encoded, self.anchors))
                yield terms, self.postprocess(raw_regressors, raw_scores), batch[1]
        return validation_metrics(batches())

    def visualize(self, model, batch, max_images: int = 8) -> torch.Tensor:
        images, targets = batch
        images = images[:max_images]
        raw_regressors, raw_scores = model(normalize(images.to(self.device)))
        return detection_grid(images, targets, self.postprocess(raw_regressors, raw_scores))


def run_blazeface_training(cfg: dict) -> list[dict]:
    device = resolve_device(cfg["train"]["device"])
    init_distributed(device)
    torch.manual_seed(cfg["train"]["seed"])
    variant = cfg["model"]["variant"]
    weights = blazeface_weights(cfg["model"]) if cfg["model"]["pretrained"] else existing_path(cfg["model"]["weights"])
    from_weights = weights is not None
    if cfg["model"]["pretrained"] and weights is None:
        raise ConfigError(f"model.pretrained: BlazeFace {variant!r} has no published weights; set model.weights "
                          "or --weights")
    freeze = cfg["model"]["freeze_batchnorm"]
    model = build_model(f"blazeface_{variant}", freeze_batchnorm=from_weights if freeze is None else bool(freeze))
    if from_weights:
        load_weights(model, weights)
    train_set, val_set = load_datasets(cfg, BlazeFaceAnchors(variant).input_size)
    task = BlazeFaceTask(cfg, device)
    return fit_detector(model, task, train_set, val_set, cfg, "BlazeFace", device)

