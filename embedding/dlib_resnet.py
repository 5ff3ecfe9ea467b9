"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``, 99.38 % on LFW as published) as a
trainable PyTorch module, with an importer for dlib's ``.dat`` serialisation.

Architecture (dlib's ``examples/dnn_face_recognition_ex.cpp``; input 150×150):

- stem: conv 7×7 /2 (32, no padding) → affine → ReLU → max pool 3×3 /2 (no padding)      → (B, 32, 35, 35)
- five stages of residual blocks; widths 32, 64, 128, 256, 256 and 3, 4, 3, 3, 1 blocks; the first block of
  every stage but the first halves the resolution                        → 17, 8, 4, 2 px
- global average pool → fc 256 → 128 without bias: the raw descriptor (the Embedder L2-normalises it).

A block is ``ReLU(shortcut + affine(conv3×3(ReLU(affine(conv3×3 /s(x))))))``. dlib's convolutions pad by
half the kernel only at stride 1, so a downsampling conv has no padding; its shortcut is a 2×2 /2 average
pool of ``x`` (no projection), and dlib's ``add_prev`` adds tensors of different shapes by zero-padding both to
the larger one at the end of each dimension (channels, rows, columns). That is how 64 channels meet 32, and
how at the last two steps a 3×3 (then 1×1) block output meets a 4×4 (then 2×2) pooled shortcut.

dlib's ``affine`` layer is batch norm folded into a per-channel scale and shift; ``Affine`` keeps it as one,
trainable, without batch statistics (fine-tuning leaves it as dlib's frozen-statistics form).

Input: ``(rgb - mean) / 256`` with dlib's per-channel mean, which the ``.dat`` stores (the model keeps it in
the ``input_mean`` buffer; normalisation happens outside ``forward``).

Serialisation (``embedding.dlib_serial`` for the primitives; dlib/dnn/{core,layers,input,loss}.h): tensors are
a version, four dimensions, then little-endian float32. A network is written outermost layer first, each wrapper
writing its version before recursing into the layer beneath and its own fields after, so the file holds every
wrapper's version, then the input layer, then the layers' fields from the input upwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import ConfigError
from common.checkpoint import load_state_file
from common.registry import register_embedder, register_model
from embedding.dlib_landmarks import landmarker_alignment
from embedding.dlib_serial import DlibFormatError, DlibReader, packaged_model_file, read_dat
from embedding.embedder import Alignment, Embedder, file_sha256

INPUT_SIZE = 150
EMBEDDING_DIM = 128
STEM_CHANNELS = 32
STAGE_WIDTHS = (32, 64, 128, 256, 256)
STAGE_BLOCKS = (3, 4, 3, 3, 1)
DLIB_INPUT_MEAN = (122.782, 117.001, 104.298)  # input_rgb_image_sized's default (R, G, B) mean
DLIB_INPUT_SCALE = 256.0  # input_rgb_image_sized: (pixel - mean) / 256
# dlib's verification threshold on the Euclidean distance of two raw descriptors (loss_metric's dist_thresh).
DLIB_DISTANCE_THRESHOLD = 0.6

DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# Where MTCNN's 5 landmarks (image-left eye centre, image-right eye centre, nose tip, image-left / image-right
# mouth corner) lie, on average, in the 150-px chip that dlib.get_face_chip(size=150, padding=0.25) cuts from
# dlib's own 5-point landmarks: MTCNN's points mapped into dlib's chip by dlib's chip transform over LFW
# photos (bench/derive_dlib_template.py: 199 photos, seed 0). Aligning MTCNN's points to it reproduces dlib's chip
# geometry to 2.7 px on average (dlib's own landmarks, 99 held-out photos); the rest is where the two landmarkers
# disagree (MTCNN's nose tip and mouth move with head pose; dlib aligns on eye corners and the nose base).
DLIB_TEMPLATE_150 = np.array([[47.81, 45.99], [102.47, 46.24], [75.42, 78.02], [50.37, 106.11], [98.27, 106.34]])
# Box-only fallback: an MTCNN box spans on average (150 - margin) px of dlib's chip (same script).
DLIB_BOX_MARGIN = 8.41
DLIB_ALIGNMENT = Alignment(size=INPUT_SIZE, template=tuple(map(tuple, DLIB_TEMPLATE_150.tolist())),
                           margin=DLIB_BOX_MARGIN)


@dataclass
class DlibLayer:
    """One layer of a dlib network: ``kind`` is con, affine, relu, max_pool, avg_pool, add_prev, fc, or
    tag_or_skip (tags and skips hold no fields: only the network's type says which one and its id)."""

    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class DlibNetwork:
    loss: str
    input_mean: Tuple[float, float, float]  # (R, G, B)
    input_size: Tuple[int, int]  # (rows, columns)
    layers: List[DlibLayer]  # from the input upwards


def _split_params(params: np.ndarray, *shapes: Tuple[int, ...]) -> List[np.ndarray]:
    """Consecutive views of a layer's flat ``params`` (dlib's alias_tensors at offsets 0, size0, ...)."""
    flat, offset, parts = params.reshape(-1), 0, []
    for shape in shapes:
        size = int(np.prod(shape))
        parts.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return parts


def _read_pool(reader: DlibReader, kind: str) -> DlibLayer:
    rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(6))
    return DlibLayer(kind, dict(kernel=(rows, cols), stride=(stride_y, stride_x), padding=(pad_y, pad_x)))


