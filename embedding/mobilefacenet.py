"""MobileFaceNet (Chen et al. 2018): a ~1 M-parameter face embedder for the CPU, on 112×112 ArcFace-aligned chips.

Layout (every conv is conv → batch norm → PReLU unless "linear"):

- ``stem``: 3×3/2 conv to 64 channels (B, 64, 56, 56), then a 3×3 depthwise conv;
- ``blocks``: inverted-residual bottlenecks (1×1 expand → 3×3 depthwise → linear 1×1 project, residual when
  the shape is kept) down to (B, 128, 7, 7);
- ``head``: 1×1 conv to 512, a linear 7×7 *global depthwise* conv (GDC: a learned weighting of every cell
  instead of average pooling, which treats the face's centre and its border alike) to (B, 512, 1, 1), and a
  linear 1×1 conv to the embedding (128 or 512).

``forward`` returns the raw embedding (B, D); the Embedder L2-normalises it. No published weights are loaded:
train it with the embedding stage (a checkpoint or state_dict of ours loads by path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from common.errors import InputError
from common.config import ConfigError
from common.checkpoint import CheckpointError, model_state_from_file
from common.registry import register_embedder, register_model
from embedding.align import ARCFACE_TEMPLATE_112
from embedding.embedder import Alignment, Embedder, file_sha256
from embedding.model_utils import fold_batchnorm, state_sha256

INPUT_SIZE = 112
STEM_CHANNELS = 64
HEAD_CHANNELS = 512
EMBEDDING_DIMS = (128, 512)
INPUT_MEAN = 127.5  # pixels to about [-1, 1]: (x - 127.5) / 128
INPUT_STD = 128.0
MOBILEFACENET_ALIGNMENT = Alignment(size=INPUT_SIZE, template=tuple(map(tuple, ARCFACE_TEMPLATE_112.tolist())))

# (expansion, out_channels, repeats, stride of the first) of each bottleneck run, as in the paper's Table 1
BOTTLENECKS: Tuple[Tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),  # → (B, 64, 28, 28)
    (4, 128, 1, 2),  # → (B, 128, 14, 14)
    (2, 128, 6, 1),
    (4, 128, 1, 2),  # → (B, 128, 7, 7)
    (2, 128, 2, 1),
)
FINAL_MAP = INPUT_SIZE // 16  # 7: the stem and three bottleneck runs each halve the map
EMBEDDING_WEIGHT_KEY = "head.2.conv.weight"  # the head's last conv, (D, 512, 1, 1): gives a file's embedding size


class ConvBN(nn.Module):
    """conv → batch norm → PReLU (``activation=False``: linear)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
                 activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1×1 expand by ``expansion`` → 3×3 depthwise (``stride``) → linear 1×1 project; + x when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.layers = nn.Sequential(
            ConvBN(cin, hidden, 1),
            ConvBN(hidden, hidden, 3, stride, 1, groups=hidden),
            ConvBN(hidden, cout, 1, activation=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


def _bottlenecks(runs: Sequence[Tuple[int, int, int, int]], cin: int) -> nn.Sequential:
    blocks = []
    for expansion, cout, repeats, stride in runs:
        for index in range(repeats):
            blocks.append(Bottleneck(cin, cout, stride if index == 0 else 1, expansion))
            cin = cout
    return nn.Sequential(*blocks)


@register_model("mobilefacenet")
class MobileFaceNet(nn.Module):
    """(B, 3, 112, 112) normalised chips → (B, embedding_dim) raw embeddings."""

    input_size = INPUT_SIZE
    output_names = ("embeddings",)

    def __init__(self, embedding_dim: int = 128):
        super().__init__()
        if embedding_dim not in EMBEDDING_DIMS:
            raise ConfigError(f"MobileFaceNet embedding_dim must be one of {EMBEDDING_DIMS}, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.stem = nn.Sequential(
            ConvBN(3, STEM_CHANNELS, 3, 2, 1),  # (B, 64, 56, 56)
            ConvBN(STEM_CHANNELS, STEM_CHANNELS, 3, 1, 1, groups=STEM_CHANNELS),
        )
        self.blocks = _bottlenecks(BOTTLENECKS, STEM_CHANNELS)  # (B, 128, 7, 7)
        last = BOTTLENECKS[-1][1]
        self.head = nn.Sequential(
            ConvBN(last, HEAD_CHANNELS, 1),  # (B, 512, 7, 7)
            # GDC: (B, 512, 1, 1)
            ConvBN(HEAD_CHANNELS, HEAD_CHANNELS, FINAL_MAP, groups=HEAD_CHANNELS, activation=False),
            ConvBN(HEAD_CHANNELS, embedding_dim, 1, activation=False),  # (B, D, 1, 1)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"MobileFaceNet expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) chips, got {tuple(x.shape)}")
        return torch.flatten(self.head(self.blocks(self.stem(x))), 1)  # (B, D)


def fuse_for_inference(model: MobileFaceNet, channels_last: bool = True) -> MobileFaceNet:
    """An eval-mode copy with batch norm folded into the convs, ``channels_last`` if asked (faster on CPU)."""
    fused = fold_batchnorm(model)
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


def load_mobilefacenet(weights: str | Path | None = None, embedding_dim: int | None = None
                       ) -> Tuple[MobileFaceNet, str]:
    """(model, weights hash): random init (``None``; 128-d unless ``embedding_dim``) or a checkpoint / state_dict
    of ours, whose embedding size is read from the file."""
    if weights is None:
        model = MobileFaceNet(embedding_dim or EMBEDDING_DIMS[0])
        return model, state_sha256(model)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"MobileFaceNet weights file not found: {path}. Pass a checkpoint written by "
                                "train.py --stage embedding or a state_dict of MobileFaceNet")
    state = model_state_from_file(path)
    if not isinstance(state, dict) or EMBEDDING_WEIGHT_KEY not in state:
        raise CheckpointError(f"{path} is not a MobileFaceNet state_dict or checkpoint (no {EMBEDDING_WEIGHT_KEY!r})")
    model = MobileFaceNet(int(state[EMBEDDING_WEIGHT_KEY].shape[0]))
    if embedding_dim is not None and embedding_dim != model.embedding_dim:
        raise InputError(f"{path} holds a {model.embedding_dim}-d MobileFaceNet, not {embedding_dim}-d")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit MobileFaceNet: {error}") from None
    return model, file_sha256(path)


@register_embedder("mobilefacenet")
def mobilefacenet_embedder(weights: str | Path | None = None, device: str | torch.device = "cpu",
                           embedding_dim: int | None = None, batch_size: int = 64, fuse: bool = True) -> Embedder:
    """MobileFaceNet embedder: 112-px ArcFace-aligned chips, ``(x - 127.5) / 128``. ``fuse`` folds batch norm and
    uses channels_last (inference only)."""
    model, weights_hash = load_mobilefacenet(weights, embedding_dim)
    model = fuse_for_inference(model) if fuse else model.eval()
    return Embedder("mobilefacenet", model, MOBILEFACENET_ALIGNMENT, mean=(INPUT_MEAN,) * 3, std=(INPUT_STD,) * 3,
                    weights_hash=weights_hash, device=device, batch_size=batch_size)
