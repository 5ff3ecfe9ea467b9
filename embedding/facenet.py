"""FaceNet: Inception-ResNet-v1 (Szegedy et al. 2016) as trained by David Sandberg and ported to PyTorch by
facenet-pytorch, whose ``vggface2`` and ``casia-webface`` state_dicts load here.

Layout (input 160×160; every conv is conv → batch norm (eps 1e-3, TensorFlow's) → ReLU):

- ``stem``: 7 layers down to (B, 256, 17, 17);
- ``stage35`` (5 residual blocks), ``reduction_a`` → (B, 896, 8, 8), ``stage17`` (10 blocks),
  ``reduction_b`` → (B, 1792, 3, 3), ``stage8`` (5 blocks + a last one without scale or ReLU);
- average pool, dropout, ``embedding`` (linear 1792 → 512, no bias), ``embedding_bn`` (batch norm);
  ``classifier`` (512 → identities) only when training as a classifier.

A residual block is ``ReLU(x + scale · project(cat(branches(x))))``. ``forward`` returns the raw 512-d
embedding (the Embedder L2-normalises it) or, with ``classify=True``, the logits.

Alignment: facenet-pytorch's models were trained on MTCNN box crops, not landmark-aligned chips. The Embedder
aligns with a similarity to ``FACENET_TEMPLATE_160``, the mean position of MTCNN's 5 landmarks inside
facenet-pytorch's 160-px box crop (``extract_face`` with margin 0) measured on LFW, so an aligned chip shows
the face where such a crop would, minus the crop's anisotropic stretch (tests/test_facenet.py re-measures it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import InputError
from common.config import ConfigError
from common.checkpoint import CheckpointError, model_state_from_file, state_mismatch
from common.registry import register_embedder, register_model
from embedding.embedder import Alignment, Embedder, file_sha256
from embedding.model_utils import fold_batchnorm, state_sha256

INPUT_SIZE = 160
EMBEDDING_DIM = 512
FEATURE_CHANNELS = 1792
BN_EPS = 1e-3  # TensorFlow's default, which the published weights were trained with
DROPOUT = 0.6  # facenet-pytorch's default dropout probability (training only)
INPUT_MEAN = 127.5  # facenet-pytorch's fixed_image_standardization: (x - 127.5) / 128
INPUT_STD = 128.0

# Mean MTCNN landmarks (image-left eye, image-right eye, nose, image-left / image-right mouth corner) in a
# 160-px margin-0 box crop, over 600 LFW View-2 photos (bench/bench_embedders.py --measure-template). Box crops
# squash faces vertically (MTCNN boxes are taller than wide): eye distance 72 px but eyes-to-mouth 59 px, where
# the 160-scaled ArcFace template has 50 and 58; no similarity maps that template within 6.9 px of these points.
FACENET_TEMPLATE_160 = np.array([[47.62, 63.11], [119.63, 61.87], [84.66, 94.63], [53.37, 122.23], [116.87, 121.19]])
FACENET_ALIGNMENT = Alignment(size=INPUT_SIZE, template=tuple(map(tuple, FACENET_TEMPLATE_160.tolist())), margin=0.0)

# facenet-pytorch's published weights (with their classifiers: 8631 and 10575 identities): name → URL
PUBLISHED_WEIGHTS = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "casia-webface": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
                     "20180408-102900-casia-webface.pt",
}

Kernel = Union[int, Tuple[int, int]]
# (in_channels, out_channels, kernel, stride, padding) of one conv-BN-ReLU
ConvSpec = Tuple[int, int, Kernel, int, Kernel]


def _spec(cin: int, cout: int, kernel: Kernel, stride: int = 1, padding: Kernel = 0) -> ConvSpec:
    return cin, cout, kernel, stride, padding


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: Kernel, stride: int = 1, padding: Kernel = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _branch(specs: Sequence[ConvSpec]) -> nn.Sequential:
    return nn.Sequential(*(ConvBNReLU(*spec) for spec in specs))


def _is_pointwise(layer: nn.Module) -> bool:
    conv = layer.conv if isinstance(layer, ConvBNReLU) else None
    return conv is not None and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


class Branching(nn.Module):
    """Conv branches on one input. For inference, ``merge_pointwise_entries`` runs the 1×1 convs that open
    several branches as one wider conv (one large matrix product instead of several small ones) whose output is
    split among them."""

    def __init__(self, branches: Sequence[Sequence[ConvSpec]]):
        super().__init__()
        self.branches = nn.ModuleList(_branch(specs) for specs in branches)
        self.entry: ConvBNReLU | None = None
        self.entry_widths: list[int] = []  # output channels of each merged branch's opening conv
        self.entry_branches: list[bool] = [False] * len(self.branches)  # which branches the entry opens

    def run_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.entry is None:
            return [branch(x) for branch in self.branches]
        parts = iter(torch.split(self.entry(x), self.entry_widths, dim=1))
        return [branch(next(parts)) if merged else branch(x)
                for branch, merged in zip(self.branches, self.entry_branches)]

    def merge_pointwise_entries(self) -> None:
        """Merge the opening 1×1 convs (batch norm already folded into them) of two or more branches."""
        openers = [index for index, branch in enumerate(self.branches) if _is_pointwise(branch[0])]
        if len(openers) < 2 or self.entry is not None:
            return
        convs = [self.branches[index][0].conv for index in openers]
        if any(not isinstance(self.branches[index][0].bn, nn.Identity) for index in openers):
            raise ValueError("fold batch norm into the convs (fold_batchnorm) before merging them")
        self.entry_widths = [conv.out_channels for conv in convs]
        self.entry = ConvBNReLU(convs[0].in_channels, sum(self.entry_widths), 1)
        self.entry.conv = nn.Conv2d(convs[0].in_channels, sum(self.entry_widths), 1)
        self.entry.bn = nn.Identity()
        with torch.no_grad():
            self.entry.conv.weight.copy_(torch.cat([conv.weight for conv in convs]))
            self.entry.conv.bias.copy_(torch.cat([conv.bias for conv in convs]))
        for index in openers:
            self.branches[index][0] = nn.Identity()
            self.entry_branches[index] = True


class InceptionResidual(Branching):
    """``ReLU(x + scale · project(cat(branch(x) for each branch)))``; ``relu=False`` for the network's last."""

    def __init__(self, channels: int, branches: Sequence[Sequence[ConvSpec]], scale: float, relu: bool = True):
        super().__init__(branches)
        self.project = nn.Conv2d(sum(specs[-1][1] for specs in branches), channels, 1)
        self.scale = scale
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat(self.run_branches(x), dim=1)
        out = torch.add(x, self.project(mixed), alpha=self.scale)
        return F.relu(out, inplace=True) if self.relu else out


