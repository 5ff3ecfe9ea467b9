"""ONNX export of every network, and an onnxruntime runner that stands in for the PyTorch module.

The command line (which builds the networks to export by name) is ``python -m pipeline.export``.

A network describes its input through two attributes: ``input_size`` (the side of the square input it expects;
``None`` or absent: any height and width, fully convolutional) and ``output_names`` (absent: output0, output1,
...). The batch axis is always dynamic; height and width are dynamic where ``input_size`` is ``None``. Files are
named ``<class>-<key>.onnx``, the key a hash of the weights and of the export settings, so a cache folder never
serves a file exported from other weights.

``use_onnxruntime(detector_or_embedder, folder)`` swaps every network held by a detector or embedder (or by the
detectors a fusion detector holds) for an ``OnnxRunner``: tensor in, tensors out, like the module it replaces, so
the pre- and post-processing around it are the PyTorch path's own.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from common.config import PROJECT_ROOT

OPSET = 17
DEFAULT_CACHE = PROJECT_ROOT / "runs" / "onnx_cache"
FULLY_CONVOLUTIONAL_EXAMPLE_SIDE = 320  # traced input side of networks without a fixed input_size
INPUT_NAME = "images"
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class NetSpec:
    """What export needs to know about a network: its fixed square input side (``None``: any H, W) and the
    names of its outputs."""

    input_size: int | None
    output_names: tuple[str, ...]

    def example(self) -> torch.Tensor:
        side = self.input_size or FULLY_CONVOLUTIONAL_EXAMPLE_SIDE
        return torch.zeros(1, 3, side, side)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        image_axes = {0: BATCH_AXIS} if self.input_size else {0: BATCH_AXIS, 2: "height", 3: "width"}
        # outputs: the batch axis named; the exporter makes the axes that follow H and W symbolic itself
        return {INPUT_NAME: image_axes, **{name: {0: BATCH_AXIS} for name in self.output_names}}


def net_spec(model: nn.Module) -> NetSpec:
    """The ``NetSpec`` a network declares; outputs it does not name are counted by one forward pass."""
    spec_size = getattr(model, "input_size", None)
    names = getattr(model, "output_names", None)
    if names is None:
        with torch.inference_mode():
            outputs = model.eval()(NetSpec(spec_size, ()).example())
        count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        names = tuple(f"output{i}" for i in range(count))
    return NetSpec(spec_size, tuple(names))


def export_key(model: nn.Module, spec: NetSpec) -> str:
    """Hash of the weights (names, shapes, values) and of how they are exported."""
    digest = hashlib.sha256(f"{type(model).__qualname__}|{spec}|opset{OPSET}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_onnx(model: nn.Module, path: str | Path, spec: NetSpec | None = None) -> Path:
    """Write ``model`` (an eval-mode float copy of it) to ``path`` as ONNX with a dynamic batch axis (and dynamic
    H, W for fully convolutional networks). The file appears whole or not at all."""
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    spec = spec or net_spec(model)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixes, which are the fixed ones here
            torch.onnx.export(model, (spec.example(),), str(partial), input_names=[INPUT_NAME],
                              output_names=list(spec.output_names), dynamic_axes=spec.dynamic_axes(),
                              opset_version=OPSET, dynamo=False)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def cached_export(model: nn.Module, folder: str | Path = DEFAULT_CACHE) -> Path:
    """``folder/<class>-<key>.onnx`` for ``model``'s current weights, exported first if it is not there."""
    spec = net_spec(model)
    path = Path(folder) / f"{type(model).__name__.lower()}-{export_key(model, spec)}.onnx"
    return path if path.is_file() else export_onnx(model, path, spec)


class OnnxRunner:
    """An exported network called like the PyTorch module it came from: a (B, 3, H, W) float tensor in, the
    same tensor or tuple of tensors out, on the input's device. ``threads``: onnxruntime's intra-op threads
    (``None``: its default, every core)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") \
                from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor):
        outputs = self.session.run(None, {self.input_name: images.detach().float().cpu().contiguous().numpy()})
        tensors = tuple(torch.from_numpy(output).to(images.device) for output in outputs)
        return tensors if len(tensors) > 1 else tensors[0]

    def __repr__(self) -> str:
        return f"OnnxRunner({self.path.name})"


def _holds_networks(value) -> bool:
    """Detectors (``detect``) and embedders (``embed_chips``) hold the networks this module swaps."""
    return hasattr(value, "detect") or hasattr(value, "embed_chips")


def network_slots(holder, prefix: str = "") -> Iterator[tuple[object, str, str, nn.Module]]:
    """(owner, attribute, role, network) for every ``nn.Module`` attribute of a detector or embedder and of the
    detectors it holds (directly or in a dict or list, as a fusion detector does); ``role`` names the path."""
    for attribute, value in list(vars(holder).items()):
        if isinstance(value, nn.Module):
            yield holder, attribute, f"{prefix}{attribute}", value
        elif _holds_networks(value):
            yield from network_slots(value, f"{prefix}{attribute}.")
        elif isinstance(value, (dict, list, tuple)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if _holds_networks(item):
                    yield from network_slots(item, f"{prefix}{key}.")


def use_onnxruntime(target, folder: str | Path = DEFAULT_CACHE, device: str | torch.device = "cpu",
                    threads: int | None = None):
    """Replace every network of a detector or embedder ``target`` (``network_slots``) with an ``OnnxRunner`` of
    that very module, exported to ``folder`` if not there yet. Returns ``target``; raises ``ValueError`` if it
    holds no network."""
    slots = list(network_slots(target))
    if not slots:
        raise ValueError(f"{type(target).__name__} holds no PyTorch network to run with onnxruntime")
    for owner, attribute, _, network in slots:
        setattr(owner, attribute, OnnxRunner(cached_export(network, folder), device, threads))
    return target
