"""The bad-input corpus: every command line (train.py, evaluate.py, infer.py, attendance.py) against broken,
unusual and hostile inputs that the tests write themselves.

Each case in CASES names its command line and its expected outcome: either a clear one-line ``error: ...`` on
stderr that names the file, line or key, with exit code 2 (``common.cli.run_cli``), or a documented recovery (a
file skipped with a warning, a photo rejected with its reason, an unusual but valid image decoded by content).
No case may end in a traceback. The cases run in-process through each script's ``main`` (starting torch in a new
process per case would take minutes); ``test_one_case_per_command_line_in_a_subprocess`` runs one case of each
command line as a real process to show that stderr carries no traceback there either.

The README's figures come from this table: ``len(CASES)`` cases tried, all handled, no crashes.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli import EXIT_USAGE, run_cli
from tests.conftest import ROOT, png_header_only, shared_path

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation → the PIL transpose that turns an upright photo into the stored pixels (exif_transpose undoes it)
STORED_FOR_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
BOMB_SIDE = 100_000  # a header claiming 1e10 pixels, far over Pillow's MAX_IMAGE_PIXELS
LFW_FACE = ("data", "lfw", "deepfunneled", "Colin_Powell", "Colin_Powell_0001.jpg")
# Roster of the attendance cases: two LFW people, two photos each; the class photo shows one of them.
ROSTER_PEOPLE = ("Colin_Powell", "Tony_Blair")
CLASS_PHOTO_PERSON, CLASS_PHOTO_NUMBER = "Tony_Blair", 10
CSV_HEADER = "image_path,x1,y1,w,h,width,height"
LFW_FACE_BOX = "70,60,110,130,250,250"  # x1,y1,w,h,width,height of the face in a 250x250 LFW photo


@dataclass(frozen=True)
class Case:
    cli: str            # train | evaluate | infer | attendance
    exit_code: int
    outcome: str        # the expected outcome in words (README table)
    messages: tuple[str, ...] = ()  # substrings of stderr (the error line for exit code 2; warnings included)


CASES: dict[str, Case] = {}
_BUILDERS: dict[str, Callable] = {}


def case(name: str, cli: str, exit_code: int, outcome: str, *messages: str):
    """Register a case: ``build(env) -> (argv, check or None)``; ``check(env, stdout, stderr)`` asserts more."""
    def register(build):
        assert name not in CASES, name
        CASES[name] = Case(cli, exit_code, outcome, messages)
        _BUILDERS[name] = build
        return build
    return register


class Env:
    """A case's scratch folder and the real inputs it builds from."""

    def __init__(self, tmp: Path, enrolled_db: Callable[[], Path]):
        self.tmp = tmp
        self._enrolled_db = enrolled_db

    def path(self, name: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def face() -> Image.Image:
        with Image.open(shared_path(*LFW_FACE)) as image:
            return image.convert("RGB")

    def face_file(self, name: str) -> Path:
        path = self.path(name)
        self.face().save(path, quality=95)
        return path

    def db_copy(self) -> Path:
        """A private copy of the enrolled class database (cases write sessions into it)."""
        path = self.path("class.sqlite")
        shutil.copy(self._enrolled_db(), path)
        return path

    # ---- argv of each command line
    def infer(self, source: Path, *extra: str) -> list[str]:
        return ["--detector", "mtcnn", "--input", str(source), "--out", str(self.tmp / "dets.json"), *extra]

    def train(self, data: Path, *extra: str) -> list[str]:
        return ["--stage", "detection", "--train-data", str(data), "--device", "cpu",  # BlazeFace's defaults
                "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--no-auto-resume",
                "--checkpoint-dir", str(self.tmp / "ckpt"), "--log-dir", str(self.tmp / "logs"), *extra]

    def evaluate(self, data: Path, *extra: str) -> list[str]:
        return ["--benchmark", "detection", "--detector", "mtcnn", "--data", str(data),
                "--out", str(self.tmp / "eval.json"), "--plot", str(self.tmp / "pr.png"), *extra]

    def detections(self) -> dict:
        return json.loads((self.tmp / "dets.json").read_text(encoding="utf-8"))


def _upright_face_found(env: Env, stdout: str, stderr: str) -> None:
    """One image in the output, whose best face has image-left eye left of the right eye and both above the
    nose: the photo was decoded upright."""
    (faces,) = env.detections().values()
    assert faces, "no face found"
    best = max(faces, key=lambda face: face["score"])
    (left_eye, right_eye, nose, _, _) = best["landmarks"]
    assert best["score"] > 0.9
    assert left_eye[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1], best


def _no_faces(env: Env, stdout: str, stderr: str) -> None:
    assert list(env.detections().values()) == [[]]


# ==================================================================== images, through infer.py
@case("image_zero_byte_jpg", "infer", EXIT_USAGE, "error naming the file: empty (0 bytes)",
      "empty.jpg: file is empty")
def _(env):
    env.path("empty.jpg").write_bytes(b"")
    return env.infer(env.tmp / "empty.jpg"), None


@case("image_truncated_jpeg", "infer", EXIT_USAGE, "error naming the file: cannot decode (truncated)",
      "cut.jpg: cannot decode image")
def _(env):
    data = env.face_file("whole.jpg").read_bytes()
    env.path("cut.jpg").write_bytes(data[: len(data) // 2])
    return env.infer(env.tmp / "cut.jpg"), None


@case("image_truncated_png", "infer", EXIT_USAGE, "error naming the file: cannot decode (truncated)",
      "cut.png: cannot decode image")
def _(env):
    env.face().save(env.path("whole.png"))
    data = (env.tmp / "whole.png").read_bytes()
    env.path("cut.png").write_bytes(data[: len(data) // 2])
    return env.infer(env.tmp / "cut.png"), None


@case("image_png_header_only", "infer", EXIT_USAGE, "error naming the file: no pixel data",
      "header.png: cannot decode image")
def _(env):
    return env.infer(png_header_only(env.path("header.png"), 64, 64)), None


@case("image_text_named_jpg", "infer", EXIT_USAGE, "error naming the file: not an image",
      "notes.jpg: not an image")
def _(env):
    env.path("notes.jpg").write_text("these are my notes, not a photo\n")
    return env.infer(env.tmp / "notes.jpg"), None


@case("image_decompression_bomb_header", "infer", EXIT_USAGE, "error naming the file: refused as a bomb",
      "bomb.jpg: refused as a possible decompression bomb")
def _(env):
    return env.infer(png_header_only(env.path("bomb.jpg"), BOMB_SIDE, BOMB_SIDE)), None


@case("image_png_with_alpha", "infer", 0, "decoded (alpha dropped), face found")
def _(env):
    rgba = env.face().convert("RGBA")
    rgba.putalpha(128)
    rgba.save(env.path("alpha.png"))
    return env.infer(env.tmp / "alpha.png"), _upright_face_found


@case("image_palette_png_transparent", "infer", 0, "decoded (palette → RGB), face found")
def _(env):
    env.face().convert("P", palette=Image.Palette.ADAPTIVE).save(env.path("palette.png"), transparency=0)
    return env.infer(env.tmp / "palette.png"), _upright_face_found


@case("image_16_bit_png", "infer", 0, "decoded (16-bit grey scaled to 8 bits), face found")
def _(env):
    grey = np.asarray(env.face().convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    Image.fromarray(grey).save(env.path("deep.png"))
    with Image.open(env.tmp / "deep.png") as image:
        assert image.mode.startswith("I")
    return env.infer(env.tmp / "deep.png"), _upright_face_found


@case("image_grayscale_jpeg", "infer", 0, "decoded (grey → 3 channels), face found")
def _(env):
    env.face().convert("L").save(env.path("grey.jpg"), quality=95)
    return env.infer(env.tmp / "grey.jpg"), _upright_face_found


@case("image_cmyk_jpeg", "infer", 0, "decoded (CMYK → RGB), face found")
def _(env):
    env.face().convert("CMYK").save(env.path("print.jpg"), quality=95)
    return env.infer(env.tmp / "print.jpg"), _upright_face_found


for _orientation in STORED_FOR_ORIENTATION:
    @case(f"image_exif_orientation_{_orientation}", "infer", 0,
          f"EXIF orientation {_orientation} applied, face found upright")
    def _(env, orientation=_orientation):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        env.face().transpose(STORED_FOR_ORIENTATION[orientation]).save(env.path("phone.jpg"), exif=exif,
                                                                        quality=95)
        return env.infer(env.tmp / "phone.jpg"), _upright_face_found


@case("image_webp_named_jpg", "infer", 0, "decoded by content (WebP), face found")
def _(env):
    env.face().save(env.path("really_webp.jpg"), format="WEBP", quality=90)
    return env.infer(env.tmp / "really_webp.jpg"), _upright_face_found


@case("image_png_named_jpg", "infer", 0, "decoded by content (PNG), face found")
def _(env):
    env.face().save(env.path("really_png.jpg"), format="PNG")
    return env.infer(env.tmp / "really_png.jpg"), _upright_face_found


@case("image_animated_gif", "infer", 0, "first frame decoded, face found")
def _(env):
    face = env.face()
    face.save(env.path("anim.gif"), save_all=True, append_images=[Image.new("RGB", face.size)], duration=100)
    return env.infer(env.tmp / "anim.gif"), _upright_face_found


@case("image_one_pixel_mtcnn", "infer", 0, "decoded, no face, empty list")
def _(env):
    Image.new("RGB", (1, 1), (90, 60, 40)).save(env.path("dot.png"))
    return env.infer(env.tmp / "dot.png"), _no_faces


@case("image_one_pixel_blazeface", "infer", 0, "decoded, no face, empty list")
def _(env):
    Image.new("RGB", (1, 1), (90, 60, 40)).save(env.path("dot.png"))
    argv = env.infer(env.tmp / "dot.png")
    argv[1] = "blazeface"
    return argv, _no_faces


@case("image_one_by_2000_strip", "infer", 0, "decoded, no face, empty list")
def _(env):
    Image.new("RGB", (2000, 1), (90, 60, 40)).save(env.path("strip.png"))
    return env.infer(env.tmp / "strip.png"), _no_faces


@case("image_unicode_file_name", "infer", 0, "decoded, face found, the JSON key is the unicode path")
def _(env):
    path = env.face_file("фото Zoë 学生.jpg")

    def check(env, stdout, stderr):
        assert list(env.detections()) == [str(path)]
        _upright_face_found(env, stdout, stderr)
    return env.infer(path), check


@case("image_missing_file", "infer", EXIT_USAGE, "error naming the path: input not found",
      "input not found:", "absent.jpg")
def _(env):
    return env.infer(env.tmp / "absent.jpg"), None


@case("image_folder_with_bad_files", "infer", 0,
      "unreadable files skipped with a warning naming each; the good photo's faces written",
      "skipped", "empty.jpg: file is empty", "notes.jpg: not an image")
def _(env):
    folder = env.tmp / "photos"
    env.face_file("photos/good.jpg")
    env.path("photos/empty.jpg").write_bytes(b"")
    env.path("photos/notes.jpg").write_text("not a photo")

    def check(env, stdout, stderr):
        found = env.detections()
        assert list(found) == [str(folder / "good.jpg")] and len(found[str(folder / "good.jpg")]) >= 1
    return env.infer(folder), check


@case("image_folder_only_bad_files", "infer", EXIT_USAGE, "error: none of the images could be read",
      "none of the 2 images", "photos")
def _(env):
    env.path("photos/empty.jpg").write_bytes(b"")
    env.path("photos/notes.png").write_text("not a photo")
    return env.infer(env.tmp / "photos"), None


@case("image_folder_without_images", "infer", EXIT_USAGE, "error naming the folder: no images found",
      "no images found in", "docs")
def _(env):
    env.path("docs/readme.txt").write_text("no photos here")
    return env.infer(env.tmp / "docs"), None


# ==================================================================== annotations, through train.py / evaluate.py
def _csv(env: Env, *rows: str, name: str = "faces.csv", header: str = CSV_HEADER) -> Path:
    env.face_file("face.jpg")
    path = env.path(name)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@case("csv_missing_column", "train", EXIT_USAGE, "error at file:1 naming the missing column",
      "faces.csv:1: missing column(s) h")
def _(env):
    return env.train(_csv(env, "face.jpg,70,60,110,250,250", header="image_path,x1,y1,w,width,height")), None


@case("csv_row_with_missing_fields", "train", EXIT_USAGE, "error at file:line: expected 7 fields",
      "faces.csv:3: expected 7 fields, found 5")
def _(env):
    return env.train(_csv(env, f"face.jpg,{LFW_FACE_BOX}", "face.jpg,70,60,110,130")), None


@case("csv_negative_width", "train", EXIT_USAGE, "error at file:line: box size must be positive",
      "faces.csv:2: box size must be positive, found w=-110")
def _(env):
    return env.train(_csv(env, "face.jpg,70,60,-110,130,250,250")), None


@case("csv_zero_width", "evaluate", EXIT_USAGE, "error at file:line: box size must be positive",
      "faces.csv:2: box size must be positive, found w=0")
def _(env):
    return env.evaluate(_csv(env, "face.jpg,70,60,0,130,250,250")), None


@case("csv_nan", "train", EXIT_USAGE, "error at file:line naming the column: not a finite number",
      "faces.csv:2: column x1: 'nan' is not a finite number")
def _(env):
    return env.train(_csv(env, "face.jpg,nan,60,110,130,250,250")), None


@case("csv_text_for_number", "evaluate", EXIT_USAGE, "error at file:line naming the column: not a number",
      "faces.csv:2: column h: 'tall' is not a number")
def _(env):
    return env.evaluate(_csv(env, "face.jpg,70,60,110,tall,250,250")), None


@case("csv_box_outside_image", "train", EXIT_USAGE, "error at file:line: box lies entirely outside the image",
      "faces.csv:2: box (300, 60, 410, 190) xyxy lies entirely outside the 250x250 image")
def _(env):
    return env.train(_csv(env, "face.jpg,300,60,110,130,250,250")), None


@case("csv_box_overshooting_image", "evaluate", EXIT_USAGE, "error at file:line: box extends N px outside",
      "faces.csv:2: box (200, 60, 310, 190) xyxy extends 60 px outside the 250x250 image")
def _(env):
    return env.evaluate(_csv(env, "face.jpg,200,60,110,130,250,250")), None


@case("csv_image_size_disagrees", "train", EXIT_USAGE, "error at file:line naming the earlier line",
      "faces.csv:3: image size 300x300 of face.jpg differs from 250x250 on line 2")
def _(env):
    return env.train(_csv(env, f"face.jpg,{LFW_FACE_BOX}", "face.jpg,10,10,20,20,300,300")), None


@case("csv_duplicate_rows", "evaluate", 0, "duplicate dropped with a warning naming both lines; AP computed",
      "dropped 1 duplicate row(s): line 3 repeats line 2")
def _(env):
    def check(env, stdout, stderr):
        assert json.loads((env.tmp / "eval.json").read_text())["faces"] == 1
    return env.evaluate(_csv(env, f"face.jpg,{LFW_FACE_BOX}", f"face.jpg,{LFW_FACE_BOX}")), check


@case("csv_duplicate_rows_train", "train", 0, "duplicate dropped with a warning; one epoch trained",
      "dropped 1 duplicate row(s): line 3 repeats line 2")
def _(env):
    env.face_file("other.jpg")

    def check(env, stdout, stderr):
        assert (env.tmp / "ckpt" / "BlazeFace_final.pth").is_file()
    path = _csv(env, f"face.jpg,{LFW_FACE_BOX}", f"face.jpg,{LFW_FACE_BOX}", f"other.jpg,{LFW_FACE_BOX}")
    return env.train(path, "--set", "data.val_fraction=0.5"), check


@case("csv_empty_file", "train", EXIT_USAGE, "error at file:1: missing columns, expected header shown",
      "empty.csv:1: missing column(s) image_path")
def _(env):
    env.path("empty.csv").write_bytes(b"")
    return env.train(env.tmp / "empty.csv"), None


@case("csv_header_only", "train", EXIT_USAGE, "error naming the file: no annotated images",
      "faces.csv: no annotated images")
def _(env):
    return env.train(_csv(env)), None


@case("csv_latin1_bytes", "evaluate", EXIT_USAGE, "error naming the file: not UTF-8 text",
      "faces.csv: not UTF-8 text")
def _(env):
    env.path("faces.csv").write_bytes(f"{CSV_HEADER}\nZo\xeb.jpg,{LFW_FACE_BOX}\n".encode("latin-1"))
    return env.evaluate(env.tmp / "faces.csv"), None


@case("csv_image_missing", "evaluate", EXIT_USAGE, "error naming the missing image file", "ghost.jpg")
def _(env):
    return env.evaluate(_csv(env, f"ghost.jpg,{LFW_FACE_BOX}")), None


@case("csv_image_truncated_in_training", "train", EXIT_USAGE,
      "error naming the image, also from a DataLoader worker process (no worker traceback)",
      "cut.jpg: cannot decode image")
def _(env):
    data = env.face_file("whole.jpg").read_bytes()
    env.path("cut.jpg").write_bytes(data[:2000])
    path = _csv(env, f"cut.jpg,{LFW_FACE_BOX}", f"whole.jpg,{LFW_FACE_BOX}")
    argv = env.train(path, "--set", "data.val_fraction=0.5")
    argv[argv.index("--num-workers") + 1] = "1"
    return argv, None


_DLIB_HEADER = "<?xml version='1.0'?>\n<dataset>\n<images>\n"


def _xml(env: Env, body: str) -> Path:
    env.face_file("face.jpg")
    path = env.path("faces.xml")
    path.write_text(_DLIB_HEADER + body, encoding="utf-8")
    return path


@case("dlib_xml_unclosed_tag", "train", EXIT_USAGE, "error at file:line: malformed XML",
      "faces.xml:6: malformed XML")
def _(env):
    return env.train(_xml(env, "<image file='face.jpg'>\n<box top='60' left='70' width='110' height='130'>\n"
                               "</image>\n</images>\n</dataset>\n")), None


@case("dlib_xml_box_without_width", "evaluate", EXIT_USAGE, "error at file:line naming the attribute",
      "faces.xml:5: <box> lacks the attribute 'width'")
def _(env):
    return env.evaluate(_xml(env, "<image file='face.jpg'>\n<box top='60' left='70' height='130'/>\n"
                                  "</image>\n</images>\n</dataset>\n")), None


@case("dlib_xml_negative_box", "train", EXIT_USAGE, "error at file:line: box size must be positive",
      "faces.xml:5: box size must be positive")
def _(env):
    return env.train(_xml(env, "<image file='face.jpg'>\n<box top='60' left='70' width='-5' height='130'/>\n"
                               "</image>\n</images>\n</dataset>\n")), None


@case("dlib_xml_image_without_file", "evaluate", EXIT_USAGE, "error at file:line naming the attribute",
      "faces.xml:4: <image> lacks the attribute 'file'")
def _(env):
    return env.evaluate(_xml(env, "<image>\n</image>\n</images>\n</dataset>\n")), None


@case("dlib_xml_binary_garbage", "train", EXIT_USAGE, "error at file:line: malformed XML",
      "garbage.xml:1: malformed XML")
def _(env):
    env.path("garbage.xml").write_bytes(bytes(range(256)))
    return env.train(env.tmp / "garbage.xml"), None


@case("dlib_xml_empty_file", "evaluate", EXIT_USAGE, "error at file:line: malformed XML (no element found)",
      "empty.xml:1: malformed XML: no element found")
def _(env):
    env.path("empty.xml").write_bytes(b"")
    return env.evaluate(env.tmp / "empty.xml"), None


def _wider(env: Env, text: str) -> Path:
    env.face_file("images/0--Parade/face.jpg")
    path = env.path("wider_face_train_bbx_gt.txt")
    path.write_text(text, encoding="utf-8")
    return path


@case("wider_count_too_small", "train", EXIT_USAGE, "error at file:line: face count smaller than its faces",
      "wider_face_train_bbx_gt.txt:4: expected an image path", "count of 0--Parade/face.jpg on line 2 is smaller")
def _(env):
    text = "0--Parade/face.jpg\n1\n70 60 110 130 0 0 0 0 0 0\n10 10 20 20 0 0 0 0 0 0\n"
    return env.train(_wider(env, text), "--data-root", str(env.tmp / "images")), None


@case("wider_count_too_large", "evaluate", EXIT_USAGE, "error at file:line: truncated file or wrong face count",
      "wider_face_train_bbx_gt.txt:3: file ends after line 3")
def _(env):
    text = "0--Parade/face.jpg\n2\n70 60 110 130 0 0 0 0 0 0\n"
    return env.evaluate(_wider(env, text), "--data-root", str(env.tmp / "images")), None


@case("wider_count_too_large_next_image", "train", EXIT_USAGE,
      "error at file:line: found the next image's path instead of a face",
      "wider_face_train_bbx_gt.txt:4: expected face 2 of 2", "is larger than its number of faces")
def _(env):
    text = "0--Parade/face.jpg\n2\n70 60 110 130 0 0 0 0 0 0\n0--Parade/face.jpg\n1\n70 60 110 130 0 0 0 0 0 0\n"
    return env.train(_wider(env, text), "--data-root", str(env.tmp / "images")), None


@case("wider_count_not_a_number", "evaluate", EXIT_USAGE, "error at file:line: expected the face count",
      "wider_face_train_bbx_gt.txt:2: expected the face count of 0--Parade/face.jpg, found 'one'")
def _(env):
    return env.evaluate(_wider(env, "0--Parade/face.jpg\none\n70 60 110 130 0 0 0 0 0 0\n"),
                        "--data-root", str(env.tmp / "images")), None


@case("wider_face_line_too_short", "train", EXIT_USAGE, "error at file:line: expected 10 numbers",
      "wider_face_train_bbx_gt.txt:3: face 1 of 1 of 0--Parade/face.jpg: expected 10 numbers")
def _(env):
    return env.train(_wider(env, "0--Parade/face.jpg\n1\n70 60 110 130\n"),
                     "--data-root", str(env.tmp / "images")), None


@case("wider_without_data_root", "evaluate", EXIT_USAGE, "error naming the file: needs data_root",
      "wider annotations need data_root")
def _(env):
    return env.evaluate(_wider(env, "0--Parade/face.jpg\n1\n70 60 110 130 0 0 0 0 0 0\n")), None


def _coco(env: Env, coco: object, raw: str | None = None) -> Path:
    env.face_file("face.jpg")
    path = env.path("faces.json")
    path.write_text(raw if raw is not None else json.dumps(coco), encoding="utf-8")
    return path


_COCO_IMAGE = {"id": 1, "file_name": "face.jpg", "width": 250, "height": 250}


@case("coco_dangling_image_id", "evaluate", EXIT_USAGE, "error naming the annotation and the missing image id",
      "faces.json: annotations[0] (id 7) refers to image_id 99, which is not in 'images'")
def _(env):
    coco = {"images": [_COCO_IMAGE], "annotations": [{"id": 7, "image_id": 99, "bbox": [70, 60, 110, 130]}]}
    return env.evaluate(_coco(env, coco), "--data-root", str(env.tmp)), None


@case("coco_duplicate_image_id", "train", EXIT_USAGE, "error naming the repeated image id",
      "faces.json: images[1]: image id 1 appears twice")
def _(env):
    coco = {"images": [_COCO_IMAGE, _COCO_IMAGE], "annotations": []}
    return env.train(_coco(env, coco), "--data-root", str(env.tmp)), None


@case("coco_bbox_of_three_numbers", "evaluate", EXIT_USAGE, "error naming the annotation's bbox",
      "faces.json: annotations[0].bbox: expected a list of 4 finite numbers")
def _(env):
    coco = {"images": [_COCO_IMAGE], "annotations": [{"id": 1, "image_id": 1, "bbox": [70, 60, 110]}]}
    return env.evaluate(_coco(env, coco), "--data-root", str(env.tmp)), None


@case("coco_bbox_nan", "train", EXIT_USAGE, "error naming the annotation's bbox",
      "faces.json: annotations[0].bbox: expected a list of 4 finite numbers")
def _(env):
    raw = ('{"images": [{"id": 1, "file_name": "face.jpg"}], '
           '"annotations": [{"id": 1, "image_id": 1, "bbox": [NaN, 60, 110, 130]}]}')
    return env.train(_coco(env, None, raw), "--data-root", str(env.tmp)), None


@case("coco_invalid_json", "evaluate", EXIT_USAGE, "error at file:line: invalid JSON",
      "faces.json:3: invalid JSON")
def _(env):
    return env.evaluate(_coco(env, None, '{"images": [\n  {"id": 1, "file_name": "face.jpg"},\n  oops\n]}'),
                        "--data-root", str(env.tmp)), None


@case("coco_top_level_list", "train", EXIT_USAGE, "error naming the file: expected a COCO object",
      "faces.json: expected a COCO object with 'images' and 'annotations' lists")
def _(env):
    return env.train(_coco(env, [_COCO_IMAGE]), "--data-root", str(env.tmp)), None


@case("annotations_unknown_extension", "evaluate", EXIT_USAGE, "error naming the file and the known formats",
      "faces.yaml: unknown annotation format '.yaml'")
def _(env):
    env.path("faces.yaml").write_text("faces: []\n")
    return env.evaluate(env.tmp / "faces.yaml"), None


@case("annotations_empty_txt", "train", EXIT_USAGE, "error naming the file: empty, format unknown",
      "labels.txt: empty file")
def _(env):
    env.path("labels.txt").write_text("\n\n")
    return env.train(env.tmp / "labels.txt", "--data-root", str(env.tmp)), None


@case("annotations_missing_file", "train", EXIT_USAGE, "error naming the missing file", "nowhere.csv")
def _(env):
    return env.train(env.tmp / "nowhere.csv"), None


# ==================================================================== YAML configs, through every command line
def _yaml(env: Env, text: str, name: str = "bad.yaml") -> Path:
    path = env.path(name)
    path.write_text(text, encoding="utf-8")
    return path


@case("yaml_unknown_key_train", "train", EXIT_USAGE, "error naming the key, a suggestion and the valid keys",
      "bad.yaml: unknown key 'train.epoch'. Did you mean 'epochs'? Valid keys here: amp, batch_size")
def _(env):
    return env.train(env.tmp / "unused.csv", "--config", str(_yaml(env, "train:\n  epoch: 3\n"))), None


@case("yaml_wrong_type_train", "train", EXIT_USAGE, "error naming the key, the expected and the found type",
      "bad.yaml: train.epochs must be int (like 500), got str 'ten'")
def _(env):
    return env.train(env.tmp / "unused.csv", "--config", str(_yaml(env, "train:\n  epochs: ten\n"))), None


@case("yaml_bool_for_number_train", "train", EXIT_USAGE, "error naming the key: a bool is not a number",
      "bad.yaml: train.lr must be float (like 0.0001), got bool True")
def _(env):
    return env.train(env.tmp / "unused.csv", "--config", str(_yaml(env, "train:\n  lr: yes\n"))), None


@case("yaml_section_not_a_mapping", "train", EXIT_USAGE, "error naming the section: must be a mapping",
      "bad.yaml: train must be a mapping, got int")
def _(env):
    return env.train(env.tmp / "unused.csv", "--config", str(_yaml(env, "train: 5\n"))), None


@case("yaml_top_level_list", "train", EXIT_USAGE, "error naming the file: the top level must be a mapping",
      "bad.yaml: the top level must be a mapping of keys, got list")
def _(env):
    return env.train(env.tmp / "unused.csv", "--config", str(_yaml(env, "- train\n- epochs\n"))), None


@case("yaml_syntax_error", "infer", EXIT_USAGE, "error naming the file: not valid YAML, with line and column",
      "bad.yaml: not valid YAML at line 3, column 1: expected ',' or ']'")
def _(env):
    return env.infer(env.face_file("face.jpg"), "--config", str(_yaml(env, "model:\n  weights: [a, b\n"))), None


@case("yaml_unknown_key_infer", "infer", EXIT_USAGE, "error naming the key and the valid keys",
      "bad.yaml: unknown key 'inference.treshold'")
def _(env):
    path = _yaml(env, "detector: blazeface\ninference:\n  treshold: 0.5\n")
    return env.infer(env.face_file("face.jpg"), "--config", str(path)), None


@case("yaml_wrong_type_evaluate", "evaluate", EXIT_USAGE, "error naming the key and the types",
      "bad.yaml: inference.thresholds must be list")
def _(env):
    path = _yaml(env, "detector: mtcnn\ninference:\n  thresholds: 2\n")
    return env.evaluate(_csv(env, f"face.jpg,{LFW_FACE_BOX}"), "--config", str(path)), None


@case("yaml_unknown_detector", "train", EXIT_USAGE, "error naming the detector and the known ones",
      "unknown detector 'facefinder9000'; choose from")
def _(env):
    config = _yaml(env, "detector: facefinder9000\n")
    return env.train(_csv(env, f"face.jpg,{LFW_FACE_BOX}"), "--config", str(config)), None


@case("yaml_missing_file", "evaluate", EXIT_USAGE, "error naming the missing config file",
      "config file not found:", "missing.yaml")
def _(env):
    return env.evaluate(_csv(env, f"face.jpg,{LFW_FACE_BOX}"), "--config", str(env.tmp / "missing.yaml")), None


@case("yaml_latin1_bytes", "train", EXIT_USAGE, "error naming the file: not UTF-8 text",
      "bad.yaml: not UTF-8 text")
def _(env):
    env.path("bad.yaml").write_bytes("# caf\xe9\ntrain:\n  epochs: 1\n".encode("latin-1"))
    return env.train(env.tmp / "unused.csv", "--config", str(env.tmp / "bad.yaml")), None


@case("set_without_equals", "train", EXIT_USAGE, "error quoting the --set item", "--set expects key=value")
def _(env):
    return env.train(env.tmp / "unused.csv", "--set", "train.lr"), None


@case("yaml_unknown_key_attendance", "attendance", EXIT_USAGE, "error naming the key and the valid keys",
      "bad.yaml: unknown key 'quality.min_face'. Did you mean 'min_face_px'?")
def _(env):
    path = _yaml(env, "quality:\n  min_face: 40\n")
    return ["enroll", "--class", "7B", "--roster", str(env.tmp), "--config", str(path),
            "--db", str(env.tmp / "a.sqlite")], None


@case("yaml_wrong_type_attendance", "attendance", EXIT_USAGE, "error naming the key and the types",
      "bad.yaml: matching.floor must be a number, or null for the value tuned for the pipeline's embedder; got str "
      "'high'")
def _(env):
    path = _yaml(env, "matching:\n  floor: high\n")
    return ["report", "--class", "7B", "--config", str(path), "--db", str(env.tmp / "a.sqlite")], None


# ==================================================================== attendance rosters and photos
def _roster(env: Env, students: dict[str, list[tuple[str, int]]]) -> Path:
    """roster/<student>/<photo> from LFW: student → [(LFW person, photo number)]."""
    lfw = shared_path("data", "lfw", "deepfunneled")
    roster = env.tmp / "roster"
    for student, photos in students.items():
        (roster / student).mkdir(parents=True, exist_ok=True)
        for person, number in photos:
            shutil.copy(lfw / person / f"{person}_{number:04d}.jpg", roster / student / f"{person}_{number}.jpg")
    return roster


def _enroll(env: Env, roster: Path, *extra: str) -> list[str]:
    return ["enroll", "--class", "7B", "--roster", str(roster), "--db", str(env.tmp / "class.sqlite"), *extra]


def _students(env: Env) -> dict[str, int]:
    """Enrolled student → embeddings, read straight from the database file."""
    with contextlib.closing(sqlite3.connect(env.tmp / "class.sqlite")) as connection:
        return dict(connection.execute("SELECT s.name, COUNT(e.id) FROM students s JOIN embeddings e "
                                       "ON e.student_id = s.id GROUP BY s.name"))


def _mark(env: Env, *photos: Path) -> list[str]:
    return ["mark", "--class", "7B", "--photo", *map(str, photos), "--date", "2026-11-23",
            "--db", str(env.db_copy()), "--out", str(env.tmp / "out")]


def _class_photo() -> Path:
    person = CLASS_PHOTO_PERSON
    return shared_path("data", "lfw", "deepfunneled", person, f"{person}_{CLASS_PHOTO_NUMBER:04d}.jpg")


@case("roster_empty_folder", "attendance", EXIT_USAGE, "error naming the roster: no student folders",
      "no student folders")
def _(env):
    (env.tmp / "roster").mkdir()
    return _enroll(env, env.tmp / "roster"), None


@case("roster_missing", "attendance", EXIT_USAGE, "error naming the path: roster folder not found",
      "roster folder not found:", "nowhere")
def _(env):
    return _enroll(env, env.tmp / "nowhere"), None


@case("roster_is_a_file", "attendance", EXIT_USAGE, "error naming the path: roster folder not found",
      "roster folder not found:", "roster.zip")
def _(env):
    env.path("roster.zip").write_bytes(b"PK\x03\x04")
    return _enroll(env, env.tmp / "roster.zip"), None


@case("roster_student_with_only_non_images", "attendance", 0,
      "that student skipped with a warning ('no image files'); the others enrolled",
      "Empty_Student has no usable photo")
def _(env):
    roster = _roster(env, {"Colin_Powell": [("Colin_Powell", 1)]})
    env.path("roster/Empty_Student/notes.txt").write_text("no photos")
    env.path("roster/Empty_Student/scan.pdf").write_bytes(b"%PDF-1.4")

    def check(env, stdout, stderr):
        assert "no image files" in stdout
        assert _students(env) == {"Colin_Powell": 1}
    return _enroll(env, roster), check


@case("roster_only_non_images", "attendance", 1, "nobody enrolled: a warning per student, exit code 1",
      "warning: Empty_Student has no usable photo")
def _(env):
    env.path("roster/Empty_Student/notes.txt").write_text("no photos")

    def check(env, stdout, stderr):
        assert "0 students enrolled" in stdout and _students(env) == {}
    return _enroll(env, env.tmp / "roster"), check


@case("roster_unicode_names", "attendance", 0, "unicode student and photo names enrolled as given")
def _(env):
    name = "Zoë Ñúñez 学生 O'Brien"
    roster = _roster(env, {name: [("Colin_Powell", 1)], "Tony_Blair": [("Tony_Blair", 1)]})
    (roster / name / "Colin_Powell_1.jpg").rename(roster / name / "фото 1.jpg")

    def check(env, stdout, stderr):
        assert _students(env) == {name: 1, "Tony_Blair": 1}
    return _enroll(env, roster), check


@case("roster_backslash_in_name", "attendance", EXIT_USAGE,
      "error naming the student before any work: no path separators; nothing enrolled",
      "student name 'a\\\\b' is not allowed")
def _(env):
    roster = _roster(env, {"Colin_Powell": [("Colin_Powell", 1)], "a\\b": [("Tony_Blair", 1)]})

    def check(env, stdout, stderr):
        assert "enrolling" not in stderr  # refused before the first photo is looked at
    return _enroll(env, roster), check


@case("roster_bad_photos_among_good", "attendance", 0,
      "each bad photo rejected with its reason (empty, not an image, truncated, no face); the student enrolled "
      "with the good one")
def _(env):
    roster = _roster(env, {"Colin_Powell": [("Colin_Powell", 1)]})
    folder = roster / "Colin_Powell"
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "cut.jpg").write_bytes((folder / "Colin_Powell_1.jpg").read_bytes()[:3000])
    Image.new("RGB", (1, 1)).save(folder / "dot.png")

    def check(env, stdout, stderr):
        for message in ("empty.jpg: file is empty", "notes.jpg: not an image", "cut.jpg: cannot decode",
                        "dot.png: no face found"):
            assert message in stdout, message
        assert _students(env) == {"Colin_Powell": 1}
    return _enroll(env, roster), check


@case("roster_exif_rotated_photos", "attendance", 0,
      "EXIF-rotated enrolment photos decoded upright: both pass the landmark checks and are enrolled")
def _(env):
    roster = _roster(env, {"Colin_Powell": [("Colin_Powell", 1), ("Colin_Powell", 2)]})
    for orientation, photo in zip((6, 8), sorted((roster / "Colin_Powell").iterdir())):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        with Image.open(photo) as image:
            stored = image.transpose(STORED_FOR_ORIENTATION[orientation])
        stored.save(photo, exif=exif, quality=95)

    def check(env, stdout, stderr):
        assert "rejected" not in stdout and _students(env) == {"Colin_Powell": 2}
    return _enroll(env, roster), check


@case("mark_truncated_photo", "attendance", EXIT_USAGE, "error naming the photo; no session stored",
      "cut.jpg: cannot decode image")
def _(env):
    cut = env.path("cut.jpg")
    cut.write_bytes(_class_photo().read_bytes()[:2000])
    argv = _mark(env, cut)

    def check(env, stdout, stderr):
        with contextlib.closing(sqlite3.connect(env.tmp / "class.sqlite")) as connection:
            assert connection.execute("SELECT COUNT(*) FROM sessions").fetchone() == (0,)
    return argv, check


@case("mark_text_named_jpg", "attendance", EXIT_USAGE, "error naming the photo: not an image",
      "notes.jpg: not an image")
def _(env):
    env.path("notes.jpg").write_text("not a photo")
    return _mark(env, env.tmp / "notes.jpg"), None


@case("mark_missing_photo", "attendance", EXIT_USAGE, "error naming the missing photo", "absent.jpg")
def _(env):
    return _mark(env, env.tmp / "absent.jpg"), None


@case("mark_unknown_class", "attendance", EXIT_USAGE, "error naming the class and the known ones",
      "class '9Z' does not exist", "classes: 7B")
def _(env):
    argv = _mark(env, _class_photo())
    argv[argv.index("--class") + 1] = "9Z"
    return argv, None


@case("mark_bad_date", "attendance", EXIT_USAGE, "error naming the flag and the expected form",
      "--date must be a date like 2026-11-23, got '23/11/2026'")
def _(env):
    argv = _mark(env, _class_photo())
    argv[argv.index("--date") + 1] = "23/11/2026"
    return argv, None


@case("mark_exif_rotated_unicode_photo", "attendance", 0,
      "an EXIF-rotated class photo with a unicode name: the student found present, annotated copy written")
def _(env):
    photo = env.path("класс 7B ☀.jpg")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    with Image.open(_class_photo()) as image:
        image.transpose(STORED_FOR_ORIENTATION[6]).save(photo, exif=exif, quality=95)

    def check(env, stdout, stderr):
        result = json.loads((env.tmp / "out" / "attendance.json").read_text(encoding="utf-8"))
        assert result["present"] == [CLASS_PHOTO_PERSON]
        assert (env.tmp / "out" / "annotated_класс 7B ☀.jpg").stat().st_size > 1000
    return _mark(env, photo), check


@case("database_not_sqlite", "attendance", EXIT_USAGE, "error naming the file: not an attendance database",
      "notes.sqlite: not an attendance database")
def _(env):
    env.path("notes.sqlite").write_text("this is not a database, just text that is long enough " * 20)
    return ["report", "--class", "7B", "--db", str(env.tmp / "notes.sqlite")], None


@case("report_without_sessions", "attendance", EXIT_USAGE, "error naming the class and the date range",
      "class '7B' has no sessions")
def _(env):
    return ["report", "--class", "7B", "--db", str(env.db_copy()), "--out", str(env.tmp / "rep")], None


# ==================================================================== other inputs of the command lines
@case("video_that_is_not_a_video", "infer", EXIT_USAGE, "error naming the source: cannot open video",
      "cannot open video source", "clip.mp4")
def _(env):
    env.path("clip.mp4").write_text("not a video")
    return env.infer(env.tmp / "clip.mp4"), None


@case("min_face_px_zero", "infer", EXIT_USAGE, "error naming --min-face-px and what it must be",
      "min_face_px must be a positive number of pixels or null, got 0.0")
def _(env):
    argv = env.infer(env.face_file("face.jpg"), "--min-face-px", "0")
    argv[1] = "blazeface"
    return argv, None


@case("device_not_a_device", "infer", EXIT_USAGE, "error naming the device and the valid ones",
      "device 'gpu' is not a device name; expected auto, cpu, cuda or cuda:N")
def _(env):
    return env.infer(env.face_file("face.jpg"), "--device", "gpu"), None


@case("device_cuda_without_a_gpu", "train", EXIT_USAGE, "error: CUDA is not available, use --device cpu",
      "device 'cuda' was asked for but CUDA is not available; use --device cpu")
def _(env):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = env.train(_csv(env, f"face.jpg,{LFW_FACE_BOX}"))
    argv[argv.index("--device") + 1] = "cuda"
    return argv, None


@case("weights_truncated_tflite", "infer", EXIT_USAGE, "error naming the weights file: truncated or corrupt",
      "cut.tflite: not a readable .tflite file (truncated or corrupt")
def _(env):
    pytest.importorskip("tflite")
    tflite = shared_path("models", "mediapipe", "face_detection_short_range.tflite").read_bytes()
    env.path("cut.tflite").write_bytes(tflite[: len(tflite) // 2])
    argv = env.infer(env.face_file("face.jpg"), "--weights", str(env.tmp / "cut.tflite"))
    argv[1] = "blazeface"
    return argv, None


@case("weights_garbage_pth", "evaluate", EXIT_USAGE, "error naming the weights file: unreadable",
      "weights file", "bad.pth is unreadable")
def _(env):
    env.path("bad.pth").write_text("not a checkpoint")
    return env.evaluate(_csv(env, f"face.jpg,{LFW_FACE_BOX}"), "--weights", str(env.tmp / "bad.pth")), None


@case("resume_truncated_checkpoint", "train", EXIT_USAGE, "error naming the checkpoint: unreadable",
      "checkpoint", "half.pth is unreadable")
def _(env):
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, env.path("whole.pth"))
    env.path("half.pth").write_bytes((env.tmp / "whole.pth").read_bytes()[:500])
    return env.train(_csv(env, f"face.jpg,{LFW_FACE_BOX}"), "--resume", str(env.tmp / "half.pth")), None


def _pairs(env: Env, rows: str, header: str = "file_x,file_y,same") -> list[str]:
    env.face_file("a.jpg")
    env.face_file("b.jpg")
    env.path("pairs.csv").write_text(f"{header}\n{rows}\n", encoding="utf-8")
    return ["--benchmark", "pairs", "--pairs", str(env.tmp / "pairs.csv"), "--cache-dir", str(env.tmp / "cache"),
            "--out", str(env.tmp / "pairs.json")]


@case("pairs_missing_column", "evaluate", EXIT_USAGE, "error at file:1 showing the expected header",
      "pairs.csv:1: expected the header file_x,file_y,same")
def _(env):
    return _pairs(env, "a.jpg,b.jpg", header="file_x,file_y"), None


@case("pairs_missing_image", "evaluate", EXIT_USAGE, "error at file:line naming the image",
      "pairs.csv:2: image not found:", "ghost.jpg")
def _(env):
    return _pairs(env, "a.jpg,ghost.jpg,1"), None


@case("pairs_same_not_a_boolean", "evaluate", EXIT_USAGE,
      "error at file:line: the label must be 1/0, yes/no, true/false",
      "pairs.csv:2: the label must be 1/0, yes/no or true/false, got 'maybe'")
def _(env):
    return _pairs(env, "a.jpg,b.jpg,maybe"), None


@case("lfw_root_missing", "evaluate", EXIT_USAGE, "error naming the folder and --lfw-root",
      "LFW root not found:", "pass --lfw-root")
def _(env):
    return ["--benchmark", "lfw", "--lfw-root", str(env.tmp / "no_lfw"), "--out", str(env.tmp / "lfw.json")], None


@case("embedding_data_root_missing", "train", EXIT_USAGE, "error naming the folder and the layout expected",
      "is not a folder (expected root/<identity>/<image>)")
def _(env):
    return ["--stage", "embedding", "--data-root", str(env.tmp / "faces"), "--device", "cpu",
            "--checkpoint-dir", str(env.tmp / "ckpt"), "--log-dir", str(env.tmp / "logs")], None


@case("demo_lfw_root_missing", "attendance", EXIT_USAGE, "error naming the folder", "no_lfw does not exist")
def _(env):
    return ["demo", "--lfw-root", str(env.tmp / "no_lfw"), "--classes", "1", "--out", str(env.tmp / "demo")], None


# ==================================================================== the runner
@pytest.fixture(scope="module")
def enrolled_db(tmp_path_factory):
    """The two-student class every mark/report case starts from, enrolled once, built on first use."""
    built: list[Path] = []

    def get() -> Path:
        if not built:
            env = Env(tmp_path_factory.mktemp("enrolled"), lambda: None)
            roster = _roster(env, {person: [(person, 1), (person, 2)] for person in ROSTER_PEOPLE})
            code, stdout, stderr = run_in_process("attendance", _enroll(env, roster))
            assert code == 0, stderr
            built.append(env.tmp / "class.sqlite")
        return built[0]
    return get


def run_in_process(cli: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr with the warnings raised) of ``<cli>.py argv`` run through run_cli. An
    exception that escapes run_cli is a crash and fails the test."""
    module = importlib.import_module(cli)
    stdout, stderr = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always")
        code = run_cli(module.main, argv)
    raised = "".join(f"{item.filename}:{item.lineno}: {item.category.__name__}: {item.message}\n" for item in caught)
    return code, stdout.getvalue(), stderr.getvalue() + raised


def _assert_outcome(name: str, code: int, stdout: str, stderr: str) -> None:
    expected = CASES[name]
    assert code == expected.exit_code, f"{name}: exit {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    where = stdout + stderr  # a recovery's warnings may be printed to either
    if expected.exit_code == EXIT_USAGE:
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, stderr[-2000:]
        where = errors[0]  # one line that says it all
    for message in expected.messages:
        assert message in where, f"{name}: {message!r} not in {where[-2000:]!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, enrolled_db):
    env = Env(tmp_path, enrolled_db)
    argv, check = _BUILDERS[name](env)
    code, stdout, stderr = run_in_process(CASES[name].cli, argv)
    _assert_outcome(name, code, stdout, stderr)
    if check is not None:
        check(env, stdout, stderr)


# One case of each command line, run as a real process.
SUBPROCESS_CASES = ("image_folder_with_bad_files", "dlib_xml_unclosed_tag", "coco_dangling_image_id",
                    "roster_empty_folder")


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_one_case_per_command_line_in_a_subprocess(name, tmp_path, enrolled_db):
    env = Env(tmp_path, enrolled_db)
    argv, check = _BUILDERS[name](env)
    result = subprocess.run([sys.executable, f"{CASES[name].cli}.py", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    _assert_outcome(name, result.returncode, result.stdout, result.stderr)
    if check is not None:
        check(env, result.stdout, result.stderr)


def test_the_corpus_covers_every_command_line():
    assert len(CASES) >= 50
    assert {case.cli for case in CASES.values()} == {"train", "evaluate", "infer", "attendance"}
    assert {CASES[name].cli for name in SUBPROCESS_CASES} == {"train", "evaluate", "infer", "attendance"}
    recoveries = [name for name, case in CASES.items() if case.exit_code != EXIT_USAGE]
    assert recoveries and len(recoveries) < len(CASES)  # both kinds of outcome are exercised
