"""SFace (Zhong et al. 2021, OpenCV Zoo's ``face_recognition_sface_2021dec``; LFW 99.40 % in fp32, 99.32 % as
the int8 file read here) as a trainable PyTorch module, imported from its block-quantised ONNX file.

Architecture, as the ONNX graph has it (an MXNet export: insightface's MobileNet-v1 ``fmobilenet`` with its "E"
embedding head; no residual connections, no expansion layers). Input 112×112, every convolution is conv (no
bias) → batch norm (eps 1e-3) → PReLU (one slope per channel):

- ``stem`` (``conv_1``): 3×3 conv, stride 1, 3 → 32 channels                                   → (B, 32, 112, 112)
- ``blocks`` (``conv_2`` … ``conv_14``): 13 depthwise-separable blocks, each a 3×3 depthwise conv (``conv_N_dw``)
  then a 1×1 pointwise conv (``conv_N``); widths 64, 128, 128, 256, 256, 512 ×6, 1024, 1024, the depthwise conv
  of ``conv_3``, ``conv_5``, ``conv_7`` and ``conv_13`` at stride 2                              → (B, 1024, 7, 7)
- head: batch norm (``bn1``, eps 2e-5) → dropout 0.4 → flatten (B, 50176) → fully connected 50176 → 128 with bias
  (``pre_fc1``) → batch norm (``fc1``, eps 2e-5; its gamma is 1, MXNet's ``fix_gamma``): the raw 128-d
  embedding (the Embedder L2-normalises it).

The file keeps every batch norm as its own operator (none is folded into a convolution), so the module has them
as ``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` with the file's running statistics; fine-tuning updates them as MXNet
would (its momentum 0.9 on the running value is PyTorch's default momentum 0.1 on the batch's). 9.6 M parameters,
two thirds of them the fully connected layer; 0.57 G multiply-adds per chip.

The ONNX file (opset 21) stores the 27 convolution weights and the fully connected weight and bias as int8 with
a float32 scale and an int8 zero point per block of 64 values (per row of 9 for a depthwise 3×3 kernel, 27 and 32
for the two smallest layers) along their input axis, and turns them into float32 with ``DequantizeLinear``
(then ``Reshape`` to the convolution's 4-D shape); batch norms and PReLU slopes are float32. The importer
dequantises exactly as onnxruntime does, so the module holds the very float32 weights onnxruntime computes with.
The graph also lists 29 stale inputs (the convolutions' and fully connected layer's original weight names) that
no initializer backs and no operator reads: the importer ignores them (onnxruntime refuses the file until they
are removed from ``graph.input``; OpenCV ignores them too).

Input normalisation: the graph computes ``(data - 127.5) * 0.0078125`` on RGB 0-255 input itself. That step is
moved out of the module into the Embedder's ``mean`` / ``std`` (127.5, 128), as for MobileFaceNet and the other
embedders: training (``embedding.training``) takes its normalisation from the registered embedder, and the
module's input is then the same normalised chip for inference, training and ONNX export. The importer checks that
the file's constants are these values.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from common.checkpoint import load_state_file
from common.config import existing_path, project_path
from common.errors import UserError
from common.registry import register_embedder, register_model
from embedding.align import ARCFACE_TEMPLATE_112
from embedding.embedder import Alignment, Embedder, file_sha256

INPUT_SIZE = 112
EMBEDDING_DIM = 128
STEM_CHANNELS = 32
# (output channels, stride of the depthwise conv) of conv_2 … conv_14, the depthwise-separable blocks
SEPARABLE_BLOCKS: Tuple[Tuple[int, int], ...] = (
    (64, 1),
    (128, 2),  # → (B, 128, 56, 56)
    (128, 1),
    (256, 2),  # → (B, 256, 28, 28)
    (256, 1),
    (512, 2),  # → (B, 512, 14, 14)
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2),  # → (B, 1024, 7, 7)
    (1024, 1),
)
FINAL_MAP = INPUT_SIZE // 16  # 7: four stride-2 blocks
CONV_BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
DROPOUT = 0.4
INPUT_MEAN = 127.5  # the graph's own normalisation, (data - 127.5) * 0.0078125, done by the Embedder here
INPUT_STD = 128.0
SFACE_ALIGNMENT = Alignment(size=INPUT_SIZE, template=tuple(map(tuple, ARCFACE_TEMPLATE_112.tolist())))

ONNX_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
DEFAULT_WEIGHTS = f"../shared/models/sface/{ONNX_FILE}"  # from the project root, as RetinaFace's default
CHECKPOINT_SUFFIXES = (".pth", ".pt")


class SFaceFormatError(UserError, ValueError):
    """A file is not (or not entirely) the SFace ONNX graph read here."""


# ----------------------------------------------------------------------------------------------------------
# The network


class _OnnxSlot(NamedTuple):
    """An operator on the graph's data path, in graph order, and the module that holds its weights (None: the
    input normalisation, which the Embedder does, and the flatten, which has none)."""

    op: str
    module: Optional[nn.Module]


class ConvBNPReLU(nn.Module):
    """conv (no bias, padding ``kernel // 2``) → batch norm → PReLU: each of the graph's 27 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=CONV_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def onnx_slots(self) -> List[_OnnxSlot]:
        return [_OnnxSlot("Conv", self.conv), _OnnxSlot("BatchNormalization", self.bn), _OnnxSlot("PRelu", self.act)]


class DepthwiseSeparable(nn.Module):
    """3×3 depthwise conv (``stride``) → 1×1 pointwise conv, each with batch norm and PReLU (``conv_N_dw``,
    ``conv_N`` in the graph)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = ConvBNPReLU(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = ConvBNPReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))

    def onnx_slots(self) -> List[_OnnxSlot]:
        return self.depthwise.onnx_slots() + self.pointwise.onnx_slots()


@register_model("sface")
class SFace(nn.Module):
    """(B, 3, 112, 112) chips normalised as ``(rgb - 127.5) / 128`` → (B, 128) raw embeddings."""

    input_size = INPUT_SIZE
    output_names = ("embedding",)

    def __init__(self):
        super().__init__()
        self.stem = ConvBNPReLU(3, STEM_CHANNELS, 3)  # (B, 32, 112, 112)
        blocks, channels = [], STEM_CHANNELS
        for out_channels, stride in SEPARABLE_BLOCKS:
            blocks.append(DepthwiseSeparable(channels, out_channels, stride))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)  # (B, 1024, 7, 7)
        self.feature_bn = nn.BatchNorm2d(channels, eps=HEAD_BN_EPS)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(channels * FINAL_MAP * FINAL_MAP, EMBEDDING_DIM)
        self.embedding_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=HEAD_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"SFace expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) chips, got {tuple(x.shape)}")
        features = self.feature_bn(self.blocks(self.stem(x)))  # (B, 1024, 7, 7)
        flat = torch.flatten(self.dropout(features), 1)  # (B, 50176)
        return self.embedding_bn(self.fc(flat))  # (B, 128)

    def onnx_slots(self) -> List[_OnnxSlot]:
        """Every operator on the ONNX graph's data path, in graph order."""
        slots = [_OnnxSlot("Sub", None), _OnnxSlot("Mul", None), *self.stem.onnx_slots()]
        for block in self.blocks:
            slots += block.onnx_slots()
        return slots + [_OnnxSlot("BatchNormalization", self.feature_bn), _OnnxSlot("Dropout", self.dropout),
                        _OnnxSlot("Flatten", None), _OnnxSlot("Gemm", self.fc),
                        _OnnxSlot("BatchNormalization", self.embedding_bn)]


# ----------------------------------------------------------------------------------------------------------
# Reading the ONNX file


@dataclass
class OnnxOperator:
    """An operator on the graph's data path: its attributes and its constant inputs (dequantised float32), by
    input name, in input order."""

    op: str
    name: str
    attributes: dict
    constants: List[Tuple[str, np.ndarray]]


def dequantize(quantized: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray], axis: int,
               block_size: int) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(quantized - zero_point) * scale`` in float32, as onnxruntime computes it
    (the integer difference is exact in float32). ``scale`` and ``zero_point`` hold one value for the tensor,
    one per slice along ``axis`` (1-D), or, with ``block_size`` (opset 21), one per ``block_size`` consecutive
    values along ``axis`` (the tensor's rank, ceil(n / block_size) along ``axis``)."""
    axis %= quantized.ndim

    def per_value(values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float32)
        if values.size == 1:
            return values.reshape(())
        if block_size:  # (..., ceil(n / block), ...) → (..., n, ...)
            return np.repeat(values, block_size, axis=axis).take(np.arange(quantized.shape[axis]), axis=axis)
        return values.reshape([-1 if d == axis else 1 for d in range(quantized.ndim)])

    centred = quantized.astype(np.float32)
    if zero_point is not None:
        centred = centred - per_value(zero_point)
    return (centred * per_value(scale)).astype(np.float32)


class _OnnxGraph:
    """The constants of a loaded ONNX graph, followed through the operators that compute weights from them."""

    # operators that make weights out of constants (never on the data path)
    WEIGHT_OPS = ("DequantizeLinear", "Reshape", "Constant", "Identity")  # Identity: PyTorch's shared weights

    def __init__(self, path: Path):
        try:
            import onnx  # a development requirement (requirements-dev.txt): only reading the ONNX file needs it
        except ImportError:
            raise ImportError("reading SFace's ONNX file needs the onnx package: pip install onnx") from None
        self.path = path
        self._onnx = onnx
        try:
            model = onnx.load(str(path))
            self.graph = model.graph
            self.initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in self.graph.initializer}
        except Exception as error:  # protobuf and onnx raise several types for truncated or foreign bytes
            raise self.error(f"not a readable ONNX model ({type(error).__name__}: {error}); expected OpenCV Zoo's "
                             f"{ONNX_FILE}") from None
        self.producers = {output: node for node in self.graph.node for output in node.output}

    def error(self, message: str) -> SFaceFormatError:
        return SFaceFormatError(f"{self.path}: {message}")

    def image_input(self) -> str:
        """The graph input the data path starts from: the one no initializer backs that an operator reads (the
        stale weight inputs are read by none)."""
        read = {name for node in self.graph.node for name in node.input}
        inputs = [graph_input.name for graph_input in self.graph.input
                  if graph_input.name not in self.initializers and graph_input.name in read]
        if len(inputs) != 1:
            raise self.error(f"{len(inputs)} image inputs {inputs} (a graph input that no initializer backs and an "
                             "operator reads); SFace's graph has one")
        return inputs[0]

    def constant(self, name: str) -> np.ndarray:
        """float32 value of a constant tensor: an initializer, or what ``WEIGHT_OPS`` compute from initializers."""
        if name in self.initializers:
            return self.initializers[name]
        node = self.producers.get(name)
        if node is None:
            raise self.error(f"tensor {name!r} is neither an initializer nor computed by an operator")
        if node.op_type not in self.WEIGHT_OPS:
            raise self.error(f"weight tensor {name!r} is computed by {node.op_type} {node.name!r}, expected a "
                             f"constant or one of {', '.join(self.WEIGHT_OPS)} applied to constants")
        attributes = self.attributes(node)
        if node.op_type == "Constant":
            return self._onnx.numpy_helper.to_array(attributes["value"])
        if node.op_type == "Identity":
            return self.constant(node.input[0])
        if node.op_type == "Reshape":
            return self.constant(node.input[0]).reshape(self.constant(node.input[1]))
        quantized, scale = self.constant(node.input[0]), self.constant(node.input[1])
        zero_point = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return dequantize(quantized, scale, zero_point, attributes.get("axis", 1), attributes.get("block_size", 0))

    def attributes(self, node) -> dict:
        return {attribute.name: self._onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}

    def data_path(self) -> List[OnnxOperator]:
        """The operators that compute from the image input, in graph order, with their constant inputs."""
        activations, operators = {self.image_input()}, []
        for node in self.graph.node:
            if not activations.intersection(node.input):
                continue
            activations.update(node.output)
            constants = [(name, self.constant(name)) for name in node.input if name and name not in activations]
            operators.append(OnnxOperator(node.op_type, node.name, self.attributes(node), constants))
        return operators


