"""Models register themselves by name and are built with ``build_model(name, **cfg)``."""
from __future__ import annotations

import importlib
from typing import Callable, Dict

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_DETECTORS: Dict[str, Callable] = {}
_EMBEDDERS: Dict[str, Callable] = {}

# Importing these runs their @register_* decorators; a package adds its modules here.
MODEL_MODULES = (
    "detection.blazeface.detector", "detection.blazeface.model",
    "detection.mtcnn.detector", "detection.mtcnn.model",
    "detection.retinaface.detector", "detection.retinaface.model",
    "detection.yolo.detector", "detection.yolo.model",
    "embedding.dlib_resnet", "embedding.facenet", "embedding.mobilefacenet",
)


def _register(table: dict, kind: str, name: str):
    def wrap(factory):
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = factory
        return factory

    return wrap


def register_model(name: str):
    """Decorator: ``@register_model("blazeface_front")`` on an ``nn.Module`` class or factory."""
    return _register(_MODELS, "model", name)


def register_detector(name: str):
    """Decorator: ``@register_detector("blazeface")`` on a factory of photo-in, ``Detections``-out detectors."""
    return _register(_DETECTORS, "detector", name)


def register_embedder(name: str):
    """Decorator: ``@register_embedder("facenet")`` on a factory ``(weights=None, device="cpu") -> Embedder``."""
    return _register(_EMBEDDERS, "embedder", name)


def _import_model_packages() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


def available_models() -> list[str]:
    _import_model_packages()
    return sorted(_MODELS)


def _build(table: dict, kind: str, name: str, cfg: dict):
    _import_model_packages()
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    return table[name](**cfg)


def build_model(name: str, **cfg) -> nn.Module:
    return _build(_MODELS, "model", name, cfg)


def available_detectors() -> list[str]:
    _import_model_packages()
    return sorted(_DETECTORS)


def build_detector(name: str, **cfg):
    """A ready detector: ``build_detector("blazeface", weights=..., device="cpu").detect(images)``."""
    return _build(_DETECTORS, "detector", name, cfg)


def available_embedders() -> list[str]:
    _import_model_packages()
    return sorted(_EMBEDDERS)


def build_embedder(name: str, **cfg):
    """A ready embedder: ``build_embedder("facenet", weights=..., device="cpu").embed_chips(chips)``."""
    return _build(_EMBEDDERS, "embedder", name, cfg)
