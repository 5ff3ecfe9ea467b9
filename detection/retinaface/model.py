"""RetinaFace: backbone → FPN → SSH context modules → class / box / 5-landmark heads per level.

Module names follow the widely used PyTorch RetinaFace layout (``body.*``, ``fpn.*``, ``ssh1-3.*``,
``ClassHead/BboxHead/LandmarkHead.<level>.conv1x1``) so its published state dicts load as they are.
The network takes a float (B, 3, H, W) tensor (BGR minus the channel means, see ``detector.preprocess``) and
returns raw outputs; anchors, decoding and NMS live in ``targets`` / ``postprocess``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common.errors import InputError
from common.config import ConfigError
from common.checkpoint import model_state_from_file
from common.registry import register_model

NUM_LEVELS = 3
ANCHORS_PER_CELL = 2  # two square anchor sizes per level (targets.FLAVORS)
NUM_CLASSES = 2  # background, face
NUM_LANDMARK_VALUES = 10  # 5 points × (x, y)
# Pytorch_Retinaface uses LeakyReLU(0.1) in MobileNet and wherever the FPN/SSH width is small (≤ 64 channels),
# ReLU otherwise; its Face-Detector-1MB retraining uses ReLU everywhere (``leaky_slope=0``).
SMALL_NETWORK_CHANNELS = 64
RETINAFACE_LEAKY_SLOPE = 0.1


def conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, slope: float | None = 0.0,
            groups: int = 1) -> nn.Sequential:
    """Conv (no bias) → BN → LeakyReLU(slope); ``slope=None`` leaves the activation out."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return nn.Sequential(*layers)


def depthwise_separable(in_channels: int, out_channels: int, stride: int, slope: float) -> nn.Sequential:
    """MobileNet-v1 block as one Sequential: [dw conv, BN, act, pw conv, BN, act] (indices 0-5)."""
    return nn.Sequential(*conv_bn(in_channels, in_channels, 3, stride, slope, groups=in_channels),
                         *conv_bn(in_channels, out_channels, 1, 1, slope))


