"""Intel Open Model Zoo's ``face-reidentification-retail-0095`` (LFW 99.47 % as published) as a trainable PyTorch
module, with an importer for its OpenVINO IR (``embedding.openvino_ir``).

Architecture, as the IR's graph has it (input 128×128; every conv but the last has a bias: Model Optimizer fused
batch norm's multiply into the weights (the convs named ``Multiply_NNNN``) and its shift into an Add; every PReLU
has one slope for all channels):

- stem: conv 3×3 /2 (64) → PReLU → depthwise 3×3 → PReLU                                  → (B, 64, 64, 64)
- three stages of MobileNetV2 inverted residuals with squeeze-and-excitation; the first block of each stage
  halves the resolution:
  64 channels, 5 blocks, hidden 128                                                        → (B, 64, 32, 32)
  128 channels, 7 blocks, hidden 256 (the first, from 64 channels: 256)                    → (B, 128, 16, 16)
  128 channels, 3 blocks, hidden 256 (the first: 512)                                      → (B, 128, 8, 8)
  A block is 1×1 expand → PReLU → depthwise 3×3 (stride) → PReLU → 1×1 project (linear) → SE, plus the block's
  input where the shape is kept (every block but a stage's first). SE gates the projected map's channels:
  ``x · sigmoid(conv1×1(PReLU(conv1×1(mean over H, W of x))))``, the bottleneck an eighth of the channels.
- head: 1×1 conv (512) → PReLU → global depthwise conv 8×8 (linear, with bias)              → (B, 512, 1, 1)
  → 1×1 conv 512 → 256 without bias: the raw embedding (the Embedder L2-normalises it).

The IR's preprocessing: Model Optimizer was run with ``reverse_input_channels`` and ``scale_values=255``, and the
network's own per-channel input normalisation, that 1/255 folded in, is a Multiply and an Add in front of the
stem, so the IR takes BGR 0-255. Both are folded out of ``forward``: the channel order into the stem conv's
weights (its input channels reversed at import), the Multiply/Add ``x · s + b`` into the Embedder's normalisation
``(x - mean) / std`` with ``mean = -b / s`` and ``std = 1 / s`` (the module's ``input_mean`` and ``input_std``
buffers, RGB, so a state_dict carries them). The module takes ``(rgb - input_mean) / input_std``, as every
Embedder feeds its network.

The importer walks the IR's operations in graph order against the module's own list of what it computes
(``ir_slots``), checking every operation's kind, geometry and weight shape, so an IR of another network fails
naming the layer instead of loading garbage.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from common.checkpoint import load_state_file
from common.config import existing_path, project_path
from common.registry import register_embedder, register_model
from embedding.embedder import Alignment, Embedder, file_sha256
from embedding.openvino_ir import IRFormatError, IRGraph, IRLayer, bin_path_of, read_ir

INPUT_SIZE = 128
EMBEDDING_DIM = 256
STEM_CHANNELS = 64
HEAD_CHANNELS = 512
SE_REDUCTION = 8  # SE's bottleneck: channels // 8
# (out channels, hidden channels of the first block, of the others, blocks, stride of the first) per stage
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (64, 128, 128, 5, 2),  # → (B, 64, 32, 32)
    (128, 256, 256, 7, 2),  # → (B, 128, 16, 16)
    (128, 512, 256, 3, 2),  # → (B, 128, 8, 8)
)
FINAL_MAP = INPUT_SIZE // 16  # 8: the stem and the three stages each halve the map
# The published IR's input normalisation (R, G, B), rounded, for a freshly built module; the importer sets the
# IR's exact values. mean = -b / s, std = 1 / s of the IR's input Multiply (s) and Add (b).
PUBLISHED_INPUT_MEAN = (82.07, 67.66, 64.44)
PUBLISHED_INPUT_STD = (53.63, 46.81, 69.57)

# OMZ's alignment template (the model card's), in coordinates normalised to the chip: image-left eye, image-right
# eye, nose tip, image-left / image-right mouth corner (the order of ``common.detections``).
OMZ_TEMPLATE_NORMALISED = np.array([[0.31556875, 0.46157411], [0.68262292, 0.46157411], [0.50026250, 0.64050536],
                                    [0.34947188, 0.82469196], [0.65343646, 0.82469196]])
OMZ_ALIGNMENT = Alignment(size=INPUT_SIZE, template=tuple(map(tuple, (OMZ_TEMPLATE_NORMALISED * INPUT_SIZE).tolist())))

DEFAULT_WEIGHTS = "../shared/models/openvino_omz/face-reidentification-retail-0095.xml"
BGR_INPUT_FLAG = "reverse_input_channels"  # Model Optimizer's conversion parameter: the IR takes BGR


class _IrSlot(NamedTuple):
    """An operation as the IR's graph lists it and the module whose weights it holds (``None``: weightless).
    Kinds: conv, group_conv (depthwise), bias (an Add of a constant), prelu, pool (global average), sigmoid, gate
    (SE's Multiply of two maps), residual (an Add of two maps)."""

    kind: str
    module: nn.Module | None = None


def _conv_slots(conv: nn.Conv2d) -> list[_IrSlot]:
    """A convolution and, when it has one, its bias: the IR's Convolution / GroupConvolution then an Add."""
    slots = [_IrSlot("group_conv" if conv.groups > 1 else "conv", conv)]
    return slots + ([_IrSlot("bias", conv)] if conv.bias is not None else [])


class ConvPReLU(nn.Module):
    """conv (``padding`` half the kernel) → PReLU with one slope."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def ir_slots(self) -> list[_IrSlot]:
        return _conv_slots(self.conv) + [_IrSlot("prelu", self.act)]


class SqueezeExcite(nn.Module):
    """Channel gate from the whole map: ``x · sigmoid(expand(PReLU(reduce(mean over H, W of x))))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // SE_REDUCTION, 1)
        self.act = nn.PReLU()
        self.expand = nn.Conv2d(channels // SE_REDUCTION, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(squeezed))))

    def ir_slots(self) -> list[_IrSlot]:
        return ([_IrSlot("pool")] + _conv_slots(self.reduce) + [_IrSlot("prelu", self.act)]
                + _conv_slots(self.expand) + [_IrSlot("sigmoid"), _IrSlot("gate")])


class InvertedResidualSE(nn.Module):
    """1×1 expand → PReLU → depthwise 3×3 /``stride`` → PReLU → 1×1 project (linear) → SE, plus the input where
    the block keeps the shape."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.expand = ConvPReLU(in_channels, hidden_channels, 1)
        self.depthwise = ConvPReLU(hidden_channels, hidden_channels, 3, stride, groups=hidden_channels)
        self.project = nn.Conv2d(hidden_channels, out_channels, 1)
        self.se = SqueezeExcite(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.project(self.depthwise(self.expand(x))))
        return x + out if self.residual else out

    def ir_slots(self) -> list[_IrSlot]:
        slots = self.expand.ir_slots() + self.depthwise.ir_slots() + _conv_slots(self.project) + self.se.ir_slots()
        return slots + ([_IrSlot("residual")] if self.residual else [])


@register_model("omz_reid_0095")
class OmzReid0095(nn.Module):
    """(B, 3, 128, 128) input normalised as ``(rgb - input_mean) / input_std`` → (B, 256) raw embeddings."""

    input_size = INPUT_SIZE
    output_names = ("embedding",)

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(PUBLISHED_INPUT_MEAN, dtype=torch.float32))
        self.register_buffer("input_std", torch.tensor(PUBLISHED_INPUT_STD, dtype=torch.float32))
        self.stem = ConvPReLU(3, STEM_CHANNELS, 3, stride=2)
        self.stem_depthwise = ConvPReLU(STEM_CHANNELS, STEM_CHANNELS, 3, groups=STEM_CHANNELS)
        blocks, channels = [], STEM_CHANNELS
        for out_channels, first_hidden, hidden, count, stride in STAGES:
            for i in range(count):
                blocks.append(InvertedResidualSE(channels, first_hidden if i == 0 else hidden, out_channels,
                                                 stride if i == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvPReLU(channels, HEAD_CHANNELS, 1)
        # global depthwise conv: a learnt per-channel weighting of the final map instead of average pooling
        self.pool = nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, FINAL_MAP, groups=HEAD_CHANNELS)
        self.embedding = nn.Conv2d(HEAD_CHANNELS, EMBEDDING_DIM, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_depthwise(self.stem(x))  # (B, 64, 64, 64)
        x = self.blocks(x)  # (B, 128, 8, 8)
        x = self.pool(self.head(x))  # (B, 512, 8, 8) -> (B, 512, 1, 1)
        return self.embedding(x).flatten(1)  # (B, 256, 1, 1) -> (B, 256)

    def ir_slots(self) -> list[_IrSlot]:
        """What the IR computes after its input normalisation, in graph order."""
        slots = self.stem.ir_slots() + self.stem_depthwise.ir_slots()
        for block in self.blocks:
            slots += block.ir_slots()
        return slots + self.head.ir_slots() + _conv_slots(self.pool) + _conv_slots(self.embedding)


# ----------------------------------------------------------------------------------------------------------
# The importer

_LAYER_KINDS = {"Convolution": "conv", "GroupConvolution": "group_conv", "PReLU": "prelu", "AvgPool": "pool",
                "Sigmoid": "sigmoid"}
# Add and Multiply by which of their inputs are constants
_BINARY_KINDS = {("Add", (False, True)): "bias", ("Add", (False, False)): "residual",
                 ("Multiply", (False, True)): "scale", ("Multiply", (False, False)): "gate"}
# the IR's input normalisation (a per-channel Multiply then Add) between its Parameter and the stem conv
_INPUT_KINDS = ("Parameter", "scale", "bias")
_OUTPUT_KINDS = ("Result",)


def _operation_kind(graph: IRGraph, layer: IRLayer) -> str:
    if layer.type in ("Add", "Multiply"):
        constant = tuple(graph.constant(source) is not None for source in graph.inputs(layer))
        return _BINARY_KINDS.get((layer.type, constant), f"{layer.type} of constant inputs {constant}")
    return _LAYER_KINDS.get(layer.type, layer.type)


def _weight(graph: IRGraph, layer: IRLayer, port: int) -> np.ndarray:
    """The constant feeding ``layer``'s input ``port``."""
    inputs = graph.inputs(layer)
    value = graph.constant(inputs[port]) if port < len(inputs) else None
    if value is None:
        raise graph.error(layer, f"input {port} is not a constant")
    return value


def _copy(graph: IRGraph, layer: IRLayer, target: torch.Tensor, value: np.ndarray, where: str) -> None:
    if tuple(target.shape) != value.shape:
        raise graph.error(layer, f"weights of shape {value.shape}, the architecture's {where} has "
                                 f"{tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _check_conv_geometry(graph: IRGraph, layer: IRLayer, conv: nn.Conv2d, where: str) -> None:
    if layer.data.get("auto_pad", "explicit") != "explicit":
        raise graph.error(layer, f"auto_pad {layer.data['auto_pad']!r} (only explicit padding is read)")
    got = tuple(graph.ints(layer, key) for key in ("strides", "dilations", "pads_begin", "pads_end"))
    want = (conv.stride, conv.dilation, conv.padding, conv.padding)
    if got != want:
        raise graph.error(layer, f"strides, dilations, pads_begin, pads_end {got}, the architecture's {where} has "
                                 f"{want}")


def _load_operation(graph: IRGraph, layer: IRLayer, slot: _IrSlot, where: str) -> None:
    """Copy ``layer``'s constants into ``slot.module`` (``where``: its name in the module), checking geometry."""
    module = slot.module
    if slot.kind in ("conv", "group_conv"):
        _check_conv_geometry(graph, layer, module, where)
        weight = _weight(graph, layer, 1)
        if slot.kind == "group_conv":  # (groups, out / groups, in / groups, kh, kw) -> (out, in / groups, kh, kw)
            if weight.ndim != 5 or weight.shape[0] != module.groups:
                raise graph.error(layer, f"group weights of shape {weight.shape}, the architecture's {where} has "
                                         f"{module.groups} groups")
            weight = weight.reshape(-1, *weight.shape[2:])
        _copy(graph, layer, module.weight, weight, f"{where}.weight")
    elif slot.kind == "bias":
        bias = _weight(graph, layer, 1)
        if bias.shape != (1, len(module.bias), 1, 1):  # (1, C, 1, 1): one value per channel
            raise graph.error(layer, f"a bias of shape {bias.shape}, the architecture's {where}.bias has "
                                     f"{len(module.bias)} channels")
        _copy(graph, layer, module.bias, bias.reshape(-1), f"{where}.bias")
    elif slot.kind == "prelu":
        _copy(graph, layer, module.weight, _weight(graph, layer, 1), f"{where}.weight")
    elif slot.kind == "pool":
        spatial, pads = layer.input_shapes[0][2:], graph.ints(layer, "pads_begin") + graph.ints(layer, "pads_end")
        if graph.ints(layer, "kernel") != spatial or any(pads):
            raise graph.error(layer, f"an average pool other than a global one over the {spatial} map")


def _input_normalisation(graph: IRGraph, scale_layer: IRLayer, shift_layer: IRLayer,
                         bgr: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), RGB, with ``(x - mean) / std == x · s + b`` for the IR's input Multiply (s) and Add (b)."""
    scale, shift = _weight(graph, scale_layer, 1), _weight(graph, shift_layer, 1)
    for layer, value in ((scale_layer, scale), (shift_layer, shift)):
        if value.shape != (1, 3, 1, 1):
            raise graph.error(layer, f"an input normalisation of shape {value.shape}, expected (1, 3, 1, 1)")
    if not np.all(scale):
        raise graph.error(scale_layer, "an input scale of 0")
    scale, shift = scale.reshape(-1).astype(np.float64), shift.reshape(-1).astype(np.float64)  # (3,)
    order = slice(None, None, -1) if bgr else slice(None)
    mean, std = (-shift / scale)[order], (1 / scale)[order]
    return torch.tensor(mean.copy(), dtype=torch.float32), torch.tensor(std.copy(), dtype=torch.float32)


def load_omz_weights(model: OmzReid0095, xml_path: str | Path) -> OmzReid0095:
    """``model`` holding the weights of face-reidentification-retail-0095's IR (``xml_path``, its .bin beside it);
    the IR's BGR order goes into the stem's weights and its input Multiply/Add into ``input_mean``/``input_std``."""
    graph = read_ir(xml_path)
    operations = graph.operations()
    slots = model.ir_slots()
    kinds = [_operation_kind(graph, layer) for layer in operations]
    expected = [*_INPUT_KINDS, *(slot.kind for slot in slots), *_OUTPUT_KINDS]
    if kinds != expected:
        differs = next((i for i, (a, b) in enumerate(zip(kinds, expected)) if a != b), min(len(kinds), len(expected)))
        where = f"{operations[differs]} is a {kinds[differs]}" if differs < len(kinds) else "the graph ends"
        wanted = expected[differs] if differs < len(expected) else "the end of the graph"
        raise IRFormatError(f"{graph.xml_path}: not face-reidentification-retail-0095's graph ({len(kinds)} "
                            f"operations, the architecture has {len(expected)}): {where} where the architecture has "
                            f"{wanted}")
    parameter, scale_layer, shift_layer = operations[:len(_INPUT_KINDS)]
    input_shape = parameter.output_shapes[0] if parameter.output_shapes else ()
    if input_shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
        raise graph.error(parameter, f"input of shape {input_shape}, the architecture takes "
                                     f"(B, 3, {INPUT_SIZE}, {INPUT_SIZE})")
    names = {id(module): name for name, module in model.named_modules()}
    network = operations[len(_INPUT_KINDS):len(operations) - len(_OUTPUT_KINDS)]
    for layer, slot in zip(network, slots):
        _load_operation(graph, layer, slot, names.get(id(slot.module), ""))
    bgr = graph.conversion_parameters.get(BGR_INPUT_FLAG) == "True"
    with torch.no_grad():
        if bgr:  # the stem then reads RGB, as the network did before Model Optimizer reversed its input
            model.stem.conv.weight.copy_(model.stem.conv.weight.flip(1))
        mean, std = _input_normalisation(graph, scale_layer, shift_layer, bgr)
        model.input_mean.copy_(mean)
        model.input_std.copy_(std)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# The embedder


def ir_sha256(xml_path: Path) -> str:
    """One hash of an IR's two files (graph and weights)."""
    digests = file_sha256(xml_path) + file_sha256(bin_path_of(xml_path))
    return hashlib.sha256(digests.encode()).hexdigest()


def load_omz_reid(weights: str | Path | None = None) -> tuple[OmzReid0095, str]:
    """(model, weights hash) from OMZ's IR ``.xml`` (``None``: the project's shared copy) or a state_dict /
    checkpoint of ours (``.pth`` / ``.pt``)."""
    path = Path(existing_path(DEFAULT_WEIGHTS)) if weights is None else Path(weights)
    if not path.is_file():
        looked = f" (also looked in {project_path(DEFAULT_WEIGHTS)})" if weights is None else ""
        raise FileNotFoundError(f"face-reidentification-retail-0095 weights not found: {path}{looked}. Put Open Model "
                                "Zoo's IR there (the .xml with its .bin), or pass weights=PATH to an IR .xml or a "
                                ".pth of ours.")
    if path.suffix in (".pth", ".pt"):
        return load_state_file(OmzReid0095(), path, "an OmzReid0095").eval(), file_sha256(path)
    return load_omz_weights(OmzReid0095(), path), ir_sha256(path)


@register_embedder("omz0095")
def omz0095_embedder(weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 64,
                     **_) -> Embedder:
    """OMZ's face-reidentification-retail-0095: 128-px chips aligned to OMZ's template, normalised by the IR's own
    input constants (``input_mean``/``input_std``, RGB), 256-d."""
    model, weights_hash = load_omz_reid(weights)
    return Embedder("omz0095", model, OMZ_ALIGNMENT, mean=model.input_mean.tolist(), std=model.input_std.tolist(),
                    weights_hash=weights_hash, device=device, batch_size=batch_size)
