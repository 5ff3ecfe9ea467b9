"""Reading OpenVINO's intermediate representation (IR v11) with ``xml.etree`` and numpy, for importers that rebuild
an IR network as a PyTorch module (``embedding.omz_reid``). OpenVINO itself is not needed (it is the tests'
reference runtime only).

An IR is two files. ``model.xml`` holds the graph: ``<net version="11">`` with ``<layers>``, each with an ``id``, a
``type`` and the opset ``version`` defining it (``Convolution``/``opset1``), a ``<data>`` element with the
operation's attributes as strings (``strides="2, 2"``), and ``<input>``/``<output>`` ports with their ``<dim>``s;
``<edges>`` connect (``from-layer``, ``from-port``) to (``to-layer``, ``to-port``); the net's ``<rt_info>`` records
how the model was converted (``<conversion_parameters>``). ``model.bin`` holds the constants: a ``Const`` layer's
``<data>`` gives its ``element_type``, ``shape`` and the ``offset`` and ``size`` of its little-endian bytes there.
Model Optimizer's FP16 IRs keep weights as f16 constants, each followed by a ``Convert`` to f32 (weight
"decompression"); ``IRGraph.constant`` looks through that Convert, and ``IRGraph.operations`` leaves both out.
"""
from __future__ import annotations

import heapq
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError

IR_VERSION = "11"
# element_type → the numpy dtype of its bytes in the .bin; floats are returned as float32 (what a module holds)
ELEMENT_DTYPES = {"f16": "<f2", "f32": "<f4", "f64": "<f8", "i8": "i1", "u8": "u1", "i32": "<i4", "i64": "<i8",
                  "boolean": "u1"}
FLOAT_TYPES = ("f16", "f32", "f64")
CONSTANT_TYPES = ("Const",)
DECOMPRESSION_TYPE = "Convert"  # Const → Convert: a compressed (f16) weight and its conversion to f32


class IRFormatError(UserError, ValueError):
    """A file is not (or not entirely) an OpenVINO IR v11 of the kind read here."""


@dataclass(frozen=True)
class IRLayer:
    """One ``<layer>``: ``data`` are its attributes as written; shapes are per port, in port order."""

    id: int
    name: str
    type: str
    version: str
    data: dict[str, str]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        return f"layer {self.id} {self.name!r} ({self.type})"


@dataclass
class IRGraph:
    """An IR's layers (in the XML's order), the producer of each of their input ports, and every ``Const``'s value."""

    xml_path: Path
    bin_path: Path
    layers: dict[int, IRLayer]
    # layer id → (producer layer id, producer port) of each input port, in port order
    sources: dict[int, tuple[tuple[int, int], ...]]
    constants: dict[int, np.ndarray]  # Const layer id → its value (floats as float32)
    conversion_parameters: dict[str, str]  # <rt_info><conversion_parameters>: how Model Optimizer was run

    def error(self, layer: IRLayer, message: str) -> IRFormatError:
        return IRFormatError(f"{self.xml_path}: {layer}: {message}")

    def inputs(self, layer: IRLayer) -> list[IRLayer]:
        """The layers feeding ``layer``'s input ports, in port order."""
        return [self.layers[source] for source, _ in self.sources[layer.id]]

    def constant(self, layer: IRLayer) -> np.ndarray | None:
        """The value of a ``Const`` layer, or of a decompression ``Convert`` of one (a float constant converted to
        a float type: float32 either way); ``None`` for any other layer."""
        sources = self.sources[layer.id]
        if layer.type == DECOMPRESSION_TYPE and layer.data.get("destination_type") in FLOAT_TYPES and len(sources) == 1:
            value = self.constants.get(sources[0][0])
            return value if value is not None and value.dtype == np.float32 else None
        return self.constants.get(layer.id)

    def operations(self) -> list[IRLayer]:
        """Every layer that computes on activations, producers before consumers and otherwise in the XML's order
        (which Model Optimizer writes topologically): constants and their decompression are left out."""
        kept = [layer for layer in self.layers.values() if self.constant(layer) is None]
        position = {layer.id: index for index, layer in enumerate(kept)}
        waiting = {layer.id: {source for source, _ in self.sources[layer.id] if source in position} for layer in kept}
        consumers = defaultdict(list)
        for layer_id, producers in waiting.items():
            for producer in producers:
                consumers[producer].append(layer_id)
        ready = [position[layer_id] for layer_id, producers in waiting.items() if not producers]
        heapq.heapify(ready)
        ordered = []
        while ready:
            layer = kept[heapq.heappop(ready)]
            ordered.append(layer)
            for consumer in consumers[layer.id]:
                waiting[consumer].discard(layer.id)
                if not waiting[consumer]:
                    heapq.heappush(ready, position[consumer])
        if len(ordered) < len(kept):
            stuck = next(layer for layer in kept if waiting[layer.id])
            raise self.error(stuck, "the graph has a cycle through this layer")
        return ordered

    def ints(self, layer: IRLayer, key: str) -> tuple[int, ...]:
        """A comma-separated integer attribute of ``layer``'s data (``strides="2, 2"`` → (2, 2))."""
        if key not in layer.data:
            raise self.error(layer, f"no {key!r} attribute")
        return _parse_ints(layer.data[key], lambda message: self.error(layer, f"{key}: {message}"))


