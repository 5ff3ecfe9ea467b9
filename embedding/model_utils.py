"""What the embedding networks share at inference: batch norm folded into convolutions, and a hash of weights
that exist only in memory (random initialisation) so cache keys never mix two different networks."""
from __future__ import annotations

import copy
import hashlib

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in which every unit holding a ``conv`` (``nn.Conv2d``) followed by a
    ``bn`` (``nn.BatchNorm2d``) has the batch norm folded into the convolution and replaced by ``nn.Identity``.
    The units' ``forward`` must apply ``self.bn(self.conv(x))``; ``model`` itself is left untouched."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = nn.Identity()
    return folded


def state_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state_dict (names, shapes and values), for weights that have no file."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
