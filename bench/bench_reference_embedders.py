"""Faces per second of the two imported embedders, our PyTorch module against the runtime its weights came from,
on the same chips in one run: omz0095 (face-reidentification-retail-0095) against OpenVINO running the IR, and
sface against onnxruntime running OpenCV Zoo's int8 block-quantised ONNX file.

    python -m bench.bench_reference_embedders [--chips 32] [--threads 2] [--repeats 5] [--out result.json]

Chips: the central face of ``--chips`` LFW photos (View 2's pairs, ``bench.bench_embedders.lfw_photo_paths``),
aligned by MTCNN's landmarks with each embedder's own alignment, as tests/test_omz_reid.py and tests/test_sface.py
do. Every runner goes from the same (N, S, S, 3) uint8 RGB chips to the (N, D) raw embeddings, all N as one batch,
its own input conversion included:

- ``torch``: the registered embedder's ``model`` on ``Embedder.preprocess``'s output, in inference mode, as
  ``Embedder.embed_chips`` runs it (its input has channels_last strides, since the chips are NHWC);
  ``torch_channels_last``: the same with the module's weights converted to channels_last too.
- ``openvino``: the IR compiled for the CPU with f32 inference precision (OpenVINO's default on a CPU with bf16
  support is bf16, 0.07 off), fed BGR 0-255 as the IR takes; ``onnxruntime``: the ONNX file with its 29 stale
  graph inputs removed in memory (onnxruntime refuses them). Both files fix the batch axis at 1: these runners
  set it to N (OpenVINO's ``reshape``; the ONNX graph's input and output shapes, its recorded intermediate
  shapes dropped), the ``*_per_chip`` runners run the files as they are, one chip per call.

Threads: ``torch.set_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS``, onnxruntime's ``intra_op_num_threads``,
all ``--threads``. Each figure is the best of ``--repeats`` passes, the runners alternating
(``bench.timing.best_seconds``). Before timing, every runner's embeddings are checked against the batched
reference's (max absolute difference; the run stops above ``MAX_ABS_DIFF``).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import torch

from bench.bench_embedders import lfw_photo_paths
from bench.timing import best_seconds, keep_freed_memory_in_heap
from common.config import existing_path
from common.io import read_image
from embedding import omz_reid, sface
from embedding.embedder import Embedder
from pipeline import build_detector, build_embedder

LFW_PHOTO_CENTRE = 125.0  # deep funnelling centres the photo's person in the 250-px photo
SFACE_IMAGE_INPUT = "data"  # the ONNX file's real input; the other graph inputs without an initializer are stale
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # the parity tests' precision; INFERENCE_NUM_THREADS added
ORT_QUIET = 3  # not onnxruntime's warning per initializer that is also listed as a graph input
# The parity tests' bound on the raw embeddings (tests/test_sface.py's RAW_ATOL; test_omz_reid.py's is 1e-5):
# both measured within 4e-6 of their reference on 16 chips.
MAX_ABS_DIFF = 2e-5
REFERENCES = {"omz0095": "openvino", "sface": "onnxruntime"}

Runner = Callable[[], np.ndarray]


def aligned_chips(count: int, embedders: Dict[str, Embedder]) -> Dict[str, np.ndarray]:
    """{embedder name: (count, S, S, 3) uint8 chips}: each photo's central face, aligned by MTCNN's landmarks with
    the embedder's own alignment."""
    images = [read_image(path) for path in lfw_photo_paths(count)]
    faces = []  # (photo, (1, 5, 2) landmarks)
    for image, detections in zip(images, build_detector("mtcnn", device="cpu").detect(images)):
        if len(detections.scores):
            centres = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2  # (F, 2)
            face = int(torch.argmin((centres - LFW_PHOTO_CENTRE).norm(dim=1)))
            faces.append((image, detections.landmarks[face:face + 1].numpy()))
    if len(faces) < count:
        raise RuntimeError(f"MTCNN found a face in {len(faces)} of the {count} LFW photos")
    return {name: np.concatenate([embedder.alignment.align(image, landmarks) for image, landmarks in faces])
            for name, embedder in embedders.items()}


def torch_runners(embedder: Embedder, chips: np.ndarray) -> Dict[str, Runner]:
    def runner(network: torch.nn.Module) -> Runner:
        def run() -> np.ndarray:
            with torch.inference_mode():
                return network(embedder.preprocess(chips)).numpy()
        return run

    channels_last = copy.deepcopy(embedder.model).to(memory_format=torch.channels_last)
    return {"torch": runner(embedder.model), "torch_channels_last": runner(channels_last)}


