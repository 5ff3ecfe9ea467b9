"""The one thin training loop shared by every stage.

A stage supplies ``step_fn(model, batch) -> {"loss": tensor, other scalar terms...}`` and optionally
``evaluate_fn(model, loader) -> {metric: float}``; the trainer does the rest: device placement, AMP on CUDA,
gradient clipping, non-finite loss detection, DDP under ``torchrun``, tqdm bars, TensorBoard scalars and image
grids, and checkpoints (best, final, every N epochs, and ``last`` for resuming).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from common.checkpoint import CheckpointError, load_checkpoint, restore_rng_states, save_checkpoint, unwrap
from common.config import ConfigError
from common.errors import UserError


# What save_checkpoint itself writes; Trainer(extra=...) may not overwrite these.
RESERVED_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scheduler", "scaler", "epoch", "best_metric", "config",
                                      "rng"})
# Checkpoints auto-resume looks at: the newest readable one wins. "previous" is the "last" of the epoch before, kept
# so that a damaged "last" (a full disk, a copy cut short) still leaves a recent point to resume from.
RESUME_TAGS = ("last", "previous", "best")


class NonFiniteLossError(UserError, RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; under torchrun each process takes its LOCAL_RANK GPU. A device
    that is not a device name, or CUDA where there is none, is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, collate_fn, seed: int,
                drop_last: bool = False) -> DataLoader:
    """Every loader shards through DistributedSampler (1 replica outside torchrun), whose order depends only on
    (seed, epoch): a resumed run sees exactly the batches an uninterrupted run would have."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, persistent_workers=False)


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler, the batch sampler (a task's own, e.g. P×K) and the dataset which epoch this is."""
    for part in (loader.sampler, loader.batch_sampler, loader.dataset):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def _all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, tensor)}


def _batch_images(batch) -> str:
    """' (images: a.jpg, b.jpg)' for a batch of (inputs, targets) whose targets name their ``image_path``."""
    targets = batch[1] if isinstance(batch, (list, tuple)) and len(batch) == 2 else None
    if not isinstance(targets, (list, tuple)):
        return ""
    paths = [str(target["image_path"]) for target in targets if isinstance(target, dict) and "image_path" in target]
    return f" (images: {', '.join(paths)})" if paths else ""


