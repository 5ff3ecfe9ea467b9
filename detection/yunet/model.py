"""YuNet (Wu, Peng and Yu, 2023; libfacedetection.train): a 76k-parameter anchor-free face detector.

Every convolution but the first is a ``DepthwisePointUnit``: a 1×1 convolution, then a depthwise 3×3, then
BN + ReLU. Backbone: a stride-2 3×3 stem and five blocks of two units, max-pooled so that blocks 3-5 put out
strides 8, 16, 32; a top-down path (nearest 2× upsampling, add, one unit per level); per level one shared
unit and four unit-shaped heads without BN (face class, objectness, box, 5 landmarks).

Module names follow libfacedetection.train's (``backbone.model0``…``model5``, ``neck.lateral_convs.*``,
``bbox_head.multi_level_*``) so its ``yunet_n.pth`` loads as it is. The network takes BGR pixels 0-255 (float,
unnormalised: ``detector.preprocess``) and returns raw outputs; points, decoding and NMS live in ``targets`` /
``postprocess``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.detections import NUM_LANDMARKS
from common.registry import register_model

STRIDES = (8, 16, 32)
# YuNet-n, the published yunet_n.pth: (in, out) channels of blocks 1-5 after the 3→16 stem
YUNET_N_BLOCKS = ((16, 64), (64, 64), (64, 64), (64, 64), (64, 64))
STEM_CHANNELS = 16
POOLED_AFTER = (0, 2, 3, 4)  # max-pool 2×2 after the stem and blocks 2, 3, 4
OUTPUT_BLOCKS = (3, 4, 5)  # strides 8, 16, 32
NUM_BOX_VALUES = 4
NUM_LANDMARK_VALUES = 2 * NUM_LANDMARKS
PRIOR_PROBABILITY = 0.01


class DepthwisePointUnit(nn.Module):
    """1×1 convolution → depthwise 3×3 → (BN → ReLU unless ``head``)."""

    def __init__(self, in_channels: int, out_channels: int, head: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels)
        self.bn = None if head else nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        return x if self.bn is None else F.relu(self.bn(x))


class Stem(nn.Module):
    """3×3 stride-2 convolution → BN → ReLU → one unit."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = DepthwisePointUnit(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


class Block(nn.Module):
    """Two units: ``in → in``, then ``in → out``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = DepthwisePointUnit(in_channels, in_channels)
        self.conv2 = DepthwisePointUnit(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Backbone(nn.Module):
    def __init__(self, blocks: Sequence[tuple[int, int]]):
        super().__init__()
        self.model0 = Stem(STEM_CHANNELS)
        for index, (in_channels, out_channels) in enumerate(blocks, start=1):
            self.add_module(f"model{index}", Block(in_channels, out_channels))
        self.depth = len(blocks) + 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → the outputs of blocks 3, 4, 5: (B, C, H/8, W/8), (…/16), (…/32)."""
        outputs = []
        for index in range(self.depth):
            x = getattr(self, f"model{index}")(x)
            if index in OUTPUT_BLOCKS:
                outputs.append(x)
            if index in POOLED_AFTER:
                x = F.max_pool2d(x, 2)
        return outputs


class TopDown(nn.Module):
    """Coarsest level first: each level adds the next coarser level's output, upsampled 2× (nearest), then
    passes through its unit."""

    def __init__(self, channels: int, num_levels: int = len(STRIDES)):
        super().__init__()
        self.lateral_convs = nn.ModuleList(DepthwisePointUnit(channels, channels) for _ in range(num_levels))

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [self.lateral_convs[-1](levels[-1])]
        for level, unit in zip(reversed(levels[:-1]), reversed(self.lateral_convs[:-1])):
            outputs.insert(0, unit(level + F.interpolate(outputs[0], scale_factor=2.0, mode="nearest")))
        return outputs


class Head(nn.Module):
    def __init__(self, channels: int, num_levels: int = len(STRIDES)):
        super().__init__()
        levels = range(num_levels)
        self.multi_level_share_convs = nn.ModuleList(
            nn.Sequential(DepthwisePointUnit(channels, channels)) for _ in levels)
        self.multi_level_cls = nn.ModuleList(DepthwisePointUnit(channels, 1, head=True) for _ in levels)
        self.multi_level_obj = nn.ModuleList(DepthwisePointUnit(channels, 1, head=True) for _ in levels)
        self.multi_level_bbox = nn.ModuleList(DepthwisePointUnit(channels, NUM_BOX_VALUES, head=True)
                                              for _ in levels)
        self.multi_level_kps = nn.ModuleList(DepthwisePointUnit(channels, NUM_LANDMARK_VALUES, head=True)
                                             for _ in levels)
        # from scratch, every location starts at the prior probability of a face, so the thousands of background
        # locations do not swamp the first steps (RetinaNet's initialisation)
        for head in (*self.multi_level_cls, *self.multi_level_obj):
            nn.init.constant_(head.conv2.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per-level (B, C, h, w) → box (B, A, 4), class logit (B, A), objectness logit (B, A), landmarks
        (B, A, 10), locations level by level, row-major."""
        shared = [convs(level) for convs, level in zip(self.multi_level_share_convs, levels)]
        outputs = []
        for heads in (self.multi_level_bbox, self.multi_level_cls, self.multi_level_obj, self.multi_level_kps):
            outputs.append(torch.cat([_flatten(head(level)) for head, level in zip(heads, shared)], dim=1))
        boxes, cls, obj, landmarks = outputs
        return boxes, cls.squeeze(-1), obj.squeeze(-1), landmarks


def _flatten(level: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C), row-major locations (the order of ``targets.yunet_points``)."""
    return level.flatten(2).transpose(1, 2)


class YuNet(nn.Module):
    input_size = None  # any H, W that are multiples of 32 (fully convolutional; the detector pads)
    output_names = ("boxes", "cls_logits", "obj_logits", "landmarks")

    def __init__(self, blocks: Sequence[tuple[int, int]] = YUNET_N_BLOCKS):
        super().__init__()
        self.backbone = Backbone(blocks)
        channels = blocks[-1][1]
        self.neck = TopDown(channels)
        self.bbox_head = Head(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) BGR 0-255 → box (B, A, 4), class logit (B, A), objectness logit (B, A), landmarks
        (B, A, 10), A = Σ H·W / stride²."""
        return self.bbox_head(self.neck(self.backbone(x)))


@register_model("yunet_n")
def yunet_n() -> YuNet:
    return YuNet(YUNET_N_BLOCKS)