def _read_con(reader: DlibReader, version: str) -> DlibLayer:
    params = reader.tensor()
    filters = reader.integer()
    kernel = (reader.integer(), reader.integer())
    stride = (reader.integer(), reader.integer())
    padding = (reader.integer(), reader.integer())
    weight_shape, bias_shape = reader.alias_shape(), reader.alias_shape()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        reader.real()
    use_bias = reader.boolean() if version in ("con_5", "con_6") else True
    if version == "con_6" and reader.boolean():
        raise reader.error("a convolution with a fused ReLU (unsupported)")
    if not use_bias or int(np.prod(bias_shape)) == 0:
        (weight,), bias = _split_params(params, weight_shape), None
    else:
        weight, bias = _split_params(params, weight_shape, bias_shape)
    if weight.shape[0] != filters:
        raise reader.error(f"convolution with {weight.shape[0]} filters stored for {filters}")
    return DlibLayer("con", dict(weight=weight, bias=None if bias is None else bias.reshape(-1),
                                 kernel=kernel, stride=stride, padding=padding))


def _read_affine(reader: DlibReader, version: str) -> DlibLayer:
    params = reader.tensor()
    gamma_shape, beta_shape = reader.alias_shape(), reader.alias_shape()
    mode = reader.integer()
    if version == "affine_2" and reader.boolean():
        raise reader.error("a disabled affine layer (unsupported)")
    if mode != 0:
        raise reader.error("an affine layer in fully-connected mode (only convolutional mode is supported)")
    gamma, beta = _split_params(params, gamma_shape, beta_shape)
    return DlibLayer("affine", dict(gamma=gamma.reshape(-1), beta=beta.reshape(-1)))


def _read_fc(reader: DlibReader, version: str) -> DlibLayer:
    outputs, inputs = reader.integer(), reader.integer()
    params = reader.tensor()
    weight_shape, bias_shape = reader.alias_shape(), reader.alias_shape()
    bias_mode = reader.integer()  # 0: has bias, 1: fc_no_bias
    for _ in range(4):
        reader.real()
    use_bias = reader.boolean() if version == "fc_3" else True
    if bias_mode == 0 and use_bias:
        weight, bias = _split_params(params, weight_shape, bias_shape)
    else:
        (weight,), bias = _split_params(params, weight_shape), None
    weight = weight.reshape(inputs, outputs)  # dlib computes input (B, inputs) @ weight
    return DlibLayer("fc", dict(weight=weight.T.copy(), bias=None if bias is None else bias.reshape(-1)))