def openvino_runners(xml: Path, chips: np.ndarray, threads: int) -> Dict[str, Runner]:
    core, config = ov.Core(), {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": threads}
    per_chip = core.compile_model(str(xml), "CPU", config)
    model = core.read_model(str(xml))
    model.reshape([len(chips), 3, *chips.shape[1:3]])
    batched = core.compile_model(model, "CPU", config)

    def pixels() -> np.ndarray:  # (N, 3, S, S) BGR 0-255, as the IR takes
        return np.ascontiguousarray(chips[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)

    return {"openvino": lambda: batched(pixels())[0].reshape(len(chips), -1),
            "openvino_per_chip": lambda: np.concatenate([per_chip(chip[None])[0].reshape(1, -1) for chip in pixels()])}


def onnxruntime_runners(path: Path, chips: np.ndarray, threads: int) -> Dict[str, Runner]:
    model = onnx.load(str(path))
    graph = model.graph
    backed = {tensor.name for tensor in graph.initializer}
    for item in [item for item in graph.input if item.name not in backed and item.name != SFACE_IMAGE_INPUT]:
        graph.input.remove(item)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = ORT_QUIET

    def session() -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    per_chip = session()
    image_input = next(item for item in graph.input if item.name == SFACE_IMAGE_INPUT)
    for item in (image_input, *graph.output):
        item.type.tensor_type.shape.dim[0].dim_value = len(chips)
    del graph.value_info[:]  # the intermediate shapes recorded for a batch of 1
    batched = session()

    def pixels() -> np.ndarray:  # (N, 3, S, S) RGB 0-255: the file's input
        return np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32)

    return {"onnxruntime": lambda: batched.run(None, {SFACE_IMAGE_INPUT: pixels()})[0],
            "onnxruntime_per_chip": lambda: np.concatenate([per_chip.run(None, {SFACE_IMAGE_INPUT: chip[None]})[0]
                                                            for chip in pixels()])}


def runners(name: str, embedder: Embedder, chips: np.ndarray, threads: int) -> Dict[str, Runner]:
    ours = torch_runners(embedder, chips)
    if name == "omz0095":
        return {**ours, **openvino_runners(Path(existing_path(omz_reid.DEFAULT_WEIGHTS)), chips, threads)}
    return {**ours, **onnxruntime_runners(sface.resolve_weights(None), chips, threads)}


def bench(chips: int, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    malloc_tuned = keep_freed_memory_in_heap()
    result = {"chips": chips, "threads": threads, "repeats": repeats, "malloc_tuned": malloc_tuned,
              "versions": {"torch": torch.__version__, "openvino": ov.__version__, "onnxruntime": ort.__version__},
              "faces_per_s": {}, "max_abs_diff": {}}
    embedders = {name: build_embedder(name) for name in REFERENCES}
    for name, faces in aligned_chips(chips, embedders).items():
        runs = runners(name, embedders[name], faces, threads)
        reference = runs[REFERENCES[name]]()
        differences = {runner: float(np.abs(run() - reference).max()) for runner, run in runs.items()
                       if runner != REFERENCES[name]}
        if max(differences.values()) > MAX_ABS_DIFF:
            raise SystemExit(f"{name}: the runners disagree with {REFERENCES[name]} by {differences}: fix the model "
                             "before timing it")
        seconds = best_seconds(runs, repeats, warmup=1)
        result["faces_per_s"][name] = {runner: chips / value for runner, value in seconds.items()}
        result["max_abs_diff"][name] = differences
    return result


def print_table(result: dict) -> None:
    print(f"{result['chips']} chips as one batch, {result['threads']} threads, best of {result['repeats']}")
    print(f"{'embedder':9s} {'runner':21s} {'faces/s':>8s} {'vs ref':>7s} {'max |diff|':>10s}")
    for name, rates in result["faces_per_s"].items():
        reference = REFERENCES[name]
        for runner, rate in rates.items():
            difference = result["max_abs_diff"][name].get(runner)
            shown = "(ref)" if difference is None else f"{difference:.1e}"
            print(f"{name:9s} {runner:21s} {rate:8.1f} {rate / rates[reference]:6.2f}x {shown:>10s}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=32, help="LFW faces, timed as one batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    result = bench(args.chips, args.threads, args.repeats)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