class MobileNetV1Body(nn.Module):
    """MobileNet-v1 at width 0.25: three stages ending at strides 8, 16 and 32 (64, 128, 256 channels)."""

    out_channels = (64, 128, 256)

    def __init__(self, slope: float = RETINAFACE_LEAKY_SLOPE):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 3, 2, slope), depthwise_separable(8, 16, 1, slope),
                                    depthwise_separable(16, 32, 2, slope), depthwise_separable(32, 32, 1, slope),
                                    depthwise_separable(32, 64, 2, slope), depthwise_separable(64, 64, 1, slope))
        self.stage2 = nn.Sequential(depthwise_separable(64, 128, 2, slope),
                                    *[depthwise_separable(128, 128, 1, slope) for _ in range(5)])
        self.stage3 = nn.Sequential(depthwise_separable(128, 256, 2, slope), depthwise_separable(256, 256, 1, slope))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class ResNet50Body(nn.Module):
    """torchvision ResNet-50 without its classifier; layers 2-4 (strides 8, 16, 32) feed the FPN."""

    out_channels = (512, 1024, 2048)

    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, leaky_slope: float):
        super().__init__()
        slope = leaky_slope if out_channels <= SMALL_NETWORK_CHANNELS else 0.0
        self.output1 = conv_bn(in_channels[0], out_channels, 1, 1, slope)
        self.output2 = conv_bn(in_channels[1], out_channels, 1, 1, slope)
        self.output3 = conv_bn(in_channels[2], out_channels, 1, 1, slope)
        self.merge1 = conv_bn(out_channels, out_channels, 3, 1, slope)
        self.merge2 = conv_bn(out_channels, out_channels, 3, 1, slope)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Single Stage Headless context module: 3×3, 5×5 and 7×7 receptive fields (stacked 3×3 convs), concatenated."""

    def __init__(self, channels: int, leaky_slope: float):
        super().__init__()
        if channels % 4:
            raise ValueError(f"SSH needs a channel count divisible by 4, got {channels}")
        slope = leaky_slope if channels <= SMALL_NETWORK_CHANNELS else 0.0
        half, quarter = channels // 2, channels // 4
        self.conv3X3 = conv_bn(channels, half, slope=None)
        self.conv5X5_1 = conv_bn(channels, quarter, slope=slope)
        self.conv5X5_2 = conv_bn(quarter, quarter, slope=None)
        self.conv7X7_2 = conv_bn(quarter, quarter, slope=slope)
        self.conv7x7_3 = conv_bn(quarter, quarter, slope=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7X7_2(branch5)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(branch7)], dim=1))


class Head(nn.Module):
    """1×1 conv emitting ``values`` numbers per anchor, flattened to (B, H·W·anchors, values)."""

    def __init__(self, channels: int, values: int, anchors: int = ANCHORS_PER_CELL):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # (B, H, W, anchors * values): row-major cells, then anchors
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    input_size = None  # any H, W (fully convolutional; the detector pads to a multiple of 32)
    output_names = ("boxes", "logits", "landmarks")

    def __init__(self, backbone: str = "mobilenet0.25", leaky_slope: float = RETINAFACE_LEAKY_SLOPE,
                 fpn_channels: int | None = None):
        super().__init__()
        if backbone == "mobilenet0.25":
            self.body = MobileNetV1Body(leaky_slope)
            fpn_channels = fpn_channels or 64
        elif backbone == "resnet50":
            self.body = ResNet50Body()
            fpn_channels = fpn_channels or 256
        else:
            raise ConfigError(f"unknown RetinaFace backbone {backbone!r}; choose mobilenet0.25 or resnet50")
        self.backbone = backbone
        self.fpn = FPN(self.body.out_channels, fpn_channels, leaky_slope)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(fpn_channels, leaky_slope) for _ in range(NUM_LEVELS))
        self.ClassHead = nn.ModuleList([Head(fpn_channels, NUM_CLASSES) for _ in range(NUM_LEVELS)])
        self.BboxHead = nn.ModuleList([Head(fpn_channels, 4) for _ in range(NUM_LEVELS)])
        self.LandmarkHead = nn.ModuleList([Head(fpn_channels, NUM_LANDMARK_VALUES) for _ in range(NUM_LEVELS)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) → box offsets (B, A, 4), class logits (B, A, 2), landmark offsets (B, A, 10);
        anchors ordered level by level (strides 8, 16, 32), row-major, then anchor size."""
        features = self.fpn(self.body(x))
        features = [self.ssh1(features[0]), self.ssh2(features[1]), self.ssh3(features[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, logits, landmarks


def load_backbone_weights(model: RetinaFace, path: str | Path) -> RetinaFace:
    """ImageNet weights for the backbone from a local file: a torchvision ResNet-50 state dict, or the
    MobileNet-0.25 ``mobilenetV1X0.25_pretrain.tar`` (keys ``module.stage1...``). Classifier keys are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    state = model_state_from_file(path)
    state = state.get("state_dict", state)  # the .tar wraps its weights in a training checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items()}
    wanted = model.body.state_dict()
    usable = {k: v for k, v in state.items() if k in wanted}
    missing = sorted(set(wanted) - set(usable))
    if missing:
        raise InputError(f"{path}: not {model.backbone} ImageNet weights; missing {len(missing)} backbone keys, "
                         f"e.g. {missing[:3]}")
    model.body.load_state_dict(usable)
    return model


@register_model("retinaface_mnet025")
def retinaface_mnet025(backbone_weights: str | Path | None = None, leaky_slope: float = RETINAFACE_LEAKY_SLOPE
                       ) -> RetinaFace:
    """``leaky_slope``: 0.1 for Pytorch_Retinaface's weights, 0 for Face-Detector-1MB's (``targets.FLAVORS``)."""
    model = RetinaFace("mobilenet0.25", leaky_slope)
    return load_backbone_weights(model, backbone_weights) if backbone_weights else model


@register_model("retinaface_r50")
def retinaface_r50(backbone_weights: str | Path | None = None, leaky_slope: float = RETINAFACE_LEAKY_SLOPE
                   ) -> RetinaFace:
    model = RetinaFace("resnet50", leaky_slope)  # 256-channel FPN/SSH: ReLU whatever the slope
    return load_backbone_weights(model, backbone_weights) if backbone_weights else model
