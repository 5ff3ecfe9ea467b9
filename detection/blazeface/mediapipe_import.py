"""Import MediaPipe BlazeFace weights from a ``.tflite`` flatbuffer into ``BlazeFace`` (short range) or
``BlazeFaceFullRange`` (``face_detection_full_range_sparse.tflite``).

The graph is walked in operator order; its CONV_2D / DEPTHWISE_CONV_2D ops are matched one-to-one
with our convs (stem, then depthwise + pointwise of every block, then the heads) and each match is
checked (op kind, stride, padding, fused activation, weight shape), so a graph of another architecture
fails loudly instead of loading garbage. Weights stored as fp16 and fed through DEQUANTIZE ops
are followed back to their constant and converted exactly to fp32; sparse weights (the full-range
file's, expanded at run time by DENSIFY ops: dense leading dimensions, the last one compressed
row by row, CSR) are expanded here the same way.

TFLite has batch norm folded into the conv; we load the folded kernel into the conv, the folded
bias into BN's beta, and make BN an exact identity (gamma=1, mean=0, var=1-eps).

CLI: ``python -m detection.blazeface.mediapipe_import --tflite X.tflite --out Y.pth [--variant front]``
"""
from __future__ import annotations

import argparse
import struct
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from common.errors import UserError
from common.registry import build_model
from detection.blazeface.model import BlazeFace, BlazeFaceFullRange, Bottleneck, ConvBN, SeparableConv

# Operators a BlazeFace graph consists of besides its convolutions.
_STRUCTURAL_OPS = {"DEQUANTIZE", "DENSIFY", "RELU", "ADD", "PAD", "MAX_POOL_2D", "RESHAPE", "CONCATENATION",
                   "RESIZE_BILINEAR", "DEPTH_TO_SPACE"}
_CSR = 1  # DimensionMetadata format of a compressed dimension (0: dense)
_CONV_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D"}


class MediaPipeImportError(UserError, ValueError):
    """The .tflite graph does not match the BlazeFace architecture it is loaded into."""


class _Layer(NamedTuple):
    name: str
    conv: nn.Conv2d
    bn: Optional[nn.BatchNorm2d]
    stride: int
    fused_relu: bool = False    # the graph applies ReLU inside the conv (short range: a separate RELU op)
    explicit_pad: bool = False  # the graph pads with a PAD op and convolves VALID (short range: SAME)


class _ConvOp(NamedTuple):
    index: int
    kind: str
    stride: int
    padding_same: bool
    fused_activation: int
    weight: np.ndarray
    bias: np.ndarray


def _full_range_layers(model: BlazeFaceFullRange) -> List[_Layer]:
    def convbn(name: str, m: ConvBN, relu: bool) -> _Layer:
        return _Layer(name, m.conv, m.bn, m.conv.stride[0], relu, m.kernel_size > 1)

    def separable(name: str, m: SeparableConv) -> List[_Layer]:
        return [convbn(f"{name}.dw", m.dw, False), convbn(f"{name}.pw", m.pw, m.relu)]

    def bottlenecks(name: str, blocks) -> List[_Layer]:
        blocks = [blocks] if isinstance(blocks, Bottleneck) else list(blocks)
        return [layer for i, block in enumerate(blocks)
                for part in ("reduce", "expand") for layer in separable(f"{name}.{i}.{part}", getattr(block, part))]

    def stage(name: str) -> List[_Layer]:
        module = getattr(model, name)
        return (separable(f"{name}.down.0", module.down[0]) + separable(f"{name}.down.1", module.down[1])
                + bottlenecks(f"{name}.blocks", module.blocks))

    def pointwise(name: str) -> List[_Layer]:
        return [convbn(f"{name}.conv", getattr(model, name).conv, True)]

    def head(name: str) -> List[_Layer]:
        module = getattr(model, name)
        return [_Layer(f"{name}.pw", module.pw, None, 1), _Layer(f"{name}.dw", module.dw, None, 2, False, True)]

    return ([convbn("stem", model.stem, True)] + bottlenecks("stage96", model.stage96)
            + stage("stage48") + pointwise("lateral48") + stage("stage24") + pointwise("lateral24")
            + stage("stage12") + pointwise("lateral12") + stage("stage6") + pointwise("top6")
            + bottlenecks("up12", model.up12) + pointwise("reduce12") + bottlenecks("up24", model.up24)
            + pointwise("reduce24") + bottlenecks("up48", model.up48) + head("cls") + head("reg"))


