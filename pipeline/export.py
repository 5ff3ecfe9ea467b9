"""ONNX export of any detector's, embedder's or registered model's networks, by name.

    python -m pipeline.export --model mtcnn --out onnx/                 # a detector's networks, its config's weights
    python -m pipeline.export --model retinaface --set model.backbone=resnet50 --weights R50.pth --out onnx/
    python -m pipeline.export --model dlib_resnet --out onnx/           # an embedder's network
    python -m pipeline.export --model blazeface_back --out onnx/        # any registered model (random or --weights)

The export itself (file naming by a hash of the weights, dynamic axes, the onnxruntime runner) is
``common.export``; ``infer.py --backend onnxruntime`` reads the same cache.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from common.checkpoint import model_state_from_file
from common.cli import run_cli
from common.errors import InputError
from common.export import INPUT_NAME, cached_export, net_spec, network_slots
from common.registry import build_model
from pipeline.build import build_detector, build_embedder, list_detectors, list_embedders, list_models


def networks_of(name: str, weights: str | None = None, set_items: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The networks to export for ``name``: a detector (built from its default config, ``weights`` and
    ``set_items`` overriding it), an embedder, or a registered model (random weights unless ``weights``)."""
    if name in list_detectors():
        holder = build_detector(name, set_items=set_items, **{"model.weights": weights})
    elif name in list_embedders():
        holder = build_embedder(name, weights=weights)
    elif name in list_models():
        model = build_model(name)
        if weights:
            model.load_state_dict(model_state_from_file(weights))
        return {name: model.eval()}
    else:
        raise InputError(f"nothing to export called {name!r}; detectors: {', '.join(list_detectors())}; embedders: "
                         f"{', '.join(list_embedders())}; models: {', '.join(list_models())}")
    return {role: network for _, _, role, network in network_slots(holder)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a detector (blazeface, mtcnn, retinaface, ...), an embedder "
                                                       "(facenet, mobilefacenet, dlib_resnet) or a registered model")
    parser.add_argument("--out", required=True, type=Path, help="folder for the .onnx files")
    parser.add_argument("--weights", help="weights (default: the detector config's / the embedder's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="detectors: override a key of the detector's config")
    args = parser.parse_args(argv)
    for role, model in networks_of(args.model, args.weights, args.set).items():
        spec = net_spec(model)
        path = cached_export(model, args.out)
        size = f"{spec.input_size}x{spec.input_size}" if spec.input_size else "any HxW"
        print(f"{role}: {path}  (input {INPUT_NAME} [batch, 3, {size}] → {', '.join(spec.output_names)})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