class Trainer:
    def __init__(self, model: torch.nn.Module, optimizer, scheduler, step_fn: Callable,
                 checkpoint_dir: str | Path, log_dir: str | Path, name: str, device: torch.device,
                 epochs: int, config: dict, evaluate_fn: Callable | None = None,
                 visualize_fn: Callable | None = None, grad_clip: float = 10.0, amp: bool = True,
                 checkpoint_every: int = 10, best_metric: str = "loss", best_mode: str = "min", seed: int = 0,
                 extra: dict | None = None):
        """``extra``: entries saved into every checkpoint beside the standard ones (e.g. the identities an
        embedding model was trained on)."""
        self.device = device
        self.model = model.to(device)
        if dist.is_initialized():
            self.model = DistributedDataParallel(self.model,
                                                 device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.step_fn, self.evaluate_fn, self.visualize_fn = step_fn, evaluate_fn, visualize_fn
        self.checkpoint_dir, self.name = Path(checkpoint_dir), name
        self.epochs, self.grad_clip, self.checkpoint_every = epochs, grad_clip, checkpoint_every
        self.best_metric, self.best_mode = best_metric, best_mode
        self.config, self.seed = config, seed
        self.extra = dict(extra or {})
        clashes = sorted(set(self.extra) & RESERVED_CHECKPOINT_KEYS)
        if clashes:
            raise ValueError(f"Trainer extra keys {clashes} clash with the checkpoint's own entries")
        self.use_amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_epoch = 0
        self.best_value: float | None = None
        self.writer = None
        if is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(log_dir) / name))
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoint_dir.glob(f".{name}_*.pth.*.tmp"):  # atomic_save's, of a killed run
                stale.unlink(missing_ok=True)

    # ---- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_path(self, tag: str) -> Path:
        return self.checkpoint_dir / f"{self.name}_{tag}.pth"

    def auto_resume_path(self) -> Path | None:
        """The newest readable one of ``<name>_{last,previous,best}.pth``, if any; an unreadable one is reported
        and passed over."""
        newest, newest_epoch = None, -1
        for tag in RESUME_TAGS:
            path = self.checkpoint_path(tag)
            if not path.is_file():
                continue
            try:
                epoch = load_checkpoint(path)["epoch"]
            except CheckpointError as error:
                moved = ""
                if is_main_process():  # out of the way, so that saving "last" cannot rotate it into "previous"
                    aside = path.with_name(path.name + ".corrupt")
                    os.replace(path, aside)
                    moved = f" (moved to {aside.name})"
                tqdm.write(f"warning: {error}{moved}; falling back to an older checkpoint")
                continue
            if epoch > newest_epoch:
                newest, newest_epoch = path, epoch
        return newest

    def resume(self, path: str | Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        unwrap(self.model).load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"]
        self.best_value = state.get("best_metric")
        restore_rng_states(state["rng"])
        if is_main_process():
            tqdm.write(f"resumed from {path} (epoch {self.start_epoch} done)")

    def _save(self, tag: str, epoch: int) -> None:
        if is_main_process():
            if tag == "last":
                self._keep_previous()
            save_checkpoint(self.checkpoint_path(tag), model=self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler if self.use_amp else None, epoch=epoch,
                            best_metric=self.best_value, config=self.config, **self.extra)

    def _keep_previous(self) -> None:
        """Copy the current "last" to "previous" before it is replaced, so that both exist, whole, at every moment.
        A copy, not a hard link: damage to one file must not reach the other."""
        last, previous = self.checkpoint_path("last"), self.checkpoint_path("previous")
        if not last.is_file():
            return
        staged = previous.with_name(f".{previous.name}.copy.tmp")
        shutil.copyfile(last, staged)
        os.replace(staged, previous)

    def _is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.best_mode == "max" else value < self.best_value

    # ---- loops -----------------------------------------------------------------------------------------
    def train_one_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        count = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, disable=not is_main_process())
        for batch_index, batch in enumerate(bar):
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                terms = self.step_fn(self.model, batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={float(v.detach() if torch.is_tensor(v) else v):.4g}"
                                   for k, v in terms.items())
                raise self._non_finite(f"loss is {loss.item()}", epoch, batch_index, batch, f" ({values})")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if not torch.isfinite(grad_norm) and not self.use_amp:  # AMP's scaler skips such steps itself
                raise self._non_finite(f"gradient norm is {grad_norm.item()}", epoch, batch_index, batch)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            count += 1
            for key, value in terms.items():
                sums[key] += float(value.detach()) if torch.is_tensor(value) else float(value)
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        return _all_reduce_mean({k: v / max(count, 1) for k, v in sums.items()})

    def _non_finite(self, what: str, epoch: int, batch_index: int, batch, detail: str = "") -> NonFiniteLossError:
        """The error that stops training before a non-finite value reaches the weights; checkpoints stay as they
        were."""
        last = self.checkpoint_path("last")
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        return NonFiniteLossError(f"{what} at epoch {epoch + 1}, batch {batch_index}{detail}{_batch_images(batch)}; "
                                  f"stopped before updating the weights, {kept}. Lower the learning rate or check "
                                  "that batch.")

    def fit(self, train_loader: DataLoader, val_loader: DataLoader | None = None) -> list[dict]:
        history = []
        log_path = self.checkpoint_dir / "metrics.jsonl"
        for epoch in range(self.start_epoch, self.epochs):
            # Everything random in an epoch derives from (seed, epoch), so a resumed run repeats it exactly.
            torch.manual_seed(self.seed + epoch)
            _set_epoch(train_loader, epoch)
            train_terms = self.train_one_epoch(train_loader, epoch)
            if self.scheduler is not None:
                self.scheduler.step()
            record = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in train_terms.items()},
                      "lr": self.optimizer.param_groups[0]["lr"]}
            if val_loader is not None and self.evaluate_fn is not None:
                self.model.eval()
                with torch.no_grad():
                    record.update({f"val/{k}": v for k, v in self.evaluate_fn(unwrap(self.model), val_loader).items()})
            history.append(record)
            monitored = record.get(f"val/{self.best_metric}", record.get(f"train/{self.best_metric}"))
            improved = monitored is not None and math.isfinite(monitored) and self._is_better(monitored)
            if improved:
                self.best_value = monitored
            if is_main_process():
                self._log(record, epoch, val_loader)
                with log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"run": self.name, **record}) + "\n")  # stages may share a folder
                summary = "  ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
                tqdm.write(f"epoch {epoch + 1}/{self.epochs}  {summary}")
            if improved:
                self._save("best", epoch + 1)
            if self.checkpoint_every and (epoch + 1) % self.checkpoint_every == 0:
                self._save(f"epoch{epoch + 1}", epoch + 1)
            self._save("last", epoch + 1)
        self._save("final", self.epochs)
        if self.writer is not None:
            self.writer.close()
        return history

    def _log(self, record: dict, epoch: int, val_loader: DataLoader | None) -> None:
        for key, value in record.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, epoch + 1)
        if self.visualize_fn is not None and val_loader is not None:
            self.model.eval()
            with torch.no_grad():
                grid = self.visualize_fn(unwrap(self.model), next(iter(val_loader)))
            self.writer.add_image("val/detections", grid, epoch + 1)
        self.writer.flush()