def _layers_in_graph_order(model: BlazeFace | BlazeFaceFullRange) -> List[_Layer]:
    if isinstance(model, BlazeFaceFullRange):
        return _full_range_layers(model)

    def convbn(name: str, m: ConvBN) -> _Layer:
        return _Layer(name, m.conv, m.bn, m.stride)

    layers = [convbn("backbone.stem", model.backbone.stem)]
    for stage_name in ("stage1", "stage2"):
        for i, block in enumerate(getattr(model.backbone, stage_name)):
            layers.append(convbn(f"backbone.{stage_name}.{i}.dw", block.dw))
            layers.append(convbn(f"backbone.{stage_name}.{i}.pw", block.pw))
    for name in ("cls_s8", "cls_s16", "reg_s8", "reg_s16"):
        layers.append(_Layer(f"head.{name}", getattr(model.head, name), None, 1))
    return layers


class _TFLiteGraph:
    """Minimal reader over the ``tflite`` package's flatbuffer bindings (first subgraph only)."""

    def __init__(self, path: Path):
        import tflite  # parsing dependency only needed for import

        self._tflite = tflite
        self.path = path
        self.raw = path.read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.raw, 0)
        self.graph = self.model.Subgraphs(0)
        self._op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self.producer: Dict[int, int] = {}
        for i in range(self.graph.OperatorsLength()):
            for t in self.graph.Operators(i).OutputsAsNumpy():
                self.producer[int(t)] = i

    def error(self, message: str) -> MediaPipeImportError:
        return MediaPipeImportError(f"{self.path}: {message}")

    def op_name(self, op_index: int) -> str:
        op = self.graph.Operators(op_index)
        code = self.model.OperatorCodes(op.OpcodeIndex())
        # Files written before builtin codes > 127 keep the code in the deprecated int8 field.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return self._op_names.get(builtin, f"builtin#{builtin}")

    def input_shape(self) -> tuple:
        return tuple(int(d) for d in self.graph.Tensors(int(self.graph.Inputs(0))).ShapeAsNumpy())

    def constant(self, tensor_index: int) -> np.ndarray:
        """fp32 value of a constant tensor, following DEQUANTIZE ops back to the stored data."""
        tfl = self._tflite
        op_index = self.producer.get(tensor_index)
        if op_index is not None:
            if self.op_name(op_index) not in ("DEQUANTIZE", "DENSIFY"):
                raise self.error(f"weight tensor {tensor_index} is computed by {self.op_name(op_index)}, "
                                 "expected a constant or DEQUANTIZE / DENSIFY of one")
            return self.constant(int(self.graph.Operators(op_index).Inputs(0)))
        tensor = self.graph.Tensors(tensor_index)
        name = tensor.Name().decode()
        dtypes = {tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.FLOAT16: np.float16}
        if tensor.Type() not in dtypes:
            raise self.error(f"tensor {name!r} has TFLite type {tensor.Type()}; only fp32/fp16 weights are supported")
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
            data = np.frombuffer(self.raw, np.uint8, count=buffer.Size(), offset=buffer.Offset())
        else:
            data = buffer.DataAsNumpy()
        if not isinstance(data, np.ndarray) or data.size == 0:
            raise self.error(f"tensor {name!r} has no constant data")
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
        values = data.view(dtypes[tensor.Type()]).astype(np.float32)
        if tensor.Sparsity() is not None:
            return self._densify(name, tensor.Sparsity(), values, shape)
        return values.reshape(shape)

    def _densify(self, name: str, sparsity, values: np.ndarray, shape: tuple) -> np.ndarray:
        """The dense array of a sparse tensor whose dimensions are dense but the last, which is CSR (rows of the
        leading dimensions in order, each giving its non-zero columns): the layout of MediaPipe's sparse files."""
        tfl = self._tflite
        dims = [sparsity.DimMetadata(d) for d in range(sparsity.DimMetadataLength())]
        order = sparsity.TraversalOrderAsNumpy() if sparsity.TraversalOrderLength() else np.arange(len(shape))
        if (len(dims) != len(shape) or list(order) != list(range(len(shape))) or sparsity.BlockMapLength()
                or any(dim.Format() == _CSR for dim in dims[:-1]) or dims[-1].Format() != _CSR):
            raise self.error(f"tensor {name!r}: sparse layout not supported (only dense dimensions then one CSR "
                             "last dimension, without blocks or reordering)")
        vectors = {tfl.SparseIndexVector.Int32Vector: tfl.Int32Vector, tfl.SparseIndexVector.Uint16Vector:
                   tfl.Uint16Vector, tfl.SparseIndexVector.Uint8Vector: tfl.Uint8Vector}

        def array(table, kind) -> np.ndarray:
            vector = vectors[kind]()
            vector.Init(table.Bytes, table.Pos)
            return vector.ValuesAsNumpy().astype(np.int64)

        last = dims[-1]
        segments = array(last.ArraySegments(), last.ArraySegmentsType())
        columns = array(last.ArrayIndices(), last.ArrayIndicesType())
        rows = int(np.prod(shape[:-1]))
        if len(segments) != rows + 1 or segments[-1] != len(values) or len(columns) != len(values):
            raise self.error(f"tensor {name!r}: sparse segments and values do not agree")
        dense = np.zeros((rows, shape[-1]), np.float32)
        dense[np.repeat(np.arange(rows), np.diff(segments)), columns] = values
        return dense.reshape(shape)

    def conv_ops(self) -> List[_ConvOp]:
        tfl = self._tflite
        ops = []
        for i in range(self.graph.OperatorsLength()):
            kind = self.op_name(i)
            if kind not in _CONV_OPS:
                if kind not in _STRUCTURAL_OPS:
                    raise self.error(f"operator #{i} is {kind}, which a BlazeFace graph does not contain")
                continue
            op = self.graph.Operators(i)
            table = op.BuiltinOptions()
            options = tfl.Conv2DOptions() if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions()
            options.Init(table.Bytes, table.Pos)
            if options.StrideH() != options.StrideW():
                raise self.error(f"operator #{i} ({kind}) has unequal strides")
            if kind == "DEPTHWISE_CONV_2D" and options.DepthMultiplier() != 1:
                raise self.error(f"operator #{i} has depth multiplier {options.DepthMultiplier()}")
            inputs = op.InputsAsNumpy()
            if len(inputs) < 3 or inputs[2] < 0:
                raise self.error(f"operator #{i} ({kind}) has no bias")
            ops.append(_ConvOp(
                index=i,
                kind=kind,
                stride=options.StrideH(),
                padding_same=options.Padding() == tfl.Padding.SAME,
                fused_activation=options.FusedActivationFunction(),
                weight=self.constant(int(inputs[1])),
                bias=self.constant(int(inputs[2])),
            ))
        return ops


