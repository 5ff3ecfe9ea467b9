"""detection.data.readers: real dlib and WIDER files, and generated files for every malformed case."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from detection.data.readers import (
    AnnotationError,
    FaceAnnotation,
    detect_format,
    read_annotations,
    read_coco,
    read_csv,
    read_dlib_xml,
    read_retinaface_label,
    read_wider_txt,
    split_by_image,
)
from tests.conftest import shared_path

DLIB_FACES = ("data", "detection", "dlib_faces")
RETINAFACE_VAL_LABEL = ("data", "detection", "wider_val_ground_truth", "retinaface_val_label.txt")
CSV_HEADER = "image_path,x1,y1,w,h,width,height\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _location(path: Path, line: int) -> str:
    """The ``file:line:`` prefix an AnnotationError must start with."""
    return re.escape(f"{path}:{line}: ")


def _face_count(annotations: list[FaceAnnotation]) -> int:
    return sum(len(annotation.boxes) for annotation in annotations)


def _assert_well_formed(annotation: FaceAnnotation) -> None:
    count = len(annotation.boxes)
    assert annotation.boxes.dtype == np.float32 and annotation.boxes.shape == (count, 4)
    assert annotation.landmarks.dtype == np.float32 and annotation.landmarks.shape == (count, 5, 2)
    assert annotation.ignore.dtype == bool and annotation.ignore.shape == (count,)
    assert (annotation.boxes[:, 2:] > annotation.boxes[:, :2]).all()


# ---------------------------------------------------------------- real data


def test_dlib_testing_xml():
    xml = shared_path(*DLIB_FACES, "testing.xml")
    annotations = read_dlib_xml(xml)
    assert len(annotations) == 5
    assert _face_count(annotations) == 25
    assert sum(int(annotation.ignore.sum()) for annotation in annotations) == 0  # the file flags none
    for annotation in annotations:
        _assert_well_formed(annotation)
        assert annotation.image_path.parent == xml.parent and annotation.image_path.is_file()
        assert np.isnan(annotation.landmarks).all()
    first = annotations[0]
    assert first.image_path.name == "2008_002470.jpg"
    # <box top='181' left='274' width='52' height='53'/>
    np.testing.assert_array_equal(first.boxes[0], [274, 181, 326, 234])


def test_dlib_training_xml_landmarks_inside_boxes():
    annotations = read_dlib_xml(shared_path(*DLIB_FACES, "training_with_face_landmarks.xml"))
    assert len(annotations) == 4 and _face_count(annotations) == 18
    for annotation in annotations:
        _assert_well_formed(annotation)
        landmarks, boxes = annotation.landmarks, annotation.boxes
        assert np.isfinite(landmarks).all()
        x, y = landmarks[..., 0], landmarks[..., 1]
        assert ((x >= boxes[:, None, 0]) & (x <= boxes[:, None, 2])).all()
        assert ((y >= boxes[:, None, 1]) & (y <= boxes[:, None, 3])).all()
        assert (x[:, 0] < x[:, 1]).all() and (x[:, 3] < x[:, 4]).all()  # image-left eye / mouth corner first
        assert (y[:, 2] < y[:, 3]).all()  # nose above the mouth


def test_retinaface_val_label():
    label = shared_path(*RETINAFACE_VAL_LABEL)
    # Count independently from the text: '# path' lines are images, the others are faces (x y w h).
    lines = [line for line in label.read_text().splitlines() if line.strip()]
    image_count = sum(line.startswith("#") for line in lines)
    face_sizes = [line.split()[2:4] for line in lines if not line.startswith("#")]
    empty_count = sum(float(w) <= 0 or float(h) <= 0 for w, h in face_sizes)
    # WIDER val has 3226 images; RetinaFace's label.txt leaves out the 4 that have no face.
    assert image_count == 3222 and len(face_sizes) == 39704 and empty_count == 7
    with pytest.warns(UserWarning, match=f"dropped {empty_count} boxes"):
        annotations = read_retinaface_label(label, "/wider/val/images")
    assert len(annotations) == image_count
    assert _face_count(annotations) == len(face_sizes) - empty_count
    first = annotations[0]
    assert first.image_path == Path("/wider/val/images/0--Parade/0_Parade_marchingband_1_465.jpg")
    np.testing.assert_array_equal(first.boxes[0], [345, 211, 349, 215])  # "345 211 4 4"
    assert all(np.isnan(annotation.landmarks).all() for annotation in annotations)


# ---------------------------------------------------------------- CSV


def test_csv_groups_rows_by_image_and_resolves_paths(tmp_path):
    csv_path = _write(
        tmp_path / "faces.csv",
        CSV_HEADER + "a.jpg,10,20,30,40,100,100\nsub/b.png,0,0,5,5,50,60\na.jpg,50,50,10,10,100,100\n",
    )
    annotations = read_csv(csv_path)
    assert [annotation.image_path for annotation in annotations] == [tmp_path / "a.jpg", tmp_path / "sub/b.png"]
    np.testing.assert_array_equal(annotations[0].boxes, [[10, 20, 40, 60], [50, 50, 60, 60]])
    for annotation in annotations:
        _assert_well_formed(annotation)
        assert np.isnan(annotation.landmarks).all() and not annotation.ignore.any()
    assert read_csv(csv_path, data_root="/data")[1].image_path == Path("/data/sub/b.png")


def test_csv_clips_overshoot_within_tolerance(tmp_path):
    csv_path = _write(tmp_path / "faces.csv", CSV_HEADER + "a.jpg,-0.5,10,50.8,10,50,50\n")
    np.testing.assert_array_equal(read_csv(csv_path)[0].boxes, [[0, 10, 50, 20]])


@pytest.mark.parametrize(
    "rows, line, problem",
    [
        ("a.jpg,10,20,30,40,100\n", 2, "expected 7 fields, found 6"),
        ("a.jpg,10,20,30,40,100,100\na.jpg,ten,20,30,40,100,100\n", 3, "column x1: 'ten' is not a number"),
        ("a.jpg,10,20,,40,100,100\n", 2, "column w: '' is not a number"),
        ("a.jpg,10,nan,30,40,100,100\n", 2, "column y1: 'nan' is not a finite number"),
        ("a.jpg,10,20,inf,40,100,100\n", 2, "column w: 'inf' is not a finite number"),
        ("a.jpg,10,20,-30,40,100,100\n", 2, "box size must be positive, found w=-30 h=40"),
        ("a.jpg,10,20,30,0,100,100\n", 2, "box size must be positive, found w=30 h=0"),
        ("a.jpg,10,20,30,40,0,100\n", 2, "image size must be positive"),
        ("a.jpg,90,20,30,40,100,100\n", 2, "extends 20 px outside the 100x100 image"),
        ("a.jpg,-5,20,30,40,100,100\n", 2, "extends 5 px outside the 100x100 image"),
        ("a.jpg,200,20,30,40,100,100\n", 2, "lies entirely outside the 100x100 image"),
        ("a.jpg,10,20,30,40,100,100\na.jpg,1,2,3,4,100,90\n", 3, "differs from 100x100 on line 2"),
        (",10,20,30,40,100,100\n", 2, "image_path is empty"),
    ],
)
def test_csv_malformed_row_names_file_and_line(tmp_path, rows, line, problem):
    csv_path = _write(tmp_path / "faces.csv", CSV_HEADER + rows)
    with pytest.raises(AnnotationError, match=_location(csv_path, line) + ".*" + re.escape(problem)):
        read_csv(csv_path)


def test_csv_missing_column(tmp_path):
    csv_path = _write(tmp_path / "faces.csv", "image_path,x1,y1,w,width,height\na.jpg,1,2,3,100,100\n")
    with pytest.raises(AnnotationError, match=_location(csv_path, 1) + r"missing column\(s\) h;"):
        read_csv(csv_path)


def test_csv_duplicate_rows_dropped_with_warning(tmp_path):
    row = "a.jpg,10,20,30,40,100,100\n"
    csv_path = _write(tmp_path / "faces.csv", CSV_HEADER + row + "a.jpg,1,1,5,5,100,100\n" + row + row)
    duplicates = "dropped 2 duplicate row(s): line 4 repeats line 2, line 5 repeats line 2"
    with pytest.warns(UserWarning, match=re.escape(f"{csv_path}: {duplicates}")):
        annotations = read_csv(csv_path)
    np.testing.assert_array_equal(annotations[0].boxes, [[10, 20, 40, 60], [1, 1, 6, 6]])


def test_split_by_image_is_disjoint_complete_and_deterministic(tmp_path):
    rows = "".join(f"img_{index:02d}.jpg,1,1,5,5,50,50\nimg_{index:02d}.jpg,10,10,5,5,50,50\n" for index in range(20))
    annotations = read_csv(_write(tmp_path / "faces.csv", CSV_HEADER + rows))
    train, val = split_by_image(annotations, val_fraction=0.25, seed=3)
    train_images = {annotation.image_path for annotation in train}
    val_images = {annotation.image_path for annotation in val}
    assert len(val_images) == 5 and len(train_images) == 15
    assert not train_images & val_images
    assert train_images | val_images == {annotation.image_path for annotation in annotations}
    reshuffled_train, reshuffled_val = split_by_image(annotations[::-1], val_fraction=0.25, seed=3)
    assert {annotation.image_path for annotation in reshuffled_val} == val_images
    assert {annotation.image_path for annotation in split_by_image(annotations, 0.25, seed=4)[1]} != val_images
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_image(annotations, val_fraction=1.0)


# ---------------------------------------------------------------- WIDER FACE txt

WIDER_GOOD = """\
0--Parade/a.jpg
3
10 20 30 40 0 0 0 0 0 0
5 5 10 10 2 0 0 1 0 0
50 60 0 8 0 0 0 0 0 0
0--Parade/empty.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/b.jpg
1
1 2 3 4 0 0 0 0 0 0
"""


def test_wider_txt_reads_and_warns_once_about_dropped_boxes(tmp_path):
    txt = _write(tmp_path / "wider_face_train_bbx_gt.txt", WIDER_GOOD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        annotations = read_wider_txt(txt, tmp_path / "images")
    assert [str(warning.message) for warning in caught] == [
        f"{txt}: dropped 2 boxes (1 flagged invalid, 1 of zero or negative size)"
    ]
    assert [annotation.image_path.relative_to(tmp_path / "images").as_posix() for annotation in annotations] == [
        "0--Parade/a.jpg", "0--Parade/empty.jpg", "1--Handshaking/b.jpg"
    ]
    np.testing.assert_array_equal(annotations[0].boxes, [[10, 20, 40, 60]])
    assert annotations[1].boxes.shape == (0, 4)
    np.testing.assert_array_equal(annotations[2].boxes, [[1, 2, 4, 6]])
    for annotation in annotations:
        _assert_well_formed(annotation)


@pytest.mark.parametrize(
    "text, line, problem",
    [
        # Count says 2, one box follows, then the next image: its path is read as face 2.
        ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\nb.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n", 4,
         "expected face 2 of 2 of a.jpg, found 'b.jpg': the face count of a.jpg on line 2 is larger"),
        # Count says 1, two boxes follow: the second box is where an image path should be.
        ("a.jpg\n\n1\n1 2 3 4 0 0 0 0 0 0\n5 6 7 8 0 0 0 0 0 0\nb.jpg\n", 5,
         "the face count of a.jpg on line 3 is smaller"),
        ("a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n", 3, "file ends after line 3, expected face 2 of 3 of a.jpg"),
        ("a.jpg\n", 1, "file ends after line 1, expected the face count of a.jpg"),
        ("a.jpg\nthree\n1 2 3 4 0 0 0 0 0 0\n", 2, "expected the face count of a.jpg, found 'three'"),
        ("a.jpg\n1\n1 2 3 4 0 0\n", 3, "expected 10 numbers"),
        ("a.jpg\n1\n1 2 x 4 0 0 0 0 0 0\n", 3, "face 1 of 1 of a.jpg: 'x' is not a number"),
        ("a.jpg\n0\n1 2 3 4 0 0 0 0 0 0\n", 3, "a.jpg has 0 faces, so a line of zeros must follow"),
    ],
)
def test_wider_txt_malformed_names_file_and_line(tmp_path, text, line, problem):
    txt = _write(tmp_path / "gt.txt", text)
    with pytest.raises(AnnotationError, match=_location(txt, line) + ".*" + re.escape(problem)):
        read_wider_txt(txt, tmp_path)


# ---------------------------------------------------------------- RetinaFace label.txt


def test_retinaface_train_label_with_landmarks(tmp_path):
    with_landmarks = "10 20 30 40 " + " ".join(f"{11 + i}.5 {25 + i}.0 0.0" for i in range(5)) + " 0.9"
    without = "60 60 10 10 " + " ".join(["-1.0 -1.0 -1.0"] * 5) + " -1.0"
    label = _write(tmp_path / "label.txt", f"# 0--Parade/a.jpg\n{with_landmarks}\n{without}\n# 1--Handshaking/b.jpg\n")
    annotations = read_retinaface_label(label, tmp_path / "images")
    assert [len(annotation.boxes) for annotation in annotations] == [2, 0]
    assert annotations[0].image_path == tmp_path / "images/0--Parade/a.jpg"
    np.testing.assert_array_equal(annotations[0].boxes, [[10, 20, 40, 60], [60, 60, 70, 70]])
    np.testing.assert_array_equal(annotations[0].landmarks[0], [[11.5 + i, 25 + i] for i in range(5)])
    assert np.isnan(annotations[0].landmarks[1]).all()
    for annotation in annotations:
        _assert_well_formed(annotation)


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("10 20 30 40\n", 1, "face line before the first '# image path' line"),
        ("# a.jpg\n10 20 30 40\n10 20 30 40 1 2\n", 3, "expected 4 numbers (x y w h) or 20"),
        ("# a.jpg\n10 20 x 40\n", 2, "'x' is not a number"),
        ("# a.jpg\n#\n", 2, "'#' line without an image path"),
    ],
)
def test_retinaface_label_malformed_names_file_and_line(tmp_path, text, line, problem):
    label = _write(tmp_path / "label.txt", text)
    with pytest.raises(AnnotationError, match=_location(label, line) + ".*" + re.escape(problem)):
        read_retinaface_label(label, tmp_path)


# ---------------------------------------------------------------- COCO


def _coco(images, annotations) -> str:
    return json.dumps({"images": images, "annotations": annotations}, indent=1)


def test_coco_boxes_keypoints_and_crowd(tmp_path):
    keypoints = [12, 25, 2, 30, 25, 2, 0, 0, 0, 14, 50, 1, 28, 50, 2]
    json_path = _write(
        tmp_path / "faces.json",
        _coco(
            [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "none.jpg"}],
            [
                {"id": 1, "image_id": 7, "bbox": [10, 20, 30, 40], "keypoints": keypoints},
                {"id": 2, "image_id": 7, "bbox": [50, 50, 80, 60], "iscrowd": 1},
            ],
        ),
    )
    annotations = read_coco(json_path, tmp_path / "images")
    assert [annotation.image_path.name for annotation in annotations] == ["a.jpg", "none.jpg"]
    face = annotations[0]
    np.testing.assert_array_equal(face.boxes, [[10, 20, 40, 60], [50, 50, 130, 110]])
    np.testing.assert_array_equal(face.ignore, [False, True])
    np.testing.assert_array_equal(face.landmarks[0, [0, 1, 3, 4]], [[12, 25], [30, 25], [14, 50], [28, 50]])
    assert np.isnan(face.landmarks[0, 2]).all() and np.isnan(face.landmarks[1]).all()
    assert annotations[1].boxes.shape == (0, 4)
    for annotation in annotations:
        _assert_well_formed(annotation)


def test_coco_dangling_image_id(tmp_path):
    json_path = _write(
        tmp_path / "faces.json",
        _coco([{"id": 1, "file_name": "a.jpg"}], [{"id": 5, "image_id": 2, "bbox": [1, 2, 3, 4]}]),
    )
    with pytest.raises(AnnotationError, match=re.escape(f"{json_path}: annotations[0] (id 5) refers to image_id 2")):
        read_coco(json_path, tmp_path)


@pytest.mark.parametrize(
    "bbox, problem",
    [([1, 2, 3], "expected a list of 4 finite numbers"), ([1, 2, "3", 4], "expected a list of 4 finite numbers")],
)
def test_coco_bad_bbox(tmp_path, bbox, problem):
    coco = _coco([{"id": 1, "file_name": "a.jpg"}], [{"image_id": 1, "bbox": bbox}])
    json_path = _write(tmp_path / "faces.json", coco)
    with pytest.raises(AnnotationError, match=re.escape(f"{json_path}: annotations[0].bbox: {problem}")):
        read_coco(json_path, tmp_path)


def test_coco_invalid_json_names_line(tmp_path):
    json_path = _write(tmp_path / "faces.json", '{\n "images": [],\n "annotations": [,]\n}\n')
    with pytest.raises(AnnotationError, match=_location(json_path, 3) + "invalid JSON"):
        read_coco(json_path, tmp_path)


# ---------------------------------------------------------------- dlib XML


def _ibug68_part_lines(box_left: float, box_top: float) -> str:
    """68 parts of a frontal face in a 100 px box, iBUG order: 36-41 image-left eye, 48 image-left mouth corner."""
    points = np.full((68, 2), 50.0)
    points[36:42] = [[25, 40], [30, 37], [35, 37], [40, 40], [35, 43], [30, 43]]  # centre (32.5, 40)
    points[42:48] = [[60, 40], [65, 37], [70, 37], [75, 40], [70, 43], [65, 43]]  # centre (67.5, 40)
    points[30] = [50, 60]
    points[48], points[54] = [35, 75], [65, 75]
    points += [box_left, box_top]
    return "".join(f"<part name='{index:02d}' x='{x:g}' y='{y:g}'/>\n" for index, (x, y) in enumerate(points))


def test_dlib_xml_ignore_and_landmarks_from_68_parts(tmp_path):
    xml = _write(
        tmp_path / "faces.xml",
        "<?xml version='1.0'?>\n<dataset><images>\n<image file='sub/a.jpg'>\n"
        f"<box top='10' left='20' width='100' height='100'>\n{_ibug68_part_lines(20, 10)}</box>\n"
        "<box top='0' left='0' width='5' height='6' ignore='1'/>\n"
        "</image>\n<image file='b.jpg'/>\n</images></dataset>\n",
    )
    annotations = read_dlib_xml(xml)
    assert [annotation.image_path for annotation in annotations] == [tmp_path / "sub/a.jpg", tmp_path / "b.jpg"]
    face = annotations[0]
    np.testing.assert_array_equal(face.boxes, [[20, 10, 120, 110], [0, 0, 5, 6]])
    np.testing.assert_array_equal(face.ignore, [False, True])
    np.testing.assert_allclose(face.landmarks[0], [[52.5, 50], [87.5, 50], [70, 70], [55, 85], [85, 85]])
    assert np.isnan(face.landmarks[1]).all()
    assert annotations[1].boxes.shape == (0, 4)
    for annotation in annotations:
        _assert_well_formed(annotation)


@pytest.mark.parametrize(
    "box, line, problem",
    [
        ("<box top='1' left='2' width='3' height='4'>", 4, "malformed XML: mismatched tag"),
        ("<box top='1' left='2' width='3'/>", 3, "<box> lacks the attribute 'height'"),
        ("<box top='1' left='x' width='3' height='4'/>", 3, "'x' is not a number"),
        ("<box top='1' left='2' width='0' height='4'/>", 3, "box size must be positive"),
        ("<box top='1' left='2' width='3' height='4' ignore='yes'/>", 3, "must be '0' or '1'"),
    ],
)
def test_dlib_xml_malformed_names_file_and_line(tmp_path, box, line, problem):
    text = f"<dataset><images>\n<image file='a.jpg'>\n{box}\n</image>\n</images></dataset>\n"
    xml = _write(tmp_path / "faces.xml", text)
    with pytest.raises(AnnotationError, match=_location(xml, line) + ".*" + re.escape(problem)):
        read_dlib_xml(xml)


def test_dlib_xml_image_without_file(tmp_path):
    xml = _write(tmp_path / "faces.xml", "<dataset><images>\n<image>\n</image>\n</images></dataset>\n")
    with pytest.raises(AnnotationError, match=_location(xml, 2) + re.escape("<image> lacks the attribute 'file'")):
        read_dlib_xml(xml)


# ---------------------------------------------------------------- dispatch


def test_read_annotations_dispatches_on_extension_and_content(tmp_path):
    (tmp_path / "csv").mkdir()
    csv_path = _write(tmp_path / "csv/faces.csv", CSV_HEADER + "a.jpg,1,2,3,4,10,10\n")
    xml = _write(tmp_path / "faces.xml", "<dataset><images><image file='a.jpg'/></images></dataset>")
    coco = _write(tmp_path / "faces.json", _coco([{"id": 1, "file_name": "c.jpg"}], []))
    wider = _write(tmp_path / "gt.txt", "w.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n")
    retinaface = _write(tmp_path / "label.txt", "# r.jpg\n1 2 3 4\n")
    assert [detect_format(path) for path in (csv_path, xml, coco, wider, retinaface)] == [
        "csv", "dlib", "coco", "wider", "retinaface"
    ]
    assert read_annotations(csv_path)[0].image_path == tmp_path / "csv/a.jpg"
    assert read_annotations(xml)[0].image_path == tmp_path / "a.jpg"
    root = tmp_path / "images"
    assert read_annotations(coco, root)[0].image_path == root / "c.jpg"
    assert read_annotations(wider, root)[0].image_path == root / "w.jpg"
    assert read_annotations(retinaface, root)[0].image_path == root / "r.jpg"
    with pytest.raises(AnnotationError, match=_location(retinaface, 2) + "expected the face count of # r.jpg"):
        read_annotations(retinaface, root, fmt="wider")  # an explicit fmt wins over detection


def test_read_annotations_clear_errors(tmp_path):
    unknown = _write(tmp_path / "faces.yaml", "faces: []\n")
    with pytest.raises(AnnotationError, match=re.escape(f"{unknown}: unknown annotation format '.yaml'")):
        read_annotations(unknown)
    wider = _write(tmp_path / "gt.txt", "w.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=re.escape(f"{wider}: wider annotations need data_root")):
        read_annotations(wider)
    with pytest.raises(ValueError, match="unknown annotation format 'voc'"):
        read_annotations(wider, tmp_path, fmt="voc")
    xml = _write(tmp_path / "faces.xml", "<dataset/>")
    with pytest.raises(ValueError, match="data_root is not used"):
        read_annotations(xml, tmp_path)
