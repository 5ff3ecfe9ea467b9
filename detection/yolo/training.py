"""YOLO face training: config schema, data (annotations, or teacher pseudo-labels on unlabelled photos), mosaic
samples, SimOTA loss and the shared trainer with AdamW and a warmed-up cosine schedule."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from common.config import ConfigError, existing_path
from common.engine import init_distributed, is_main_process, resolve_device
from common.points import SimOTAAssigner
from common.registry import build_model
from detection.data.dataset import FaceDetectionDataset
from detection.training import PointDetectorTask, fit_detector
from detection.data.readers import read_train_val, split_by_image
from detection.yolo.config import NAME
from detection.yolo.detector import load_weights, preprocess
from detection.yolo.loss import YoloLoss
from detection.yolo.mosaic import MosaicDataset
from detection.yolo.postprocess import YoloPostprocessor
from detection.yolo.pseudo_labels import (PSEUDO_LABEL_SOURCES, annotations_from_labels,
                                          collect_images, pseudo_label)
from detection.yolo.targets import INPUT_MULTIPLE

def yolo_task(cfg: dict, device: torch.device) -> PointDetectorTask:
    """The YOLO pieces the trainer calls: one training step, validation, and image grids."""
    loss = cfg["loss"]
    assigner = SimOTAAssigner(loss["center_radius"], loss["candidate_topk"], loss["iou_weight"])
    return PointDetectorTask(preprocess, YoloLoss(assigner, loss["box_weight"], loss["obj_weight"],
                                                  loss["landmark_weight"]),
                             YoloPostprocessor(cfg["eval"]["score_threshold"], cfg["eval"]["nms_iou"]),
                             INPUT_MULTIPLE, device)


def warmup_cosine(epochs: int, warmup_epochs: int, min_lr_ratio: float):
    """Per-epoch LR factor: linear warm-up over ``warmup_epochs``, then cosine from 1 to ``min_lr_ratio``."""
    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def training_annotations(cfg: dict, teacher_factory=None):
    """(train, val) annotations: the files of ``data``, or the pseudo-labels of the teacher ``teacher_factory(cfg[
    "pseudo"])`` builds, cached in the run folder."""
    data = cfg["data"]
    if data["pseudo_labels"] is None:
        return read_train_val(data)
    if data["pseudo_labels"] not in PSEUDO_LABEL_SOURCES:
        raise ConfigError(f"data.pseudo_labels must be null or one of {', '.join(PSEUDO_LABEL_SOURCES)}, "
                          f"got {data['pseudo_labels']!r}")
    if teacher_factory is None:
        raise ConfigError("data.pseudo_labels needs a teacher: train through train.py (or pipeline.train_detector), "
                          "which supplies the fused detectors")
    pseudo = cfg["pseudo"]
    paths = collect_images(data["images"], data["max_images"], data["split_seed"])
    cache = Path(cfg["output"]["checkpoint_dir"]) / pseudo["cache"]
    # under torchrun the first process labels; the others wait, then read its cache
    labels = pseudo_label(paths, pseudo, cache, teacher_factory) if is_main_process() else None
    if dist.is_initialized():
        dist.barrier()
    if labels is None:
        labels = pseudo_label(paths, pseudo, cache, teacher_factory)
    annotations = annotations_from_labels(labels, pseudo["keep_threshold"], pseudo["ignore_threshold"])
    faces = sum(int((~a.ignore).sum()) for a in annotations)
    print(f"pseudo-labels: {faces} faces (score >= {pseudo['keep_threshold']}) in {len(annotations)} photos")
    if len(annotations) < 2:
        return annotations, []
    return split_by_image(annotations, data["val_fraction"], data["split_seed"])


def build_yolo_model(cfg: dict) -> torch.nn.Module:
    model_cfg = cfg["model"]
    model = build_model("yolo_face", width=model_cfg["width"], depth=model_cfg["depth"])
    if model_cfg["pretrained"]:
        if not model_cfg["weights"]:
            raise ConfigError("model.pretrained needs model.weights (a YOLO checkpoint) or --weights")
        load_weights(model, existing_path(model_cfg["weights"]))
    return model


def run_yolo_training(cfg: dict, teacher_factory=None) -> list[dict]:
    """Train YOLO; ``teacher_factory(pseudo_section) -> (photo detector, names)`` labels ``data.images`` when
    ``data.pseudo_labels`` is set."""
    tcfg = cfg["train"]
    if tcfg["input_size"] % INPUT_MULTIPLE:
        raise ConfigError(f"train.input_size must be a multiple of {INPUT_MULTIPLE}, got {tcfg['input_size']}")
    device = resolve_device(tcfg["device"])
    init_distributed(device)
    torch.manual_seed(tcfg["seed"])
    model = build_yolo_model(cfg)
    train, val = training_annotations(cfg, teacher_factory)
    augmentation = cfg["data"]["augmentation"] if cfg["data"]["augment"] else None
    train_set = MosaicDataset(train, tcfg["input_size"], augmentation, cfg["data"]["mosaic"], seed=tcfg["seed"])
    val_set = FaceDetectionDataset(val, tcfg["input_size"], None)
    return fit_detector(model, yolo_task(cfg, device), train_set, val_set, cfg, NAME, device,
                        make_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
                            optimizer, warmup_cosine(tcfg["epochs"], tcfg["warmup_epochs"], tcfg["min_lr_ratio"])))
