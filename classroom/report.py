"""What ``attendance.py mark`` writes: CSV, JSON, annotated photos and a self-contained HTML report, with advice
when faces too small to identify were left unknown (``small_face_advice``)."""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import cv2
import numpy as np

PRESENT_COLOUR, UNKNOWN_COLOUR = (0, 200, 0), (0, 0, 230)  # BGR


def write_csv(path: Path, marks: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "present", "score", "photo", "box"])
        for mark in marks:
            writer.writerow([mark["student"], int(mark["present"]), "" if mark["score"] is None else mark["score"],
                             mark["photo"] or "", "" if mark["box"] is None else " ".join(map(str, mark["box"]))])


def write_json(path: Path, marks: list[dict], unknown_faces: int, **extra) -> dict:
    result = {"present": [m["student"] for m in marks if m["present"]],
              "absent": [m["student"] for m in marks if not m["present"]],
              "unknown_faces": unknown_faces, "marks": marks, **extra}
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def annotate(image_rgb: np.ndarray, photo_marks, names: list[str]) -> np.ndarray:
    """BGR image: assigned faces boxed green with the student's name and score, unknown faces red."""
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 600))
    labels = {face: (names[student], float(photo_marks.scores[face, student])) for face, student in photo_marks.pairs}
    for face, box in enumerate(photo_marks.detections.boxes.round().int().tolist()):
        colour = PRESENT_COLOUR if face in labels else UNKNOWN_COLOUR
        text = f"{labels[face][0]} {labels[face][1]:.2f}" if face in labels else "unknown"
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colour, thickness)
        cv2.putText(canvas, text, (box[0], max(12, box[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour,
                    thickness)
    return canvas


def face_rows(boxes: np.ndarray) -> list[np.ndarray]:
    """Indexes of ``boxes`` (N, 4) grouped into rows of seats: sorted by centre height, a new row where the gap to
    the previous face exceeds half the taller one's height."""
    if len(boxes) == 0:
        return []
    centres = (boxes[:, 1] + boxes[:, 3]) / 2
    heights = boxes[:, 3] - boxes[:, 1]
    order = np.argsort(centres)
    rows = [[order[0]]]
    for previous, face in zip(order, order[1:]):
        if centres[face] - centres[previous] > 0.5 * max(heights[face], heights[previous]):
            rows.append([])
        rows[-1].append(face)
    return [np.array(row) for row in rows]


def small_face_advice(photo_marks: list, marks: list[dict], reliable_px: float, heights: list[int]) -> dict | None:
    """When students are still absent and faces narrower than ``reliable_px`` (the width from which the classroom
    benchmark identifies reliably) stayed unknown: those faces' rows in each photo (``heights``: the photos' heights
    in px), and a message asking for a closer photo of them. None otherwise."""
    absent = sum(not mark["present"] for mark in marks)
    if not absent:
        return None
    rows = []
    for item, height in zip(photo_marks, heights):
        small = [face for face in item.unknown if item.face_px[face] < reliable_px]
        boxes = item.detections.boxes.numpy()[small]
        for row in face_rows(boxes):
            top, bottom = float(boxes[row, 1].min()), float(boxes[row, 3].max())
            rows.append({"photo": item.photo, "faces": len(row), "top_px": round(top), "bottom_px": round(bottom),
                         "from_top": [round(top / height, 2), round(bottom / height, 2)],
                         "face_px": round(float(np.median(item.face_px[np.array(small)[row]])), 1)})
    if not rows:
        return None
    where = "; ".join(f"{row['photo']}: {row['faces']} faces about {row['face_px']:g} px wide, "
                      f"{row['from_top'][0]:.0%}-{row['from_top'][1]:.0%} of the height from the top"
                      for row in rows)
    message = (f"{sum(row['faces'] for row in rows)} unknown faces are narrower than {reliable_px:g} px, too small "
               f"to identify reliably, and {absent} students are not marked ({where}): take a closer photo of "
               "these rows and mark it in the same session")
    return {"reliable_face_px": reliable_px, "rows": rows, "message": message}


def _thumbnail(chip_rgb: np.ndarray, size: int = 96) -> str:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(chip_rgb, (size, size)), cv2.COLOR_RGB2BGR))
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else ""


def _advice_html(advice: dict | None) -> str:
    return f'<p class="advice"><strong>{html.escape(advice["message"])}</strong></p>' if advice else ""


def _closest(face_scores: np.ndarray, names: list[str], count: int = 2) -> str:
    """Caption lines naming the students an unmatched face is closest to: the teacher's candidates when the face was
    left unknown for being about as close to two students."""
    order = np.argsort(face_scores)[::-1][:count]
    return "".join(f"<br>{html.escape(names[student])} {face_scores[student]:.3f}" for student in order)


def write_html(path: Path, class_name: str, session: str, marks: list[dict], photo_marks: list, names: list[str],
               threshold: float, advice: dict | None = None) -> None:
    """One HTML file with every image inlined: present students with the face that matched, absent students, and
    the faces no student matched. Every name is escaped."""
    matched = {}
    for item in photo_marks:
        for face, student in item.pairs:
            score = float(item.scores[face, student])
            if names[student] not in matched or score > matched[names[student]][0]:
                matched[names[student]] = (score, item.chips[face])
    rows = []
    for mark in marks:
        name = html.escape(mark["student"])
        if mark["present"]:
            image = f'<img src="{_thumbnail(matched[mark["student"]][1])}" alt="{name}">'
            rows.append(f'<tr class="present"><td>{image}</td><td>{name}</td><td>present</td>'
                        f'<td>{mark["score"]:.3f}</td><td>{html.escape(mark["photo"])}</td></tr>')
        else:
            best = "" if mark["score"] is None else f"best {mark['score']:.3f}"
            rows.append(f'<tr class="absent"><td></td><td>{name}</td><td>absent</td><td>{best}</td><td></td></tr>')
    unknown = "".join(f'<figure><img src="{_thumbnail(item.chips[face])}" alt="unknown face">'
                      f'<figcaption>{html.escape(item.photo)}{_closest(item.scores[face], names)}</figcaption></figure>'
                      for item in photo_marks for face in item.unknown)
    present = sum(m["present"] for m in marks)
    unmatched = sum(len(item.unknown) for item in photo_marks)
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Attendance {html.escape(class_name)} {html.escape(session)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td{{padding:4px 10px;
border-bottom:1px solid #ddd}} tr.absent{{color:#a00}} figure{{display:inline-block;margin:4px;text-align:center}}
img{{border-radius:4px}}</style></head><body>
<h1>{html.escape(class_name)} — session {html.escape(session)}</h1>
<p>{present} of {len(marks)} students present; {unmatched} unmatched faces; unknown threshold {threshold:.3f}
(cosine, a full-size face's; smaller faces are held to their own).</p>{_advice_html(advice)}
<table><tr><th></th><th>student</th><th>mark</th><th>score</th><th>photo</th></tr>{''.join(rows)}</table>
<h2>Faces that matched no student</h2><div>{unknown or '<p>none</p>'}</div>
</body></html>""", encoding="utf-8")
