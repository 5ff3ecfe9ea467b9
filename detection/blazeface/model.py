"""Trainable BlazeFace: MediaPipe's short-range "front" and back-camera "back" layouts (``BlazeFace``) and the
full-range model (``BlazeFaceFullRange``, "full": 192-px input, bottleneck blocks, a bilinear top-down path, one
48×48 level of 2,304 anchors).

MediaPipe ships BlazeFace as TFLite graphs with batch norm folded into the convolutions. Here every
backbone conv is followed by a real ``nn.BatchNorm2d`` so the network trains; ``fuse_batchnorm`` folds
them back for inference. TFLite's 'SAME' padding is reproduced exactly: stride-2 convs pad
``total // 2`` before and the rest after (i.e. right/bottom-heavy), which PyTorch's symmetric
``padding=`` cannot express.

``forward`` takes images already normalised to [-1, 1] and returns raw logits; anchor decoding,
sigmoid and NMS live outside the model.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.config import ConfigError
from common.registry import register_model

# (in_channels, out_channels, stride, residual) for each BlazeBlock.
BlockSpec = Tuple[int, int, int, bool]

# Prior probability of "face" used to initialise the classifier bias (RetinaNet-style), so that
# training from scratch does not start with a flood of confident false positives.
_CLASSIFIER_PRIOR = 0.01


@dataclass(frozen=True)
class BlazeFaceConfig:
    input_size: int
    stem_channels: int
    # Blocks producing the stride-8 map (16x16 at the nominal input size) ...
    stage1: Tuple[BlockSpec, ...]
    # ... and the stride-16 map (8x8).
    stage2: Tuple[BlockSpec, ...]
    anchors_per_cell: Tuple[int, int] = (2, 6)


def _blocks(*runs: Tuple[int, int, int, int]) -> Tuple[BlockSpec, ...]:
    """Expand ``(count, in, out, stride)`` runs: the first block of a run maps in->out with the
    given stride, the others keep out->out at stride 1. All blocks are residual."""
    specs: List[BlockSpec] = []
    for count, cin, cout, stride in runs:
        specs.append((cin, cout, stride, True))
        specs.extend((cout, cout, 1, True) for _ in range(count - 1))
    return tuple(specs)


VARIANTS = {
    # MediaPipe face_detection_short_range.tflite (128x128 input).
    "front": BlazeFaceConfig(
        input_size=128,
        stem_channels=24,
        stage1=_blocks(
            (1, 24, 24, 1), (1, 24, 28, 1), (1, 28, 32, 2), (1, 32, 36, 1), (1, 36, 42, 1),
            (1, 42, 48, 2), (1, 48, 56, 1), (1, 56, 64, 1), (1, 64, 72, 1), (1, 72, 80, 1),
            (1, 80, 88, 1),
        ),
        stage2=_blocks((5, 88, 96, 2)),
    ),
    # MediaPipe back-camera BlazeFace (256x256 input), as laid out in hollance/BlazeFace-PyTorch
    # with back_model=True; the last block downsamples without a skip connection.
    "back": BlazeFaceConfig(
        input_size=256,
        stem_channels=24,
        stage1=_blocks((7, 24, 24, 1), (8, 24, 24, 2), (8, 24, 48, 2), (8, 48, 96, 2)),
        stage2=((96, 96, 2, False),),
    ),
}


def _tf_same_padding(size: int, kernel_size: int, stride: int) -> Tuple[int, int]:
    """TensorFlow 'SAME' padding along one axis: (before, after), the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm with TFLite 'SAME' padding, or (``symmetric``) the same padding on every side,
    as the full-range graph's explicit PAD ops give. No activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, symmetric: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = 1 if symmetric else stride  # the stride left to ``forward``'s 'SAME' padding
        # With stride 1 and an odd kernel 'SAME' is symmetric and the conv pads by itself; strided
        # convs are padded in forward (the amounts depend on the input size).
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              kernel_size // 2 if stride == 1 or symmetric else 0,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            top, bottom = _tf_same_padding(x.shape[-2], self.kernel_size, self.stride)
            left, right = _tf_same_padding(x.shape[-1], self.kernel_size, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        return self.bn(self.conv(x))


class BlazeBlock(nn.Module):
    """MediaPipe's single BlazeBlock: depthwise 3x3 -> pointwise 1x1, plus a skip connection
    (2x2 max-pool when strided, zero-padded channels when widening), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, residual: bool = True):
        super().__init__()
        self.dw = ConvBN(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pw = ConvBN(in_channels, out_channels, 1)
        self.residual = residual
        # TFLite MAX_POOL_2D 2x2/2 with 'SAME' padding == ceil_mode for odd sizes.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 and residual else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw(self.dw(x))  # (B, Cout, H', W')
        if self.residual:
            # MediaPipe zero-pads the skip's extra channels then adds; adding into the first Cin
            # channels in place is the same sum without materialising the padded tensor.
            skip = self.pool(x)  # (B, Cin, H', W')
            h[:, : skip.shape[1]] += skip
        return self.act(h)


class BlazeBackbone(nn.Module):
    """Stem + two stages; returns the stride-8 and stride-16 feature maps."""

    def __init__(self, config: BlazeFaceConfig):
        super().__init__()
        self.stem = ConvBN(3, config.stem_channels, 5, stride=2)
        self.stem_act = nn.ReLU(inplace=True)
        self.stage1 = nn.Sequential(*(BlazeBlock(*spec) for spec in config.stage1))
        self.stage2 = nn.Sequential(*(BlazeBlock(*spec) for spec in config.stage2))
        self.out_channels = (config.stage1[-1][1], config.stage2[-1][1])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.stem_act(self.stem(x))
        c8 = self.stage1(x)  # (B, 88, 16, 16) front / (B, 96, 16, 16) back
        c16 = self.stage2(c8)  # (B, 96, 8, 8)
        return c8, c16


class BlazeHead(nn.Module):
    """1x1 classifier and regressor convs on both maps (plain conv + bias, as in MediaPipe, where the
    heads carry no batch norm). Outputs are flattened in MediaPipe's anchor order: stride-8 map
    first, row-major (y, x, anchor), then the stride-16 map."""

    def __init__(self, in_channels: Sequence[int], anchors_per_cell: Sequence[int], num_coords: int):
        super().__init__()
        self.num_coords = num_coords
        (c8, c16), (a8, a16) = in_channels, anchors_per_cell
        # Registration order = MediaPipe's operator order (used by the weight importer).
        self.cls_s8 = nn.Conv2d(c8, a8, 1)
        self.cls_s16 = nn.Conv2d(c16, a16, 1)
        self.reg_s8 = nn.Conv2d(c8, a8 * num_coords, 1)
        self.reg_s16 = nn.Conv2d(c16, a16 * num_coords, 1)

    def forward(self, c8: torch.Tensor, c16: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b = c8.shape[0]
        s8 = self.cls_s8(c8).permute(0, 2, 3, 1).reshape(b, -1)  # (B, 16*16*2) = (B, 512)
        s16 = self.cls_s16(c16).permute(0, 2, 3, 1).reshape(b, -1)  # (B, 8*8*6) = (B, 384)
        scores = torch.cat((s8, s16), dim=1)  # (B, 896)
        r8 = self.reg_s8(c8).permute(0, 2, 3, 1).reshape(b, -1, self.num_coords)  # (B, 512, 16)
        r16 = self.reg_s16(c16).permute(0, 2, 3, 1).reshape(b, -1, self.num_coords)  # (B, 384, 16)
        regressors = torch.cat((r8, r16), dim=1)  # (B, 896, 16)
        return regressors, scores


class FrozenBatchNorm:
    """``train()`` that keeps batch norm in inference mode when the network's ``freeze_batchnorm`` is set."""

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self


class BlazeFace(FrozenBatchNorm, nn.Module):
    """BlazeFace detector network.

    ``forward(x)``: ``x`` is ``(B, 3, S, S)`` float in [-1, 1] (``pixel / 127.5 - 1``), ``S`` = 128
    for "front", 256 for "back". Returns ``(raw_regressors (B, 896, 4 + 2 * num_keypoints),
    raw_scores (B, 896))``, both before any decoding / sigmoid.
    """

    output_names = ("regressors", "scores")

    def __init__(self, variant: str = "front", num_keypoints: int = 6, freeze_batchnorm: bool = False):
        super().__init__()
        # Weights imported from MediaPipe carry BN folded into the convs (BN = identity). Batch statistics of
        # small fine-tuning batches would replace that identity at the first step and wreck the detector, so
        # fine-tuning keeps BN in inference mode (gamma/beta still train), as detectors do with frozen BN.
        self.freeze_batchnorm = freeze_batchnorm
        if variant not in VARIANTS:
            raise ConfigError(f"unknown BlazeFace variant {variant!r}; expected one of {sorted(VARIANTS)}")
        config = VARIANTS[variant]
        self.variant = variant
        self.input_size = config.input_size
        self.num_keypoints = num_keypoints
        self.num_coords = 4 + 2 * num_keypoints
        cells8, cells16 = (config.input_size // 8) ** 2, (config.input_size // 16) ** 2
        self.num_anchors = cells8 * config.anchors_per_cell[0] + cells16 * config.anchors_per_cell[1]
        self.backbone = BlazeBackbone(config)
        self.head = BlazeHead(self.backbone.out_channels, config.anchors_per_cell, self.num_coords)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for conv in (self.head.cls_s8, self.head.cls_s16, self.head.reg_s8, self.head.reg_s16):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        prior_logit = -math.log((1 - _CLASSIFIER_PRIOR) / _CLASSIFIER_PRIOR)
        for conv in (self.head.cls_s8, self.head.cls_s16):
            nn.init.constant_(conv.bias, prior_logit)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise ValueError(
                f"BlazeFace[{self.variant}] expects (B, 3, {self.input_size}, {self.input_size}) "
                f"images in [-1, 1], got {tuple(x.shape)}"
            )
        c8, c16 = self.backbone(x)
        return self.head(c8, c16)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every ConvBN's batch norm folded into its conv
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``); the original model is left untouched."""
    fused = copy.deepcopy(model).eval()
    for m in fused.modules():
        if isinstance(m, ConvBN) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return fused


@register_model("blazeface_front")
def blazeface_front(num_keypoints: int = 6, freeze_batchnorm: bool = False) -> BlazeFace:
    return BlazeFace("front", num_keypoints=num_keypoints, freeze_batchnorm=freeze_batchnorm)


@register_model("blazeface_back")
def blazeface_back(num_keypoints: int = 6, freeze_batchnorm: bool = False) -> BlazeFace:
    return BlazeFace("back", num_keypoints=num_keypoints, freeze_batchnorm=freeze_batchnorm)


# ------------------------------------------------------------------------------------------- full range


class SeparableConv(nn.Module):
    """Depthwise 3x3 (stride 1 or 2, padded 1 on every side) then pointwise 1x1, each with batch norm; ReLU after
    when ``relu``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.dw = ConvBN(in_channels, in_channels, 3, stride, groups=in_channels, symmetric=True)
        self.pw = ConvBN(in_channels, out_channels, 1)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(x))
        return F.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    """Residual bottleneck of the full-range model: ``relu(x + sep(hidden → C)(sep(C → hidden, relu)(x)))``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.reduce = SeparableConv(channels, hidden)
        self.expand = SeparableConv(hidden, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.expand(self.reduce(x)))


class FullRangeStage(nn.Module):
    """Halve the map (separable convs C_in → hidden at stride 2, hidden → C_out), then ``blocks`` bottlenecks."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, blocks: int):
        super().__init__()
        self.down = nn.Sequential(SeparableConv(in_channels, hidden, stride=2), SeparableConv(hidden, out_channels))
        self.blocks = nn.Sequential(*(Bottleneck(out_channels, hidden) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class PointwiseReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """TensorFlow's DEPTH_TO_SPACE on NCHW: (B, block² · C, H, W) → (B, C, H · block, W · block), channel
    ``(i · block + j) · C + c`` going to output pixel (block · h + i, block · w + j) of channel c (PyTorch's
    ``pixel_shuffle`` orders the channels the other way round)."""
    batch, channels, height, width = x.shape
    out_channels = channels // (block * block)
    x = x.view(batch, block, block, out_channels, height, width)  # (B, i, j, C, H, W)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(batch, out_channels, height * block, width * block)


class FullRangeHead(nn.Module):
    """1x1 conv to 4 · ``values`` channels, depthwise 3x3 at stride 2, depth-to-space ×2: ``values`` per cell of the
    48×48 map (plain convs with bias, as in MediaPipe)."""

    def __init__(self, in_channels: int, values: int):
        super().__init__()
        self.pw = nn.Conv2d(in_channels, 4 * values, 1)
        self.dw = nn.Conv2d(4 * values, 4 * values, 3, 2, 1, groups=4 * values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.dw(self.pw(x)), 2)  # (B, values, 48, 48)


class BlazeFaceFullRange(FrozenBatchNorm, nn.Module):
    """MediaPipe's full-range face detector (``face_detection_full_range_sparse.tflite``) as a trainable network.

    ``forward(x)``: ``x`` is ``(B, 3, 192, 192)`` float in [-1, 1]. Returns ``(raw_regressors (B, 2304, 16),
    raw_scores (B, 2304))``, anchors in row-major order of the 48×48 map (stride 4, one anchor per cell).
    Backbone 96 → 48 → 24 → 12 → 6 px maps of bottleneck blocks; a top-down path upsamples bilinearly (half-pixel
    centres) and adds 1x1 laterals of the 48/24/12 maps.
    """

    output_names = ("regressors", "scores")
    variant = "full"
    input_size = 192

    def __init__(self, num_keypoints: int = 6, freeze_batchnorm: bool = False):
        super().__init__()
        self.freeze_batchnorm = freeze_batchnorm
        self.num_keypoints = num_keypoints
        self.num_coords = 4 + 2 * num_keypoints
        self.num_anchors = (self.input_size // 4) ** 2
        self.stem = ConvBN(3, 32, 3, 2, symmetric=True)
        self.stage96 = nn.Sequential(Bottleneck(32, 8), Bottleneck(32, 8))
        self.stage48 = FullRangeStage(32, 16, 64, 2)
        self.lateral48 = PointwiseReLU(64, 48)
        self.stage24 = FullRangeStage(64, 32, 128, 2)
        self.lateral24 = PointwiseReLU(128, 64)
        self.stage12 = FullRangeStage(128, 48, 192, 2)
        self.lateral12 = PointwiseReLU(192, 96)
        self.stage6 = FullRangeStage(192, 96, 384, 3)
        self.top6 = PointwiseReLU(384, 96)
        self.up12 = nn.Sequential(Bottleneck(96, 48), Bottleneck(96, 48))
        self.reduce12 = PointwiseReLU(96, 64)
        self.up24 = nn.Sequential(Bottleneck(64, 32), Bottleneck(64, 32))
        self.reduce24 = PointwiseReLU(64, 48)
        self.up48 = Bottleneck(48, 24)
        self.cls = FullRangeHead(48, 1)
        self.reg = FullRangeHead(48, self.num_coords)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for head in (self.cls, self.reg):
            for conv in (head.pw, head.dw):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls.dw.bias, -math.log((1 - _CLASSIFIER_PRIOR) / _CLASSIFIER_PRIOR))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"BlazeFace[full] expects (B, 3, 192, 192) images in [-1, 1], got {tuple(x.shape)}")
        c96 = self.stage96(F.relu(self.stem(x)))  # (B, 32, 96, 96)
        c48 = self.stage48(c96)  # (B, 64, 48, 48)
        lateral48 = self.lateral48(c48)  # (B, 48, 48, 48)
        c24 = self.stage24(c48)  # (B, 128, 24, 24)
        lateral24 = self.lateral24(c24)  # (B, 64, 24, 24)
        c12 = self.stage12(c24)  # (B, 192, 12, 12)
        lateral12 = self.lateral12(c12)  # (B, 96, 12, 12)
        top = self.top6(self.stage6(c12))  # (B, 96, 6, 6)
        p12 = self.reduce12(self.up12(F.interpolate(top, scale_factor=2, mode="bilinear") + lateral12))  # (B, 64, ...)
        p24 = self.reduce24(self.up24(F.interpolate(p12, scale_factor=2, mode="bilinear") + lateral24))  # (B, 48, ...)
        p48 = self.up48(F.interpolate(p24, scale_factor=2, mode="bilinear") + lateral48)  # (B, 48, 48, 48)
        batch = x.shape[0]
        scores = self.cls(p48).reshape(batch, -1)  # (B, 2304)
        regressors = self.reg(p48).permute(0, 2, 3, 1).reshape(batch, -1, self.num_coords)  # (B, 2304, 16)
        return regressors, scores


@register_model("blazeface_full")
def blazeface_full(num_keypoints: int = 6, freeze_batchnorm: bool = False) -> BlazeFaceFullRange:
    return BlazeFaceFullRange(num_keypoints=num_keypoints, freeze_batchnorm=freeze_batchnorm)