class Reduction(Branching):
    """``cat(branch(x) for each branch, maxpool3x3/2(x))``: halves the map, widens the channels."""

    def __init__(self, branches: Sequence[Sequence[ConvSpec]]):
        super().__init__(branches)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.run_branches(x) + [self.pool(x)], dim=1)


def _block35(scale: float) -> InceptionResidual:
    return InceptionResidual(256, [
        [_spec(256, 32, 1)],
        [_spec(256, 32, 1), _spec(32, 32, 3, 1, 1)],
        [_spec(256, 32, 1), _spec(32, 32, 3, 1, 1), _spec(32, 32, 3, 1, 1)],
    ], scale)


def _block17(scale: float) -> InceptionResidual:
    return InceptionResidual(896, [
        [_spec(896, 128, 1)],
        [_spec(896, 128, 1), _spec(128, 128, (1, 7), 1, (0, 3)), _spec(128, 128, (7, 1), 1, (3, 0))],
    ], scale)


def _block8(scale: float, relu: bool = True) -> InceptionResidual:
    return InceptionResidual(FEATURE_CHANNELS, [
        [_spec(FEATURE_CHANNELS, 192, 1)],
        [_spec(FEATURE_CHANNELS, 192, 1), _spec(192, 192, (1, 3), 1, (0, 1)), _spec(192, 192, (3, 1), 1, (1, 0))],
    ], scale, relu)


# (count, residual scale) of each stage, as in the Inception-ResNet paper
STAGE35 = (5, 0.17)
STAGE17 = (10, 0.10)
STAGE8 = (5, 0.20)


