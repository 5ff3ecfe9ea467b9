"""Checkpoints: {model, optimizer, scheduler, scaler, epoch, best metric, config, RNG states}, written atomically."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InputError, UserError


class CheckpointError(UserError, RuntimeError):
    pass


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def state_mismatch(expected: dict, state: dict) -> str:
    """'' when ``state`` has exactly the keys and shapes of ``expected`` (a model's ``state_dict()``), else what
    differs: counts of missing keys, unexpected keys and keys of another shape, with the first three of each."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{key}: {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
                   for key in sorted(set(state) & set(expected)) if state[key].shape != expected[key].shape]
    if not (missing or unexpected or wrong_shape):
        return ""
    return (f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(wrong_shape)} of another shape {wrong_shape[:3]}")


def load_network_weights(model: torch.nn.Module, weights, name: str, missing_hint: str, described: str | None = None,
                         mismatch_hint: str = "") -> torch.nn.Module:
    """``model`` holding the weights of the file ``weights``: a checkpoint of ours, a bare state dict, or a
    published file that wraps it in a ``state_dict`` entry (mmdet, Pytorch_Retinaface) or prefixes its keys with
    ``module.`` (DataParallel). Clear errors name the network: ``name`` and ``missing_hint`` when the file is
    absent, ``described`` (default ``name``) and ``mismatch_hint`` when its keys or shapes do not fit."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{name} weights not found: {path}. {missing_hint}")
    state = model_state_from_file(path)
    state = {key.removeprefix("module."): value for key, value in state.get("state_dict", state).items()}
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise InputError(f"{path} does not fit {described or name}: {mismatch}"
                         + (f"; {mismatch_hint}" if mismatch_hint else ""))
    model.load_state_dict(state)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel/DataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path, *, model, optimizer=None, scheduler=None, scaler=None, epoch: int = 0,
                    best_metric: float | None = None, config: dict | None = None, **extra) -> Path:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "best_metric": best_metric,
        "config": config,
        "rng": rng_states(),
        **extra,
    }
    return atomic_save(state, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for truncated/corrupt archives
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                              "delete it or pass another with --resume") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' entry)")
    return state


def model_state_from_file(path, map_location="cpu") -> dict:
    """Model weights from a checkpoint of ours or from a bare state_dict file."""
    try:
        state = torch.load(Path(path), map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as error:
        raise CheckpointError(f"weights file {path} is unreadable ({type(error).__name__}: {error})") from None
    return state["model"] if isinstance(state, dict) and "model" in state else state


def load_state_file(model: torch.nn.Module, path, name: str) -> torch.nn.Module:
    """``model`` holding the weights of a state_dict file or checkpoint of ours at ``path``; ``name`` (e.g.
    "a DlibResNet") names the network in the error when they do not fit."""
    state = model_state_from_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path} is not {name} state_dict: {error}") from None
    return model
