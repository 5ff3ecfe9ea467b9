"""The shared detector trainer: every trainable detector (BlazeFace, RetinaFace, YOLO) runs ``fit_detector`` with
its own task (``step``, ``evaluate``, ``visualize``); validation figures and the image grid TensorBoard shows are
the same for all."""
from __future__ import annotations

import copy

import torch
from torchvision.utils import draw_bounding_boxes, make_grid

from common.config import save_config
from common.engine import Trainer, is_main_process, make_loader
from common.metrics import average_precision
from common.tiling import pad_to_multiple
from detection.data.dataset import collate_detection


def fit_detector(model, task, train_set, val_set, cfg: dict, name: str, device, make_scheduler=None):
    """The shared detector training run: loaders, AdamW with a cosine schedule (or ``make_scheduler(optimizer)``),
    the shared ``Trainer`` (best checkpoint by validation AP@0.5, else by loss), the effective config saved,
    auto-resume, and ``fit``. ``task`` gives ``step``, ``evaluate`` and ``visualize``; ``cfg`` has the detection
    ``train``/``output`` keys."""
    tcfg, out = cfg["train"], cfg["output"]
    train_loader = make_loader(train_set, tcfg["batch_size"], True, tcfg["num_workers"], collate_detection,
                               tcfg["seed"])
    val_loader = make_loader(val_set, tcfg["batch_size"], False, tcfg["num_workers"], collate_detection,
                             tcfg["seed"]) if len(val_set) else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    scheduler = make_scheduler(optimizer) if make_scheduler else torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(tcfg["epochs"], 1), eta_min=tcfg["lr"] * 0.01)
    trainer = Trainer(model, optimizer, scheduler, task.step, out["checkpoint_dir"], out["log_dir"], name,
                      device, tcfg["epochs"], copy.deepcopy(cfg), evaluate_fn=task.evaluate,
                      visualize_fn=task.visualize, grad_clip=tcfg["grad_clip"], amp=tcfg["amp"],
                      checkpoint_every=tcfg["checkpoint_every"], best_metric="ap50" if val_loader else "loss",
                      best_mode="max" if val_loader else "min", seed=tcfg["seed"])
    if is_main_process():
        save_config(cfg, out["checkpoint_dir"])
    resume = out["resume"] or (trainer.auto_resume_path() if out["auto_resume"] else None)
    if resume:
        trainer.resume(resume)
    return trainer.fit(train_loader, val_loader)


def validation_metrics(batches) -> dict:
    """Mean of each loss term over validation batches and AP@0.5 of their detections. ``batches`` yields
    (terms dict, one ``Detections`` per image, the batch's targets)."""
    sums, count, images = {}, 0, []
    for terms, detections, targets in batches:
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        for found, target in zip(detections, targets):
            images.append({"pred_boxes": found.boxes, "pred_scores": found.scores,
                           "gt_boxes": target["boxes"], "gt_ignore": target["ignore"]})
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    metrics["ap50"] = average_precision(images).ap
    return metrics


def detection_grid(images: torch.Tensor, targets: list[dict], detections, min_score: float = 0.5) -> torch.Tensor:
    """(3, H, W) uint8 grid of the images with ground truth (green) and detections scoring ≥ ``min_score`` (red)."""
    drawn = []
    for image, target, found in zip(images, targets, detections):
        confident = found[found.scores >= min_score]
        for boxes, colour in ((target["boxes"], "lime"), (confident.boxes, "red")):
            if len(boxes):
                image = draw_bounding_boxes(image, boxes, colors=colour, width=1)
        drawn.append(image)
    return make_grid(drawn, nrow=4)


class PointDetectorTask:
    """The pieces the trainer calls for an anchor-free detector (YOLO, YuNet): ``preprocess`` (uint8 batch → the
    network's input, padded to ``input_multiple``), ``loss(*outputs, targets, height, width)`` → named terms and
    ``postprocess(*outputs, height, width)`` → one ``Detections`` per image."""

    def __init__(self, preprocess, loss, postprocess, input_multiple: int, device: torch.device):
        self.preprocess, self.loss, self.postprocess = preprocess, loss, postprocess
        self.input_multiple, self.device = input_multiple, device

    def _forward(self, model, images):
        inputs = pad_to_multiple(self.preprocess(images.to(self.device)), self.input_multiple)  # (B, 3, S, S)
        return model(inputs), inputs.shape[-2:]

    def step(self, model, batch) -> dict:
        images, targets = batch
        outputs, (height, width) = self._forward(model, images)
        return self.loss(*outputs, targets, height, width)

    def evaluate(self, model, loader) -> dict:
        def batches():
            for images, targets in loader:
                outputs, (height, width) = self._forward(model, images)
                yield (self.loss(*outputs, targets, height, width), self.postprocess(*outputs, height, width),
                       targets)
        return validation_metrics(batches())

    def visualize(self, model, batch, max_images: int = 8) -> torch.Tensor:
        images, targets = batch
        outputs, (height, width) = self._forward(model, images[:max_images])
        return detection_grid(images[:max_images], targets, self.postprocess(*outputs, height, width))