@register_model("inception_resnet_v1")
class InceptionResnetV1(nn.Module):
    """(B, 3, 160, 160) normalised images → (B, 512) embeddings, or (B, num_classes) logits if ``classify``.
    Any input side ≥ 75 px works (the pooling is adaptive); the published weights expect 160."""

    input_size = INPUT_SIZE
    output_names = ("embeddings",)

    def __init__(self, classify: bool = False, num_classes: int | None = None, dropout: float = DROPOUT):
        super().__init__()
        if classify and not num_classes:
            raise ConfigError("classify=True needs num_classes (the number of identities)")
        self.stem = nn.Sequential(
            ConvBNReLU(3, 32, 3, stride=2),  # (B, 32, 79, 79) at 160 px
            ConvBNReLU(32, 32, 3),  # (B, 32, 77, 77)
            ConvBNReLU(32, 64, 3, padding=1),
            nn.MaxPool2d(3, stride=2),  # (B, 64, 38, 38)
            ConvBNReLU(64, 80, 1),
            ConvBNReLU(80, 192, 3),  # (B, 192, 36, 36)
            ConvBNReLU(192, 256, 3, stride=2),  # (B, 256, 17, 17)
        )
        self.stage35 = nn.Sequential(*(_block35(STAGE35[1]) for _ in range(STAGE35[0])))
        self.reduction_a = Reduction([  # (B, 384 + 256 + 256 = 896, 8, 8)
            [_spec(256, 384, 3, 2)],
            [_spec(256, 192, 1), _spec(192, 192, 3, 1, 1), _spec(192, 256, 3, 2)],
        ])
        self.stage17 = nn.Sequential(*(_block17(STAGE17[1]) for _ in range(STAGE17[0])))
        self.reduction_b = Reduction([  # (B, 384 + 256 + 256 + 896 = 1792, 3, 3)
            [_spec(896, 256, 1), _spec(256, 384, 3, 2)],
            [_spec(896, 256, 1), _spec(256, 256, 3, 2)],
            [_spec(896, 256, 1), _spec(256, 256, 3, 1, 1), _spec(256, 256, 3, 2)],
        ])
        self.stage8 = nn.Sequential(*(_block8(STAGE8[1]) for _ in range(STAGE8[0])), _block8(1.0, relu=False))
        self.dropout = nn.Dropout(dropout)
        self.embedding = nn.Linear(FEATURE_CHANNELS, EMBEDDING_DIM, bias=False)
        self.embedding_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS)
        self.classifier = nn.Linear(EMBEDDING_DIM, num_classes) if classify else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage8(self.reduction_b(self.stage17(self.reduction_a(self.stage35(self.stem(x))))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 1792)
        x = self.embedding_bn(self.embedding(self.dropout(x)))  # (B, 512)
        return self.classifier(x) if self.classifier is not None else x


def fuse_for_inference(model: InceptionResnetV1, channels_last: bool = True) -> InceptionResnetV1:
    """An eval-mode copy for inference: every batch norm folded into the layer before it (convs and the
    embedding linear), the 1×1 convs opening a block's branches merged into one, ``channels_last`` memory format
    if asked. Same outputs to ~1e-7. On real LFW chips, 2 CPU threads, batch 32, five runs on a busy machine
    measured 1.0-1.33× facenet-pytorch's speed (median 1.15×; NCHW: 0.8-1.4×, median 1.1×):
    bench/bench_embedders.py."""
    fused = fold_batchnorm(model)
    fused.embedding = torch.nn.utils.fusion.fuse_linear_bn_eval(fused.embedding, fused.embedding_bn)
    fused.embedding_bn = nn.Identity()
    for module in fused.modules():
        if isinstance(module, Branching):
            module.merge_pointwise_entries()
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


# -- facenet-pytorch's state_dicts ----------------------------------------------------------------------------
_FACENET_STEM = {"conv2d_1a": 0, "conv2d_2a": 1, "conv2d_2b": 2, "conv2d_3b": 4, "conv2d_4a": 5, "conv2d_4b": 6}
_FACENET_RENAMES = (  # applied in order to each key of a facenet-pytorch state_dict
    (re.compile(r"^conv2d_(1a|2a|2b|3b|4a|4b)\."), lambda m: f"stem.{_FACENET_STEM[m.group(0)[:-1]]}."),
    (re.compile(r"^repeat_1\."), "stage35."),
    (re.compile(r"^repeat_2\."), "stage17."),
    (re.compile(r"^repeat_3\."), "stage8."),
    (re.compile(r"^block8\."), f"stage8.{STAGE8[0]}."),
    (re.compile(r"^mixed_6a\."), "reduction_a."),
    (re.compile(r"^mixed_7a\."), "reduction_b."),
    (re.compile(r"\.branch(\d+)\.(conv|bn)\."), r".branches.\1.0.\2."),  # a one-conv branch is a bare conv there
    (re.compile(r"\.branch(\d+)\.(\d+)\."), r".branches.\1.\2."),
    (re.compile(r"\.conv2d\."), ".project."),
    (re.compile(r"^last_linear\."), "embedding."),
    (re.compile(r"^last_bn\."), "embedding_bn."),
    (re.compile(r"^logits\."), "classifier."),
)


def facenet_key(key: str) -> str:
    """Our name for a facenet-pytorch ``InceptionResnetV1`` state_dict key."""
    for pattern, replacement in _FACENET_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def convert_facenet_state(state: dict) -> dict:
    """A facenet-pytorch state_dict under our names (a state_dict already in our names passes through)."""
    return {facenet_key(key): value for key, value in state.items()}


def load_state(model: InceptionResnetV1, state: dict, source: str) -> InceptionResnetV1:
    """Load facenet-pytorch's or our state_dict; the classifier is dropped unless ``model`` classifies."""
    state = convert_facenet_state(state)
    if model.classifier is None:
        state = {key: value for key, value in state.items() if not key.startswith("classifier.")}
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{source} is not an InceptionResnetV1 (FaceNet) state_dict of facenet-pytorch or of this project: "
            f"{mismatch}")
    model.load_state_dict(state)
    return model


