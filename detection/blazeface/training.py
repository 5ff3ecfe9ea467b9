"""BlazeFace training: config schema, data, model, loss and the shared trainer, wired together."""
from __future__ import annotations


import torch

from common.config import ConfigError, existing_path
from common.engine import init_distributed, resolve_device
from common.registry import build_detector, build_model
from detection.blazeface.detector import load_weights, normalize
from detection.blazeface.loss import BlazeFaceLoss, anchor_metrics
from detection.blazeface.postprocess import BlazeFacePostprocessor
from detection.blazeface.targets import BlazeFaceAnchors, BlazeFaceTargetBuilder
from detection.data.dataset import (DEFAULT_AUGMENTATION, FaceDetectionDataset, detection_grid, fit_detector,
                                    validation_metrics)
from detection.data.readers import read_train_val

BLAZEFACE_DEFAULTS = {
    "stage": "detection",
    "detector": "blazeface",
    # freeze_batchnorm: null = frozen when starting from weights (see BlazeFace.train), else trained
    "model": {"variant": "front", "pretrained": False, "weights": None, "freeze_batchnorm": None},
    "data": {"format": "auto", "train": None, "val": None, "root": None, "val_fraction": 0.2, "split_seed": 42,
             "augment": True, "augmentation": dict(DEFAULT_AUGMENTATION)},
    "loss": {"use_focal_loss": False, "focal_alpha": 0.25, "focal_gamma": 2.0, "detection_weight": 150.0,
             "keypoint_weight": 50.0, "classification_weight": 35.0, "hard_negative_ratio": 3.0,
             "huber_delta": 0.1, "positive_iou": 0.5, "negative_iou": 0.35},
    "train": {"epochs": 500, "batch_size": 32, "lr": 1e-4, "weight_decay": 1e-4, "grad_clip": 10.0,
              "num_workers": 4, "device": "auto", "seed": 0, "amp": True, "checkpoint_every": 10},
    "eval": {"score_threshold": 0.05, "nms_iou": 0.3},
    # infer.py / evaluate.py on whole photos; zooms > 1 add overlapping tiles for small faces (common/tiling.py).
    # Tiles give false positives more chances: on the CompreFace photos true faces score >= 0.82 and false
    # positives <= 0.71 with zooms 1 2 4, hence 0.75 rather than MediaPipe's whole-photo 0.5.
    "inference": {"score_threshold": 0.75, "nms_iou": 0.3, "tile_zooms": [1, 2, 4]},
    "output": {"checkpoint_dir": "checkpoints", "log_dir": "logs", "resume": None, "auto_resume": True},
}

def blazeface_from_config(cfg: dict, device: str):
    """The photo detector a config describes (infer.py / evaluate.py)."""
    return build_detector("blazeface", weights=existing_path(cfg["model"]["weights"]), variant=cfg["model"]["variant"],
                          device=device, **cfg["inference"])


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
    from_weights = bool(cfg["model"]["pretrained"] or cfg["model"]["weights"])
    if cfg["model"]["pretrained"] and not cfg["model"]["weights"]:
        raise ConfigError("model.pretrained needs model.weights (the MediaPipe .tflite) or --weights")
    freeze = cfg["model"]["freeze_batchnorm"]
    model = build_model(f"blazeface_{variant}", freeze_batchnorm=from_weights if freeze is None else bool(freeze))
    if from_weights:
        load_weights(model, existing_path(cfg["model"]["weights"]))
    train_set, val_set = load_datasets(cfg, BlazeFaceAnchors(variant).input_size)
    task = BlazeFaceTask(cfg, device)
    return fit_detector(model, task, train_set, val_set, cfg, "BlazeFace", device)

