"""dlib's 5-point landmarker read into numpy, and dlib's face chip: parity with dlib (dlib-bin, test-only) on real
photos, the parse cache, bad files, anti-aliased chips, and the dlib_resnet embedder built on them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.io import read_image
from pipeline import build_detector, build_embedder
from embedding.align import warp_chips
from embedding.dlib_landmarks import (LandmarkerAlignment, default_landmarker_file, dlib_chip_matrices,
                                      load_shape_predictor, read_shape_predictor)
from embedding.dlib_resnet import DLIB_ALIGNMENT, INPUT_SIZE
from embedding.dlib_serial import DlibFormatError
from tests.conftest import broken_copies, shared_path

dlib = pytest.importorskip("dlib", reason="dlib (pip install dlib-bin) is the parity reference")

DLIB_FACES_PHOTOS = ("2007_007763.jpg", "2008_002079.jpg", "2008_004176.jpg", "bald_guys.jpg")
LFW_PHOTOS = ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Serena_Williams/Serena_Williams_0003.jpg",
              "Colin_Powell/Colin_Powell_0010.jpg", "Tony_Blair/Tony_Blair_0021.jpg")


@pytest.fixture(scope="module")
def landmarker_file():
    try:
        return default_landmarker_file()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def predictor(landmarker_file, tmp_path_factory):
    return load_shape_predictor(landmarker_file, cache_dir=tmp_path_factory.mktemp("landmarkers"))


@pytest.fixture(scope="module")
def reference(landmarker_file):
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmarker_file))


def _dlib_points(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def test_parse_and_cache(landmarker_file, predictor, tmp_path):
    assert predictor.split_pixels.shape == (15, 500, 15, 2)  # 15 cascades of 500 depth-4 trees
    assert predictor.leaf_values.shape == (15, 500, 16, 5, 2)
    assert predictor.anchors.shape == (15, 800) and predictor.deltas.shape == (15, 800, 2)
    # the mean shape: two eyes' corners at the same height, the nose base below them, all inside the unit square
    initial = predictor.initial_shape
    assert abs(initial[0, 1] - initial[2, 1]) < 0.01 and initial[4, 1] > initial[:4, 1].max() + 0.2
    assert ((initial > 0) & (initial < 1)).all()
    first = load_shape_predictor(landmarker_file, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    cached = load_shape_predictor(landmarker_file, cache_dir=tmp_path)
    for name in ("initial_shape", "split_pixels", "split_thresholds", "leaf_values", "anchors", "deltas"):
        np.testing.assert_array_equal(getattr(cached, name), getattr(first, name))
    assert cached.file_hash == first.file_hash == predictor.file_hash
    # a damaged cache entry is parsed again, not trusted
    next(tmp_path.glob("*.npz")).write_bytes(b"not an npz")
    np.testing.assert_array_equal(load_shape_predictor(landmarker_file, cache_dir=tmp_path).leaf_values,
                                  first.leaf_values)


def test_points_match_dlib(predictor, reference):
    detector, landmarker = reference
    folder = shared_path("data", "detection", "dlib_faces")
    exact, errors = 0, []
    for name in DLIB_FACES_PHOTOS:
        image = read_image(folder / name)
        rects = list(detector(image, 1))
        ours = predictor(image, np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects]))
        theirs = np.stack([_dlib_points(landmarker(image, rect)) for rect in rects])
        # dlib stores integer points: ours, rounded, are the same pixels
        exact += int((np.floor(ours + 0.5) == theirs).all(axis=(1, 2)).sum())
        errors.append(np.abs(ours - theirs).max(axis=(1, 2)))
    errors = np.concatenate(errors)
    print(f"{len(errors)} faces: {exact} with every point on dlib's pixel; max |ours - dlib| {errors.max():.2f} px")
    assert len(errors) >= 30
    assert exact >= len(errors) - 1  # a float32 sum may round the other way once in a while
    assert errors.max() < 1.5


def test_chip_matches_dlib_get_face_chip(reference):
    detector, landmarker = reference
    lfw = shared_path("data", "lfw", "deepfunneled")
    photos = shared_path("data", "detection", "dlib_faces")
    differing, total = 0, 0
    for path in [lfw / name for name in LFW_PHOTOS] + [photos / name for name in DLIB_FACES_PHOTOS[:2]]:
        image = read_image(path)
        for rect in detector(image, 1):
            shape = landmarker(image, rect)
            theirs = dlib.get_face_chip(image, shape, size=INPUT_SIZE, padding=0.25).astype(np.int16)
            matrices = dlib_chip_matrices(_dlib_points(shape), INPUT_SIZE)
            ours = warp_chips(image, matrices, INPUT_SIZE, dlib_sampling=True).astype(np.int16)[0]
            assert np.abs(ours - theirs).max() <= 1 or (ours != theirs).mean() < 1e-3  # a sample on the edge
            differing += int((ours != theirs).sum())
            total += ours.size
            rounded = warp_chips(image, matrices, INPUT_SIZE).astype(np.int16)[0]  # OpenCV rounds: 0.5 higher
            assert 0.4 < (rounded - theirs).mean() < 0.6
    print(f"ours vs dlib.get_face_chip: {differing} of {total} values differ")
    assert total >= 15 * INPUT_SIZE ** 2 * 3 and differing / total < 1e-4


def test_embedder_matches_dlibs_pipeline(reference):
    """Our dlib_resnet embedder (MTCNN's points seed dlib's landmarker, dlib's chip) vs dlib itself on the same
    seed rectangles: the same descriptors."""
    detector, landmarker = reference
    embedder = build_embedder("dlib_resnet")
    assert isinstance(embedder.alignment, LandmarkerAlignment)
    recogniser = dlib.face_recognition_model_v1(str(default_landmarker_file().parent /
                                                    "dlib_face_recognition_resnet_model_v1.dat"))
    mtcnn = build_detector("mtcnn", device="cpu")
    lfw = shared_path("data", "lfw", "deepfunneled")
    images = [read_image(lfw / name) for name in LFW_PHOTOS]
    ours, theirs = [], []
    for image, detections in zip(images, mtcnn.detect(images)):
        landmarks = detections.landmarks[:1].numpy()
        ours.append(embedder.embed_chips(embedder.alignment.align(image, landmarks)).numpy()[0])
        rect = embedder.alignment.seed_rects(landmarks)[0]
        shape = landmarker(image, dlib.rectangle(*(int(round(v)) for v in rect)))
        chip = dlib.get_face_chip(image, shape, size=INPUT_SIZE, padding=0.25)
        theirs.append(np.array(recogniser.compute_face_descriptor(chip)))
    ours, theirs = np.array(ours), np.array(theirs)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    print(f"cosine ours vs dlib's pipeline: min {cosine.min():.5f}")
    assert cosine.min() >= 0.9999  # the same chips: dlib's points, rounded as dlib stores them
    # the landmarker alignment, and where it is seeded, are part of the cache key
    template = build_embedder("dlib_resnet", align="template")
    assert template.alignment == DLIB_ALIGNMENT and template.cache_key != embedder.cache_key
    moved = dataclasses.replace(embedder.alignment, seed_rect=(4.0, 3.0, 135.0, 140.0))
    assert moved.key != embedder.alignment.key and moved.landmarker is embedder.alignment.landmarker


def test_not_a_shape_predictor(tmp_path, landmarker_file):
    text, truncated = broken_copies(tmp_path, landmarker_file, 200_000)
    with pytest.raises(DlibFormatError, match=r"notes\.dat: invalid integer control byte .*shape predictor"):
        read_shape_predictor(text)
    with pytest.raises(DlibFormatError, match=r"truncated\.dat: .*(ends early|more values wanted)"):
        read_shape_predictor(truncated)
    network = landmarker_file.parent / "dlib_face_recognition_resnet_model_v1.dat"  # dlib, but a network
    with pytest.raises(DlibFormatError, match=r"resnet_model_v1\.dat: "):
        read_shape_predictor(network)
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        read_shape_predictor(tmp_path / "missing.dat")
    with pytest.raises(ValueError, match="align 'eyes'"):
        build_embedder("dlib_resnet", align="eyes")


def test_large_faces_are_shrunk_without_aliasing():
    """A face 4× the chip's size: bilinear sampling alone would pick single stripes of a 1-px pattern; the
    pyramid averages them, as dlib's extract_image_chip does."""
    stripes = np.zeros((800, 800, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    shrink = np.array([[0.25, 0, 0], [0, 0.25, 0]])  # photo → chip: the whole photo into a 200-px chip
    chip = warp_chips(stripes, shrink[None], 200)[0].astype(np.float64)
    inner = chip[20:-20, 20:-20]
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3
    # a chip wholly outside the photo is black; one partly outside is black there
    outside = np.array([[1.0, 0, -2000], [0, 1.0, 0]])
    assert warp_chips(stripes, outside[None], 50).max() == 0
    partly = np.array([[0.25, 0, 100], [0, 0.25, 0]])  # the photo lands at chip x 100..300
    assert warp_chips(stripes, partly[None], 200)[0][:, :95].max() == 0


def test_trained_checkpoint_keeps_the_landmarker_alignment(tmp_path):
    from embedding.training import alignment_from_record, alignment_record
    from common.checkpoint import CheckpointError

    alignment = build_embedder("dlib_resnet").alignment
    record = alignment_record(alignment)
    rebuilt = alignment_from_record(record, "run.pth")
    assert isinstance(rebuilt, LandmarkerAlignment) and rebuilt.key == alignment.key
    image = read_image(shared_path("data", "lfw", "deepfunneled", LFW_PHOTOS[0]))
    points = np.array([[[106.1, 113.4], [144.3, 114.1], [117.8, 139.0], [110.0, 157.4], [143.5, 158.6]]])
    np.testing.assert_array_equal(rebuilt.align(image, points), alignment.align(image, points))
    with pytest.raises(CheckpointError, match="landmarker with SHA-256 0000"):
        alignment_from_record({**record, "landmarker_sha256": "0" * 64}, "run.pth")
    assert type(alignment_from_record(alignment_record(DLIB_ALIGNMENT), "run.pth")) is type(DLIB_ALIGNMENT)
