"""CPU throughput of the embedders: our InceptionResnetV1 (FaceNet) against facenet-pytorch's in the same run, and
MobileFaceNet; optionally re-measure FaceNet's alignment template.

    python -m bench.bench_embedders [--threads 2] [--batch 32] [--repeats 5] [--out result.json]
    python -m bench.bench_embedders --measure-template 600

Both FaceNets hold the same (random) weights and are checked to give the same embeddings; ours runs as the
Embedder runs it (``fuse_for_inference``: batch norm folded, 1×1 branch openers merged), the unfused and
NCHW variants show where the gain comes from. Figures are the best of ``--repeats`` timed passes, the
runners alternating (bench/bench_blazeface.py's ``best_seconds``). Inputs are real LFW box crops: on
``torch.randn`` inputs facenet-pytorch's network ran 1.4-2× slower than on real chips while ours did not, which
flatters the ratio.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.bench_blazeface import best_seconds, keep_freed_memory_in_heap
from common.io import read_image
from embedding import facenet, mobilefacenet
from embedding.align import box_crop_landmarks, margin_crop, margin_crop_windows
from pipeline import build_detector

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
LFW_PHOTO_SIDE = 250
LFW_FACE_BOX = (75.0, 70.0, 175.0, 185.0)  # where deep funnelling puts the face in a 250-px LFW photo
IDENTICAL_ATOL = 1e-4  # max |difference| of the L2-normalised embeddings of the two FaceNets


def lfw_photo_paths(count: int) -> list[Path]:
    """``count`` photos of View 2's same-person pairs, spread evenly over the sorted list."""
    lines = (LFW / "pairs.txt").read_text().split("\n")[1:]
    names = sorted({(parts[0], int(parts[1])) for parts in map(str.split, lines) if len(parts) == 3})
    step = max(1, len(names) // count)
    return [LFW / "deepfunneled" / name / f"{name}_{number:04d}.jpg" for name, number in names[::step][:count]]


def lfw_chips(count: int, size: int) -> torch.Tensor:
    """(count, 3, size, size) float chips normalised as both embedders expect, from fixed LFW face boxes."""
    photos = [read_image(path) for path in lfw_photo_paths(count)]
    chips = np.concatenate([margin_crop(photo, np.array([LFW_FACE_BOX]), size) for photo in photos])
    return (torch.from_numpy(chips).permute(0, 3, 1, 2).float() - facenet.INPUT_MEAN) / facenet.INPUT_STD


def macs_and_params(model: torch.nn.Module, size: int) -> tuple[float, int]:
    """(millions of multiply-accumulates per image, parameters)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2e6, sum(p.numel() for p in model.parameters())


def runner(model: torch.nn.Module, inputs: torch.Tensor):
    def run():
        with torch.inference_mode():
            return model(inputs)
    return run


def bench(threads: int, batch: int, repeats: int) -> dict:
    from facenet_pytorch import InceptionResnetV1 as FacenetPytorchModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    theirs = FacenetPytorchModel().eval()
    ours = facenet.load_state(facenet.InceptionResnetV1(), theirs.state_dict(), "facenet-pytorch (random)").eval()
    fused = facenet.fuse_for_inference(ours)  # as the Embedder runs it
    chips = lfw_chips(batch, facenet.INPUT_SIZE)
    with torch.inference_mode():
        difference = (theirs(chips) - torch.nn.functional.normalize(fused(chips))).abs().max().item()
    if difference > IDENTICAL_ATOL:
        raise SystemExit(f"the two FaceNets disagree by {difference:.2e}: fix the model before timing it")
    small = mobilefacenet.MobileFaceNet()
    small_chips = lfw_chips(batch, mobilefacenet.INPUT_SIZE)
    seconds = best_seconds({
        "facenet_pytorch": runner(theirs, chips),
        "ours_unfused": runner(ours, chips),
        "ours_fused_nchw": runner(facenet.fuse_for_inference(ours, channels_last=False), chips),
        "ours_fused_channels_last": runner(fused, chips),
        "mobilefacenet_fused_channels_last": runner(mobilefacenet.fuse_for_inference(small), small_chips),
        "mobilefacenet_fused_nchw": runner(mobilefacenet.fuse_for_inference(small, channels_last=False), small_chips),
    }, repeats)
    result = {"threads": threads, "batch": batch, "max_abs_embedding_difference": difference,
              "images_per_second": {name: batch / value for name, value in seconds.items()},
              "speedup_vs_facenet_pytorch": {name: seconds["facenet_pytorch"] / value
                                             for name, value in seconds.items()}}
    for name, model, size in (("inception_resnet_v1", ours, facenet.INPUT_SIZE),
                              ("mobilefacenet", small, mobilefacenet.INPUT_SIZE)):
        macs, params = macs_and_params(model.eval(), size)
        result[name] = {"input": size, "params": params, "mmacs": round(macs, 1)}
    return result


def measure_template(count: int, size: int = facenet.INPUT_SIZE, margin: float = 0.0) -> dict:
    """Mean MTCNN landmarks inside facenet-pytorch's ``size``-px ``margin`` box crop, over ``count`` LFW photos
    (the face nearest each photo's centre): the template that ``facenet.FACENET_TEMPLATE_160`` records."""
    photos = [read_image(path) for path in lfw_photo_paths(count)]
    points = []
    for photo, found in zip(photos, build_detector("mtcnn", device="cpu").detect(photos)):
        if len(found.scores) == 0:
            continue
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2  # (N, 2)
        face = int((centres - LFW_PHOTO_SIDE / 2).norm(dim=1).argmin())
        windows = margin_crop_windows(found.boxes[face:face + 1], size, margin, *photo.shape[:2])
        points.append(box_crop_landmarks(found.landmarks[face:face + 1], windows, size)[0])
    points = np.stack(points)  # (faces, 5, 2)
    return {"faces": len(points), "size": size, "margin": margin, "mean": points.mean(0).round(2).tolist(),
            "std": points.std(0).round(2).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure-template", type=int, metavar="PHOTOS",
                        help="instead of timing, print FaceNet's template measured on this many LFW photos")
    parser.add_argument("--margin", type=float, default=0.0, help="with --measure-template: crop margin, chip px")
    parser.add_argument("--out", help="also write the result here as JSON")
    args = parser.parse_args()
    keep_freed_memory_in_heap()
    if args.measure_template:
        torch.set_num_threads(args.threads)
        result = measure_template(args.measure_template, margin=args.margin)
    else:
        result = bench(args.threads, args.batch, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