def _parse_ints(text: str, error) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise error(f"{text!r} is not a list of integers") from None


def bin_path_of(xml_path: str | Path) -> Path:
    """The weights file of an IR: the .xml's name with .bin."""
    return Path(xml_path).with_suffix(".bin")


def _port_shapes(element: ET.Element, which: str, error) -> tuple[tuple[int, ...], ...]:
    """The shape of each of ``element``'s ``<input>`` or ``<output>`` ports, in port order."""
    ports = element.find(which)
    if ports is None:
        return ()
    try:
        ordered = sorted(ports.findall("port"), key=lambda port: int(port.get("id", "")))
        return tuple(tuple(int(dim.text) for dim in port.findall("dim")) for port in ordered)
    except (TypeError, ValueError):
        raise error(f"<{which}> ports without integer ids and dims") from None


def _read_layer(element: ET.Element, xml_path: Path) -> IRLayer:
    attributes = {key: element.get(key) for key in ("id", "name", "type", "version")}
    if None in attributes.values() or not attributes["id"].isdigit():
        raise IRFormatError(f"{xml_path}: a <layer> without a numeric id, a name, a type and a version: {attributes}")
    data = element.find("data")

    def error(message: str) -> IRFormatError:
        return IRFormatError(f"{xml_path}: layer {attributes['id']} {attributes['name']!r}: {message}")

    return IRLayer(int(attributes["id"]), attributes["name"], attributes["type"], attributes["version"],
                   dict(data.attrib) if data is not None else {}, _port_shapes(element, "input", error),
                   _port_shapes(element, "output", error))


