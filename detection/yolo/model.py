"""YOLO-style face network: CSP backbone → PAN neck → decoupled anchor-free heads at strides 8, 16 and 32.

``width`` and ``depth`` scale the channels and the number of bottlenecks per CSP block (YOLOv5/YOLOX's
multipliers: 0.25 / 0.33 is "nano"). The network takes a float (B, 3, H, W) RGB tensor in [0, 1] (H and W
multiples of 32, see ``detector.preprocess``) and returns raw per-location outputs concatenated over the three
levels, coarse last: box (B, A, 4), face logit (B, A), landmarks (B, A, 10). Decoding lives in ``targets``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from common.config import ConfigError
from common.registry import register_model

STRIDES = (8, 16, 32)
BASE_CHANNELS = (64, 128, 256, 512, 1024)  # stem, stride 4, 8, 16, 32 at width 1.0
BASE_DEPTHS = (3, 9, 9, 3)  # bottlenecks of the stride 4, 8, 16, 32 CSP blocks at depth 1.0
NUM_BOX_VALUES = 4  # centre offset (x, y) and log size (w, h), in units of the level's stride
NUM_LANDMARK_VALUES = 10  # 5 points × (x, y) offsets from the location, in strides
PRIOR_PROBABILITY = 0.01  # initial face probability of every location (RetinaFace/YOLOX bias init)
SPPF_KERNEL = 5
MIN_CHANNELS = 8


def scaled_channels(channels: int, width: float) -> int:
    """Channels × width rounded up to a multiple of 8 (at least 8)."""
    return max(MIN_CHANNELS, int(math.ceil(channels * width / MIN_CHANNELS) * MIN_CHANNELS))


class Conv(nn.Sequential):
    """Conv (no bias) → BN → SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.SiLU(inplace=True))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = Conv(channels, channels, 1)
        self.conv2 = Conv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """CSP (C3): half the channels go through ``depth`` bottlenecks, half bypass them; concatenated and fused."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, shortcut: bool = True):
        super().__init__()
        hidden = out_channels // 2
        self.main = nn.Sequential(Conv(in_channels, hidden, 1), *(Bottleneck(hidden, shortcut) for _ in range(depth)))
        self.bypass = Conv(in_channels, hidden, 1)
        self.fuse = Conv(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.main(x), self.bypass(x)], dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained max-pools, concatenated with their input."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        hidden = in_channels // 2
        self.reduce = Conv(in_channels, hidden, 1)
        self.pool = nn.MaxPool2d(SPPF_KERNEL, 1, SPPF_KERNEL // 2)
        self.fuse = Conv(4 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.fuse(torch.cat([x, p1, p2, self.pool(p2)], dim=1))


class CSPBackbone(nn.Module):
    """Stem (stride 2) and four stride-2 stages with CSP blocks; returns the stride 8, 16, 32 maps."""

    def __init__(self, width: float, depth: float):
        super().__init__()
        c0, c1, c2, c3, c4 = (scaled_channels(c, width) for c in BASE_CHANNELS)
        d1, d2, d3, d4 = (max(1, round(d * depth)) for d in BASE_DEPTHS)
        self.stem = Conv(3, c0, 3, 2)
        self.stage1 = nn.Sequential(Conv(c0, c1, 3, 2), CSPBlock(c1, c1, d1))
        self.stage2 = nn.Sequential(Conv(c1, c2, 3, 2), CSPBlock(c2, c2, d2))
        self.stage3 = nn.Sequential(Conv(c2, c3, 3, 2), CSPBlock(c3, c3, d3))
        self.stage4 = nn.Sequential(Conv(c3, c4, 3, 2), SPPF(c4, c4), CSPBlock(c4, c4, d4, shortcut=False))
        self.out_channels = (c2, c3, c4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2 = self.stage2(self.stage1(self.stem(x)))
        c3 = self.stage3(c2)
        return c2, c3, self.stage4(c3)


class PAN(nn.Module):
    """Top-down then bottom-up path aggregation (YOLOv5/YOLOX PAFPN); outputs keep the backbone's channels."""

    def __init__(self, channels: tuple[int, int, int], depth: int):
        super().__init__()
        c3, c4, c5 = channels
        self.lateral5 = Conv(c5, c4, 1)
        self.top_down4 = CSPBlock(2 * c4, c4, depth, shortcut=False)
        self.lateral4 = Conv(c4, c3, 1)
        self.top_down3 = CSPBlock(2 * c3, c3, depth, shortcut=False)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bottom_up4 = CSPBlock(2 * c3, c4, depth, shortcut=False)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bottom_up5 = CSPBlock(2 * c4, c5, depth, shortcut=False)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, features):
        p3, p4, p5 = features
        lateral5 = self.lateral5(p5)
        top4 = self.top_down4(torch.cat([self.upsample(lateral5), p4], dim=1))
        lateral4 = self.lateral4(top4)
        out3 = self.top_down3(torch.cat([self.upsample(lateral4), p3], dim=1))
        out4 = self.bottom_up4(torch.cat([self.down3(out3), lateral4], dim=1))
        out5 = self.bottom_up5(torch.cat([self.down4(out4), lateral5], dim=1))
        return out3, out4, out5


class DecoupledHead(nn.Module):
    """One level: a 1×1 stem, then a classification branch (face logit) and a regression branch (box and
    landmarks), each two 3×3 convs deep."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.stem = Conv(in_channels, channels, 1)
        self.cls_branch = nn.Sequential(Conv(channels, channels, 3), Conv(channels, channels, 3))
        self.reg_branch = nn.Sequential(Conv(channels, channels, 3), Conv(channels, channels, 3))
        self.score = nn.Conv2d(channels, 1, 1)
        self.box = nn.Conv2d(channels, NUM_BOX_VALUES, 1)
        self.landmarks = nn.Conv2d(channels, NUM_LANDMARK_VALUES, 1)
        nn.init.constant_(self.score.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        cls, reg = self.cls_branch(x), self.reg_branch(x)
        return self.box(reg), self.score(cls), self.landmarks(reg)


def _flatten(level: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C), row-major locations (the order of ``targets.anchor_points``)."""
    return level.flatten(2).transpose(1, 2)


@register_model("yolo_face")
class YoloFace(nn.Module):
    input_size = None  # any H, W that are multiples of 32 (fully convolutional; the detector pads)
    output_names = ("boxes", "logits", "landmarks")

    def __init__(self, width: float = 0.25, depth: float = 0.33):
        super().__init__()
        if width <= 0 or depth <= 0:
            raise ConfigError(f"YOLO width and depth multipliers must be positive, got width={width}, depth={depth}")
        self.width, self.depth = width, depth
        self.backbone = CSPBackbone(width, depth)
        self.neck = PAN(self.backbone.out_channels, max(1, round(BASE_DEPTHS[0] * depth)))
        head_channels = self.backbone.out_channels[0]
        self.heads = nn.ModuleList(DecoupledHead(c, head_channels) for c in self.backbone.out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) → box (B, A, 4), face logit (B, A), landmarks (B, A, 10), A = Σ H·W / stride²."""
        outputs = [head(level) for head, level in zip(self.heads, self.neck(self.backbone(x)))]
        boxes = torch.cat([_flatten(box) for box, _, _ in outputs], dim=1)  # (B, A, 4)
        logits = torch.cat([_flatten(score) for _, score, _ in outputs], dim=1).squeeze(-1)  # (B, A)
        points = torch.cat([_flatten(points) for _, _, points in outputs], dim=1)  # (B, A, 10)
        return boxes, logits, points