def _to_torch_kernel(op: _ConvOp) -> np.ndarray:
    if op.kind == "DEPTHWISE_CONV_2D":
        return op.weight.transpose(3, 0, 1, 2)  # (1, H, W, O) -> (O, 1, H, W)
    return op.weight.transpose(0, 3, 1, 2)  # (O, H, W, I) -> (O, I, H, W)


def load_mediapipe_weights(model: BlazeFace | BlazeFaceFullRange, tflite_path: Union[str, Path]
                           ) -> BlazeFace | BlazeFaceFullRange:
    """Copy the weights of a MediaPipe BlazeFace ``.tflite`` into ``model`` (in place; also returned).

    Raises ``MediaPipeImportError`` naming the file when the graph does not match the model or the file is
    truncated or corrupt.
    """
    path = Path(tflite_path)
    try:
        return _load_mediapipe_weights(model, path)
    except (struct.error, IndexError) as error:  # flatbuffer offsets pointing past the end of the file
        raise MediaPipeImportError(f"{path}: not a readable .tflite file (truncated or corrupt: {error})") from None


@torch.no_grad()
def _load_mediapipe_weights(model: BlazeFace | BlazeFaceFullRange, tflite_path: Path
                            ) -> BlazeFace | BlazeFaceFullRange:
    graph = _TFLiteGraph(tflite_path)
    expected_input = (1, model.input_size, model.input_size, 3)
    if graph.input_shape() != expected_input:
        raise graph.error(f"input shape {graph.input_shape()} does not match BlazeFace[{model.variant}] "
                          f"input {expected_input}")
    layers = _layers_in_graph_order(model)
    ops = graph.conv_ops()
    if len(ops) != len(layers):
        raise graph.error(f"graph has {len(ops)} convolutions, BlazeFace[{model.variant}] has {len(layers)}")
    for layer, op in zip(layers, ops):
        where = f"operator #{op.index} ({op.kind}) for {layer.name}"
        depthwise = layer.conv.groups > 1
        if depthwise != (op.kind == "DEPTHWISE_CONV_2D") or op.stride != layer.stride:
            raise graph.error(f"{where}: stride {op.stride}, expected "
                              f"{'depthwise' if depthwise else 'regular'} conv with stride {layer.stride}")
        if layer.conv.kernel_size[0] > 1 and op.padding_same == layer.explicit_pad:
            raise graph.error(f"{where}: padding is {'SAME' if op.padding_same else 'VALID'}, expected "
                              f"{'a PAD op and VALID' if layer.explicit_pad else 'SAME'}")
        if op.fused_activation != (tfl_relu := 1 if layer.fused_relu else 0):
            raise graph.error(f"{where}: fused activation {op.fused_activation}, expected {tfl_relu} "
                              f"({'ReLU' if layer.fused_relu else 'none'})")
        kernel = _to_torch_kernel(op)
        if kernel.shape != tuple(layer.conv.weight.shape) or op.bias.shape != (layer.conv.out_channels,):
            raise graph.error(f"{where}: kernel {kernel.shape} / bias {op.bias.shape} do not match "
                              f"{tuple(layer.conv.weight.shape)}")
        layer.conv.weight.copy_(torch.from_numpy(kernel))
        bias = torch.from_numpy(op.bias)
        if layer.bn is None:
            layer.conv.bias.copy_(bias)
        else:
            layer.bn.weight.fill_(1.0)
            layer.bn.bias.copy_(bias)
            layer.bn.running_mean.zero_()
            layer.bn.running_var.fill_(1.0 - layer.bn.eps)
    return model


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a MediaPipe BlazeFace .tflite into a state_dict.")
    parser.add_argument("--tflite", type=Path, required=True, help="MediaPipe .tflite file")
    parser.add_argument("--out", type=Path, required=True, help="output .pth (state_dict)")
    parser.add_argument("--variant", default="front", choices=["front", "back", "full"],
                        help="BlazeFace variant the graph implements (full: face_detection_full_range_sparse)")
    args = parser.parse_args(argv)
    model = load_mediapipe_weights(build_model(f"blazeface_{args.variant}"), args.tflite)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters())} parameters, variant {args.variant})")


if __name__ == "__main__":
    main()