def _read_relu(reader: DlibReader, version: str) -> DlibLayer:
    if version == "relu_2" and reader.boolean():
        raise reader.error("a disabled ReLU (unsupported)")
    return DlibLayer("relu")


_LAYER_READERS = {
    "con_4": _read_con, "con_5": _read_con, "con_6": _read_con,
    "affine_": _read_affine, "affine_2": _read_affine,
    "fc_2": _read_fc, "fc_3": _read_fc,
    "relu_": _read_relu, "relu_2": _read_relu,
    "max_pool_2": lambda reader, _: _read_pool(reader, "max_pool"),
    "avg_pool_2": lambda reader, _: _read_pool(reader, "avg_pool"),
    "add_prev_": lambda reader, _: DlibLayer("add_prev"),
}
_ADD_LAYER_VERSIONS = (2, 3)  # add_layer (a layer with fields); 3 only directly above the input
_TAG_OR_SKIP_VERSION = 1


def read_dlib_network(path: str | Path) -> DlibNetwork:
    """Parse a dlib network with a loss_metric loss and an input_rgb_image_sized input (optionally bz2'd)."""
    path = Path(path)
    data = read_dat(path)
    reader = DlibReader(data, path, f"a dlib network serialised with dlib::serialize (such as {DESCRIPTOR_FILE})")
    try:
        reader.version((1,), "add_loss_layer")
        loss = reader.string()
        if loss not in ("loss_metric_", "loss_metric_2"):
            raise reader.error(f"loss {loss!r} (only dlib's metric-learning loss_metric is read here)")
        if loss == "loss_metric_2":
            reader.real(), reader.real()  # margin, distance threshold: training-only
        wrappers = []  # versions, outermost first, until the input layer's name
        while reader.data[reader.offset:reader.offset + 2] in (b"\x01\x01", b"\x01\x02", b"\x01\x03"):
            wrappers.append(reader.integer())
        input_name = reader.string()
        if input_name != "input_rgb_image_sized":
            raise reader.error(f"input layer {input_name!r} (expected input_rgb_image_sized)")
        input_mean = (reader.real(), reader.real(), reader.real())
        input_size = (reader.integer(), reader.integer())
        if not wrappers or wrappers[-1] not in _ADD_LAYER_VERSIONS:
            raise reader.error("no layer directly above the input")
        layers = []
        for version in reversed(wrappers):
            if version == _TAG_OR_SKIP_VERSION:
                layers.append(DlibLayer("tag_or_skip"))
                continue
            name = reader.string()
            if name not in _LAYER_READERS:
                raise reader.error(f"layer {name!r} (readable: {sorted(_LAYER_READERS)})")
            layers.append(_LAYER_READERS[name](reader, name))
            for _ in range(3):  # setup called, gradient stale, output disabled
                reader.boolean()
            for _ in range(3):  # gradient, cached output, parameter gradient: training state
                reader.tensor()
            if version == 3 and len(layers) == 1:
                reader.integer()  # sample expansion factor
    except (IndexError, UnicodeDecodeError) as error:
        raise reader.error(f"unreadable data ({error})") from None
    if reader.offset != len(data):
        raise reader.error(f"{len(data) - reader.offset} unread bytes after the network")
    return DlibNetwork(loss, input_mean, input_size, layers)


# ----------------------------------------------------------------------------------------------------------
# The network


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger extent of every dimension, missing elements counting as 0."""
    channels, rows, cols = (max(a.shape[d], b.shape[d]) for d in (1, 2, 3))

    def grow(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, cols - x.shape[3], 0, rows - x.shape[2], 0, channels - x.shape[1]))

    return grow(a) + grow(b)


class Affine(nn.Module):
    """dlib's affine layer: ``x * weight + bias`` per channel (batch norm with its statistics folded in)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _dlib_conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    """dlib's con_: padding kernel // 2 at stride 1, none otherwise."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2 if stride == 1 else 0)