def read_sface_graph(path: str | Path) -> List[OnnxOperator]:
    """The data-path operators of an ONNX file, weights dequantised to float32."""
    path = Path(path)
    try:
        return _OnnxGraph(path).data_path()
    except SFaceFormatError:
        raise
    except (ValueError, TypeError) as error:  # a malformed constant (wrong size for its shape, odd types)
        raise SFaceFormatError(f"{path}: a malformed weight tensor ({type(error).__name__}: {error})") from None


# ----------------------------------------------------------------------------------------------------------
# Loading into the module


def _copy(target: torch.Tensor, constant: Tuple[str, np.ndarray], where: str, what: str,
          stored_shape: Optional[Tuple[int, ...]] = None) -> None:
    """``target`` (SFace's ``what``) ← the named constant, which must have ``stored_shape`` (default: the
    target's shape)."""
    name, value = constant
    expected = tuple(target.shape) if stored_shape is None else stored_shape
    if value.shape != expected:
        raise SFaceFormatError(f"{where}: tensor {name!r} has shape {value.shape}, SFace's {what} needs {expected}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(target.shape))


def _check(where: str, what: str, found, expected) -> None:
    if not np.allclose(found, expected, rtol=1e-6, atol=0):
        raise SFaceFormatError(f"{where}: {what} {found}, SFace's has {expected}")


def _constants(operator: OnnxOperator, count: int, where: str) -> List[Tuple[str, np.ndarray]]:
    if len(operator.constants) != count:
        names = [name for name, _ in operator.constants]
        raise SFaceFormatError(f"{where}: {len(operator.constants)} constant inputs {names}, SFace's has {count}")
    return operator.constants


def _load_normalisation(operator: OnnxOperator, _: None, where: str) -> None:
    (name, value), = _constants(operator, 1, where)
    expected = INPUT_MEAN if operator.op == "Sub" else 1 / INPUT_STD
    _check(where, f"input normalisation constant {name!r} =", value.reshape(-1), [expected])


def _load_conv(operator: OnnxOperator, conv: nn.Conv2d, where: str) -> None:
    attributes = operator.attributes
    found = (attributes.get("kernel_shape"), attributes.get("strides", [1, 1]), attributes.get("pads", [0] * 4),
             attributes.get("group", 1), attributes.get("dilations", [1, 1]))
    expected = (list(conv.kernel_size), list(conv.stride), list(conv.padding) * 2, conv.groups, list(conv.dilation))
    if found != expected:
        raise SFaceFormatError(f"{where}: kernel, strides, pads, group, dilations {found}, SFace's has {expected}")
    weight, = _constants(operator, 1, f"{where} (SFace's convolutions have no bias)")
    _copy(conv.weight, weight, where, "conv weight")


def _load_batchnorm(operator: OnnxOperator, bn: nn.BatchNorm2d | nn.BatchNorm1d, where: str) -> None:
    _check(where, "epsilon", operator.attributes.get("epsilon", 1e-5), bn.eps)
    scale, shift, mean, variance = _constants(operator, 4, where)
    _copy(bn.weight, scale, where, "batch norm scale")
    _copy(bn.bias, shift, where, "batch norm bias")
    _copy(bn.running_mean, mean, where, "batch norm mean")
    _copy(bn.running_var, variance, where, "batch norm variance")


def _load_prelu(operator: OnnxOperator, prelu: nn.PReLU, where: str) -> None:
    slope, = _constants(operator, 1, where)
    _copy(prelu.weight, slope, where, "PReLU slope", stored_shape=(prelu.num_parameters, 1, 1))


def _load_dropout(operator: OnnxOperator, dropout: nn.Dropout, where: str) -> None:
    ratio = operator.constants[0][1] if operator.constants else 0.5  # opset 12 on: an input, 0.5 when absent
    _check(where, "dropout ratio", float(ratio), dropout.p)


def _load_flatten(operator: OnnxOperator, _: None, where: str) -> None:
    _check(where, "flatten axis", operator.attributes.get("axis", 1), 1)


def _load_gemm(operator: OnnxOperator, fc: nn.Linear, where: str) -> None:
    attributes = operator.attributes
    found = [attributes.get(key, default) for key, default in (("alpha", 1.0), ("beta", 1.0), ("transA", 0),
                                                                ("transB", 0))]
    _check(where, "alpha, beta, transA, transB", found, [1.0, 1.0, 0, 1])  # y = x @ weight.T + bias: nn.Linear
    weight, bias = _constants(operator, 2, where)
    _copy(fc.weight, weight, where, "fully connected weight")
    _copy(fc.bias, bias, where, "fully connected bias")


_LOADERS: Dict[str, Callable[[OnnxOperator, Optional[nn.Module], str], None]] = {
    "Sub": _load_normalisation, "Mul": _load_normalisation, "Conv": _load_conv,
    "BatchNormalization": _load_batchnorm, "PRelu": _load_prelu, "Dropout": _load_dropout,
    "Flatten": _load_flatten, "Gemm": _load_gemm,
}


def load_sface_onnx(path: str | Path) -> SFace:
    """``SFace`` holding the dequantised weights of SFace's ONNX file, operator by operator in graph order; a
    graph of another architecture fails on its first operator, attribute or tensor that differs."""
    path = Path(path)
    operators = read_sface_graph(path)
    model = SFace()
    slots = model.onnx_slots()
    found, expected = [operator.op for operator in operators], [slot.op for slot in slots]
    if found != expected:
        index = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
        at = (f"operator {index} ({operators[index].name!r}) is {found[index]}" if index < len(found)
              else f"the graph ends at operator {index}")
        wanted = expected[index] if index < len(expected) else "nothing more"
        raise SFaceFormatError(f"{path}: {len(found)} operators on the data path, not SFace's {len(expected)}; "
                               f"{at}, SFace has {wanted}")
    for index, (operator, slot) in enumerate(zip(operators, slots)):
        _LOADERS[operator.op](operator, slot.module, f"{path} operator {index} {operator.op} {operator.name!r}")
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# The embedder


def resolve_weights(weights: str | Path | None) -> Path:
    """The weights file: ``weights`` (None: the shared SFace ONNX file) as given when it exists, else from the
    project root (``common.config.existing_path``); it must exist."""
    given = str(weights) if weights is not None else DEFAULT_WEIGHTS
    path = Path(existing_path(given))
    if not path.is_file():
        raise FileNotFoundError(f"SFace weights file not found: {given} (also looked in {project_path(given)}). "
                                f"Pass OpenCV Zoo's {ONNX_FILE} or a state_dict / checkpoint of SFace")
    return path


def load_weights(weights: str | Path | None = None) -> Tuple[SFace, str]:
    """(model, weights hash) from SFace's ONNX file (``None``: the shared copy) or a state_dict / checkpoint of
    ours (``.pth`` / ``.pt``)."""
    path = resolve_weights(weights)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        return load_sface_onnx(path), file_sha256(path)
    return load_state_file(SFace(), path, "an SFace").eval(), file_sha256(path)


@register_embedder("sface")
def sface_embedder(weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 64,
                   **_) -> Embedder:
    """SFace: 112-px ArcFace-aligned chips, ``(rgb - 127.5) / 128``, 128-d."""
    model, weights_hash = load_weights(weights)
    return Embedder("sface", model, SFACE_ALIGNMENT, mean=(INPUT_MEAN,) * 3, std=(INPUT_STD,) * 3,
                    weights_hash=weights_hash, device=device, batch_size=batch_size)