def _read_constant(layer: IRLayer, weights: bytes, xml_path: Path, bin_path: Path) -> np.ndarray:
    def error(message: str) -> IRFormatError:
        return IRFormatError(f"{xml_path}: {layer}: {message}")

    element_type = layer.data.get("element_type")
    if element_type not in ELEMENT_DTYPES:
        raise error(f"element_type {element_type!r} (readable: {sorted(ELEMENT_DTYPES)})")
    shape = _parse_ints(layer.data.get("shape", ""), error)
    offset, size = (_parse_ints(layer.data.get(key, ""), error) for key in ("offset", "size"))
    if len(offset) != 1 or len(size) != 1:
        raise error("no single offset and size into the .bin")
    (offset,), (size,) = offset, size
    dtype = np.dtype(ELEMENT_DTYPES[element_type])
    if size != int(np.prod(shape)) * dtype.itemsize:
        raise error(f"{size} bytes for a {element_type} tensor of shape {shape}")
    if offset < 0 or offset + size > len(weights):
        raise IRFormatError(f"{bin_path}: truncated or not this IR's weights: {layer} is at bytes "
                            f"{offset}..{offset + size} of a {len(weights)}-byte file")
    value = np.frombuffer(weights, dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    return value.astype(np.float32) if element_type in FLOAT_TYPES else value.copy()


def read_ir(xml_path: str | Path, bin_path: str | Path | None = None) -> IRGraph:
    """Parse an IR v11 ``.xml`` and read every ``Const`` from its ``.bin`` (default: the .xml's name with .bin)."""
    xml_path = Path(xml_path)
    bin_path = bin_path_of(xml_path) if bin_path is None else Path(bin_path)
    for path, what in ((xml_path, "graph (.xml)"), (bin_path, "weights (.bin)")):
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO IR {what} file not found: {path} (an IR is an .xml with its .bin "
                                    "beside it, same name)")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise IRFormatError(f"{xml_path}: not an OpenVINO IR v{IR_VERSION} .xml (unparsable XML: {error})") from None
    if root.tag != "net" or root.get("version") != IR_VERSION:
        raise IRFormatError(f"{xml_path}: not an OpenVINO IR v{IR_VERSION} .xml (its root is <{root.tag}> of version "
                            f"{root.get('version')}, expected <net version=\"{IR_VERSION}\">)")
    layer_list, edge_list = root.find("layers"), root.find("edges")
    if layer_list is None or edge_list is None:
        raise IRFormatError(f"{xml_path}: an IR <net> without <layers> or <edges>")
    layers = {}
    for element in layer_list.findall("layer"):
        layer = _read_layer(element, xml_path)
        if layer.id in layers:
            raise IRFormatError(f"{xml_path}: two layers with id {layer.id}")
        layers[layer.id] = layer
    sources = _read_edges(edge_list, layers, xml_path)
    weights = bin_path.read_bytes()
    constants = {layer.id: _read_constant(layer, weights, xml_path, bin_path)
                 for layer in layers.values() if layer.type in CONSTANT_TYPES}
    conversion = root.find("rt_info/conversion_parameters")
    parameters = {} if conversion is None else {child.tag: child.get("value", "") for child in conversion}
    return IRGraph(xml_path, bin_path, layers, sources, constants, parameters)


def _read_edges(edge_list: ET.Element, layers: dict[int, IRLayer],
                xml_path: Path) -> dict[int, tuple[tuple[int, int], ...]]:
    """layer id → (producer id, producer port) per input port, in port order; every input port fed exactly once."""
    feeds: dict[int, dict[int, tuple[int, int]]] = {layer_id: {} for layer_id in layers}
    for edge in edge_list.findall("edge"):
        try:
            source, source_port, target, target_port = (
                int(edge.get(key, "")) for key in ("from-layer", "from-port", "to-layer", "to-port"))
        except ValueError:
            raise IRFormatError(f"{xml_path}: an <edge> without integer from-/to- layer and port: "
                                f"{dict(edge.attrib)}") from None
        if source not in layers or target not in layers:
            raise IRFormatError(f"{xml_path}: an edge between layers {source} and {target}, one of which is absent")
        if target_port in feeds[target]:
            raise IRFormatError(f"{xml_path}: {layers[target]}: input port {target_port} is fed twice")
        feeds[target][target_port] = (source, source_port)
    for layer_id, ports in feeds.items():
        if len(ports) != len(layers[layer_id].input_shapes):
            raise IRFormatError(f"{xml_path}: {layers[layer_id]}: {len(layers[layer_id].input_shapes)} input ports, "
                                f"{len(ports)} fed by edges")
    return {layer_id: tuple(ports[port] for port in sorted(ports)) for layer_id, ports in feeds.items()}
