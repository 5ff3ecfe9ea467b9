"""The three MTCNN networks, trainable, with facenet-pytorch's weights importable.

Inputs are float tensors already normalised as ``(pixel - 127.5) * 0.0078125``. Every network returns raw
logits (softmax is applied by the detector or the loss, never inside ``forward``):

- ``PNet()(x (B, 3, H, W)) -> (box_offsets (B, 4, H', W'), face_logits (B, 2, H', W'))``; fully convolutional,
  one output cell per 12x12 window at stride 2, ``H' = ceil((H - 2) / 2) - 4``.
- ``RNet()(x (B, 3, 24, 24)) -> (box_offsets (B, 4), face_logits (B, 2))``
- ``ONet()(x (B, 3, 48, 48)) -> (box_offsets (B, 4), landmarks (B, 10), face_logits (B, 2))``

Channel 1 of ``face_logits`` is "face". Box offsets are fractions of the box side (x1, y1, x2, y2);
``landmarks`` are 5 x's then 5 y's, relative to the O-Net box, in [0, 1].

facenet-pytorch's dense layers (from the Caffe model via TensorFlow) flatten the last feature map in
(W, H, C) order; ours flatten in PyTorch's (C, H, W) order and the importer permutes the weight columns.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn as nn

from common.errors import InputError
from common.registry import register_model

INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125  # 1 / 128
RNET_SIZE = 24
ONET_SIZE = 48


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 or float pixel values in [0, 255] -> the networks' input range."""
    return (pixels.float() - INPUT_MEAN) * INPUT_SCALE


def _conv(cin: int, cout: int, kernel: int) -> Tuple[nn.Module, nn.Module]:
    return nn.Conv2d(cin, cout, kernel), nn.PReLU(cout)


class PNet(nn.Module):
    """Proposal net: 12x12 receptive field, stride 2."""

    input_size = None  # any H, W >= 12 (fully convolutional)
    output_names = ("box_offsets", "face_logits")

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(3, 10, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
            *_conv(10, 16, 3),
            *_conv(16, 32, 3),
        )
        self.box_head = nn.Conv2d(32, 4, 1)
        self.face_head = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)  # (B, 32, H', W')
        return self.box_head(features), self.face_head(features)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    input_size = RNET_SIZE
    output_names = ("box_offsets", "face_logits")

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(3, 28, 3), nn.MaxPool2d(3, 2, ceil_mode=True),  # (B, 28, 11, 11)
            *_conv(28, 48, 3), nn.MaxPool2d(3, 2, ceil_mode=True),  # (B, 48, 4, 4)
            *_conv(48, 64, 2),  # (B, 64, 3, 3)
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, 128), nn.PReLU(128),
        )
        self.box_head = nn.Linear(128, 4)
        self.face_head = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)  # (B, 128)
        return self.box_head(features), self.face_head(features)


class ONet(nn.Module):
    """Output net on 48x48 crops: box, 5 landmarks, face score."""

    input_size = ONET_SIZE
    output_names = ("box_offsets", "landmarks", "face_logits")

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(3, 32, 3), nn.MaxPool2d(3, 2, ceil_mode=True),  # (B, 32, 23, 23)
            *_conv(32, 64, 3), nn.MaxPool2d(3, 2, ceil_mode=True),  # (B, 64, 10, 10)
            *_conv(64, 64, 3), nn.MaxPool2d(2, 2, ceil_mode=True),  # (B, 64, 4, 4)
            *_conv(64, 128, 2),  # (B, 128, 3, 3)
            nn.Flatten(),
            nn.Linear(128 * 3 * 3, 256), nn.PReLU(256),
        )
        self.box_head = nn.Linear(256, 4)
        self.landmark_head = nn.Linear(256, 10)
        self.face_head = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.features(x)  # (B, 256)
        return self.box_head(features), self.landmark_head(features), self.face_head(features)


register_model("mtcnn_pnet")(PNet)
register_model("mtcnn_rnet")(RNet)
register_model("mtcnn_onet")(ONet)

# facenet-pytorch parameter prefix -> ours, per network. Sequential indices follow the layer lists above.
_FACENET_KEYS: Dict[str, Dict[str, str]] = {
    "pnet": {"conv1": "features.0", "prelu1": "features.1", "conv2": "features.3", "prelu2": "features.4",
             "conv3": "features.5", "prelu3": "features.6", "conv4_2": "box_head", "conv4_1": "face_head"},
    "rnet": {"conv1": "features.0", "prelu1": "features.1", "conv2": "features.3", "prelu2": "features.4",
             "conv3": "features.6", "prelu3": "features.7", "dense4": "features.9", "prelu4": "features.10",
             "dense5_2": "box_head", "dense5_1": "face_head"},
    "onet": {"conv1": "features.0", "prelu1": "features.1", "conv2": "features.3", "prelu2": "features.4",
             "conv3": "features.6", "prelu3": "features.7", "conv4": "features.9", "prelu4": "features.10",
             "dense5": "features.12", "prelu5": "features.13",
             "dense6_2": "box_head", "dense6_3": "landmark_head", "dense6_1": "face_head"},
}
# The dense layer fed by the last conv map, and that map's (channels, height, width).
_FLATTENED = {"rnet": ("dense4", (64, 3, 3)), "onet": ("dense5", (128, 3, 3))}


def _net_name(model: nn.Module) -> str:
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        if isinstance(model, cls):
            return name
    raise TypeError(f"expected a PNet, RNet or ONet, got {type(model).__name__}")


def facenet_weights_dir() -> Path:
    """The folder holding facenet-pytorch's ``pnet.pt``, ``rnet.pt``, ``onet.pt``."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("MTCNN's pretrained weights come from the facenet-pytorch package, which is not "
                          "installed: pip install facenet-pytorch==2.5.3 (or pass weights=<our .pth>)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def convert_facenet_state_dict(state_dict: Dict[str, torch.Tensor], net: str) -> Dict[str, torch.Tensor]:
    """facenet-pytorch's ``{pnet,rnet,onet}.pt`` state dict -> ours for ``net`` in ("pnet", "rnet", "onet")."""
    prefixes = _FACENET_KEYS[net]
    converted = {}
    for key, value in state_dict.items():
        prefix, _, param = key.rpartition(".")
        if prefix not in prefixes:
            raise InputError(f"unexpected key {key!r} in facenet-pytorch {net} weights; known layers: "
                           f"{', '.join(prefixes)}")
        if net in _FLATTENED and prefix == _FLATTENED[net][0] and param == "weight":
            channels, height, width = _FLATTENED[net][1]
            # columns ordered (w, h, c) in facenet -> (c, h, w) for nn.Flatten on NCHW
            value = value.reshape(-1, width, height, channels).permute(0, 3, 2, 1).reshape(value.shape[0], -1)
        converted[f"{prefixes[prefix]}.{param}"] = value.contiguous()
    return converted


def load_facenet_weights(model: nn.Module, path: str | Path | None = None) -> nn.Module:
    """Load facenet-pytorch's weights into our PNet/RNet/ONet (``path`` defaults to the installed package's)."""
    net = _net_name(model)
    path = Path(path) if path is not None else facenet_weights_dir() / f"{net}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"facenet-pytorch {net} weights not found at {path}; "
                                f"reinstall facenet-pytorch==2.5.3 or pass the path of its {net}.pt")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_facenet_state_dict(state_dict, net))
    return model


def load_pretrained_mtcnn() -> Tuple[PNet, RNet, ONet]:
    """The three networks with facenet-pytorch's weights, in eval mode."""
    return tuple(load_facenet_weights(cls()).eval() for cls in (PNet, RNet, ONet))
