"""Registries: each package registers what it provides when it is imported (``detection/__init__.py`` imports its
detector packages, as ``timm.models`` and torchvision's ``register_model`` do); the composition root, ``pipeline``,
imports the packages and looks things up by name. ``common`` lists no module of any package.

Three registries: ``MODELS`` (``nn.Module`` classes or factories, e.g. ``"blazeface_front"``), ``DETECTORS``
(a ``DetectorSpec`` per detector) and ``EMBEDDERS`` (factories ``(weights=None, device="cpu", ...) -> Embedder``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

import torch.nn as nn

from common.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """A name no package registered; the message lists the close matches and every registered name."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Names → things of one ``kind``: ``register`` (directly or as a decorator), ``get`` (unknown names raise
    ``UnknownNameError`` with a did-you-mean), ``names``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None):
        """``registry.register("x", thing)``, or ``@registry.register("x")`` above a class or function."""
        def add(thing: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = thing
            return thing

        return add if item is None else add(item)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}{hint}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector package declares about itself.

    ``defaults``: its config schema with default values (the package's ``config.py``); ``from_config(cfg, device)``:
    the photo detector (``detect(list of RGB arrays) -> list[Detections]``) a config describes; ``train(cfg,
    **parts)``: its training run, given the injected ``parts`` it names in ``train_parts`` (e.g. YOLO's
    ``teacher_factory``); ``calibration_set``: ``key=value`` overrides that loosen its thresholds so a score
    calibration also sees low-scoring misses."""

    defaults: dict
    from_config: Callable[[dict, str], Any]
    train: Callable[..., Any] | None = None
    train_parts: tuple[str, ...] = ()
    calibration_set: tuple[str, ...] = ()


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
DETECTORS: Registry[DetectorSpec] = Registry("detector")
EMBEDDERS: Registry[Callable[..., Any]] = Registry("embedder")


def register_model(name: str):
    """Decorator: ``@register_model("blazeface_front")`` on an ``nn.Module`` class or factory."""
    return MODELS.register(name)


def build_model(name: str, **kwargs) -> nn.Module:
    """A registered network (random weights): ``build_model("mtcnn_pnet")``."""
    return MODELS.get(name)(**kwargs)


def register_embedder(name: str):
    """Decorator: ``@register_embedder("facenet")`` on a factory ``(weights=None, device="cpu") -> Embedder``."""
    return EMBEDDERS.register(name)