def published_weights_file(name: str) -> Path:
    """facenet-pytorch's ``vggface2`` / ``casia-webface`` file in the torch hub cache, downloaded if absent."""
    if name not in PUBLISHED_WEIGHTS:
        raise InputError(f"unknown FaceNet weights {name!r}: pass a file path or one of {sorted(PUBLISHED_WEIGHTS)}")
    url = PUBLISHED_WEIGHTS[name]
    path = Path(torch.hub.get_dir()).parent / "checkpoints" / os.path.basename(url)  # facenet-pytorch's cache
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as error:  # no network, proxy refusal, disk full: all end the same way
        raise FileNotFoundError(
            f"FaceNet weights {name!r} are not available offline and the download failed "
            f"({type(error).__name__}: {error}). Download {url} on a machine with internet and put it at {path}, "
            f"or pass --weights PATH to that file.") from None
    return path


def load_facenet(weights: str | Path | None = None, classify: bool = False,
                 num_classes: int | None = None) -> Tuple[InceptionResnetV1, str]:
    """(model, weights hash): random init (``None``), facenet-pytorch's ``"vggface2"`` / ``"casia-webface"``, or a
    file holding facenet-pytorch's or our state_dict / checkpoint."""
    if weights is None:
        model = InceptionResnetV1(classify, num_classes)
        return model, state_sha256(model)
    path = published_weights_file(str(weights)) if str(weights) in PUBLISHED_WEIGHTS else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"FaceNet weights file not found: {path}. Pass a facenet-pytorch .pt file, a "
                                f"checkpoint of ours, or one of {sorted(PUBLISHED_WEIGHTS)}")
    state = model_state_from_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    if classify and num_classes is None:
        classes = convert_facenet_state(state).get("classifier.weight")
        num_classes = None if classes is None else classes.shape[0]
    return load_state(InceptionResnetV1(classify, num_classes), state, str(path)), file_sha256(path)


@register_embedder("facenet")
def facenet_embedder(weights: str | Path | None = None, device: str | torch.device = "cpu",
                     batch_size: int = 64, fuse: bool = True) -> Embedder:
    """FaceNet embedder: 160-px chips aligned to ``FACENET_TEMPLATE_160``, ``(x - 127.5) / 128``, 512-d.
    ``fuse``: ``fuse_for_inference`` (batch norm folded, 1×1 branch openers merged)."""
    model, weights_hash = load_facenet(weights)
    model = fuse_for_inference(model) if fuse else model.eval()
    return Embedder("facenet", model, FACENET_ALIGNMENT, mean=(INPUT_MEAN,) * 3, std=(INPUT_STD,) * 3,
                    weights_hash=weights_hash, device=device, batch_size=batch_size)