class _DlibSlot(NamedTuple):
    """A layer as dlib's network lists it (from the input up) and where its weights go here."""

    kind: str
    module: Optional[nn.Module] = None


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (stride 1) / ``ares_down`` (stride 2, average-pooled shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = _dlib_conv(in_channels, out_channels, 3, stride)
        self.affine1 = Affine(out_channels)
        self.conv2 = _dlib_conv(out_channels, out_channels, 3, 1)
        self.affine2 = Affine(out_channels)
        self.shortcut = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_padded(residual, self.shortcut(x)))

    def dlib_slots(self) -> List[_DlibSlot]:
        body = [_DlibSlot("tag_or_skip"), _DlibSlot("con", self.conv1), _DlibSlot("affine", self.affine1),
                _DlibSlot("relu"), _DlibSlot("con", self.conv2), _DlibSlot("affine", self.affine2)]
        if isinstance(self.shortcut, nn.AvgPool2d):  # tag2, skip1, avg_pool
            body += [_DlibSlot("tag_or_skip"), _DlibSlot("tag_or_skip"), _DlibSlot("avg_pool", self.shortcut)]
        return body + [_DlibSlot("add_prev"), _DlibSlot("relu")]


@register_model("dlib_resnet")
class DlibResNet(nn.Module):
    """(B, 3, 150, 150) input normalised as ``(rgb - input_mean) / 256`` → (B, 128) raw descriptors."""

    input_size = INPUT_SIZE
    output_names = ("descriptors",)

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(DLIB_INPUT_MEAN, dtype=torch.float32))
        self.stem_conv = _dlib_conv(3, STEM_CHANNELS, 7, 2)
        self.stem_affine = Affine(STEM_CHANNELS)
        self.stem_pool = nn.MaxPool2d(3, 2)
        blocks, channels = [], STEM_CHANNELS
        for stage, (width, count) in enumerate(zip(STAGE_WIDTHS, STAGE_BLOCKS)):
            for i in range(count):
                blocks.append(ResidualBlock(channels, width, stride=2 if stage > 0 and i == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.embedding = nn.Linear(channels, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(F.relu(self.stem_affine(self.stem_conv(x))))  # (B, 32, 35, 35)
        x = self.blocks(x)  # (B, 256, 2, 2)
        return self.embedding(x.mean(dim=(2, 3)))  # (B, 256) -> (B, 128)

    def dlib_slots(self) -> Iterator[_DlibSlot]:
        """Every dlib layer in the order dlib serialises their fields (from the input up)."""
        yield from (_DlibSlot("con", self.stem_conv), _DlibSlot("affine", self.stem_affine), _DlibSlot("relu"),
                    _DlibSlot("max_pool", self.stem_pool))
        for block in self.blocks:
            yield from block.dlib_slots()
        yield from (_DlibSlot("avg_pool"), _DlibSlot("fc", self.embedding))  # avg_pool_everything, fc_no_bias


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _check_geometry(layer: DlibLayer, module: nn.Module, where: str) -> None:
    got = (layer.params["kernel"], layer.params["stride"], layer.params["padding"])
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        want = (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding))
    else:  # avg_pool_everything
        want = ((0, 0), (1, 1), (0, 0))
    if got != want:
        raise DlibFormatError(f"{where}: {layer.kind} kernel/stride/padding {got}, the architecture has {want}")


def _copy(target: Optional[torch.Tensor], source: Optional[np.ndarray], where: str) -> None:
    if target is None or source is None or tuple(target.shape) != source.shape:
        raise DlibFormatError(f"{where} of shape {None if source is None else source.shape}, the architecture "
                              f"has {None if target is None else tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(source)))


def _load_layer(layer: DlibLayer, slot: _DlibSlot, where: str) -> None:
    module, params = slot.module, layer.params
    if layer.kind in ("con", "max_pool", "avg_pool"):
        _check_geometry(layer, module, where)
    if layer.kind == "con":
        _copy(module.weight, params["weight"], f"{where}: con weight")
        _copy(module.bias, params["bias"], f"{where}: con bias")
    elif layer.kind == "affine":
        _copy(module.weight, params["gamma"], f"{where}: affine gamma")
        _copy(module.bias, params["beta"], f"{where}: affine beta")
    elif layer.kind == "fc":
        _copy(module.weight, params["weight"], f"{where}: fc weight")
        if params["bias"] is not None:
            raise DlibFormatError(f"{where}: fc with a bias, the architecture's has none")


def load_dlib_resnet(path: str | Path) -> DlibResNet:
    """``DlibResNet`` holding the weights of dlib's ``.dat`` (or ``.dat.bz2``) face-recognition network."""
    network = read_dlib_network(path)
    model = DlibResNet()
    slots = list(model.dlib_slots())
    kinds, expected = [layer.kind for layer in network.layers], [slot.kind for slot in slots]
    if kinds != expected or network.input_size != (INPUT_SIZE, INPUT_SIZE):
        differs = next((i for i, (a, b) in enumerate(zip(kinds, expected)) if a != b), min(len(kinds), len(expected)))
        raise DlibFormatError(f"{path}: a dlib network of {len(kinds)} layers with {network.input_size} input, "
                              f"not dlib_face_recognition_resnet_model_v1's architecture ({len(expected)} layers, "
                              f"{INPUT_SIZE}x{INPUT_SIZE} input); first difference at layer {differs}")
    for index, (layer, slot) in enumerate(zip(network.layers, slots)):
        _load_layer(layer, slot, f"{path} layer {index}")
    model.input_mean.copy_(torch.tensor(network.input_mean, dtype=torch.float32))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# The embedder


def default_descriptor_file() -> Path:
    """dlib's descriptor network as shipped by the ``face-recognition-models`` package."""
    return packaged_model_file(DESCRIPTOR_FILE, "face-recognition network", "weights=PATH")


def load_weights(weights: str | Path | None = None) -> Tuple[DlibResNet, str]:
    """(model, weights hash) from dlib's ``.dat`` (``None``: face-recognition-models' copy) or a state_dict /
    checkpoint of ours (``.pth`` / ``.pt``)."""
    path = default_descriptor_file() if weights is None else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"dlib ResNet weights file not found: {path}")
    if path.suffix in (".pth", ".pt"):
        model = load_state_file(DlibResNet(), path, "a DlibResNet")
    else:
        model = load_dlib_resnet(path)
    return model.eval(), file_sha256(path)


ALIGN_MODES = ("dlib_landmarks", "template")


@register_embedder("dlib_resnet")
def dlib_resnet_embedder(weights: str | Path | None = None, device: str | torch.device = "cpu",
                         batch_size: int = 64, align: str = "dlib_landmarks", landmarker: str | Path | None = None,
                         **_) -> Embedder:
    """dlib's ResNet: 150-px chips in dlib's get_face_chip geometry, ``(rgb - mean) / 256``, 128-d. ``align``:
    ``dlib_landmarks`` cuts each chip from dlib's own 5-point landmarker (``landmarker``: its ``.dat``, default
    face-recognition-models' copy) seeded by the detector's points, as the network was trained (LFW View 1 DevTest
    98.8 %, where it was chosen; View 2 99.05 %); ``template`` aligns the detector's points to ``DLIB_TEMPLATE_150``
    (98.7 %; 98.77 %)."""
    if align not in ALIGN_MODES:
        raise ConfigError(f"dlib_resnet align {align!r}: one of {ALIGN_MODES}")
    model, weights_hash = load_weights(weights)
    alignment = DLIB_ALIGNMENT
    if align == "dlib_landmarks":
        alignment = landmarker_alignment(DLIB_TEMPLATE_150, DLIB_BOX_MARGIN, INPUT_SIZE, landmarker)
    return Embedder("dlib_resnet", model, alignment, mean=model.input_mean.tolist(),
                    std=(DLIB_INPUT_SCALE,) * 3, weights_hash=weights_hash, device=device, batch_size=batch_size)
