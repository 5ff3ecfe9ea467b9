"""The web app's routes. Pages are rendered on the server (Jinja2 templates, every value escaped); no JavaScript.

URLs name classes and sessions by their database id, so no name becomes part of a URL or a file path. A request's
uploads together are refused over ``web.max_upload_mb`` (413) and every photo is decoded by its content. A request
that fails changes nothing: each step's database writes are one transaction, and a session's files are moved into
place only once its marks are stored. POSTs from another site's page are refused (the app has no login, so the
Origin header is its only defence against a page that submits forms to localhost).
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from common.errors import InputError, UserError
from common.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from classroom.service import (RATE_FIELDS, RATES_PNG, AttendanceService, MarkResult, annotated_name,
                                         attendance_rates, check_student_name, default_database, iso_date, plot_rates,
                                         rates_title)

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))  # autoescapes .html templates
MEGABYTE = 1 << 20
MAX_NAME_CHARS = 60       # class, student and session names (60 UTF-8 characters fit a 255-byte folder name)
MAX_FILE_NAME_CHARS = 80  # of an uploaded photo's name as kept in the database and the session's folder
UNSAFE_FILE_CHARS = re.compile(r"[^\w.\- ]", re.ASCII)  # ASCII: 80 characters stay under 255 bytes
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet evaluates a cell starting so: quote it
MARK_FIELDS = ["date", "session", "student", "present", "score", "corrected"]
REASON_MISSED, REASON_WRONG, REASON_ABSENT = "missed student", "wrong student", "not in the room"
MANIFEST = "manifest.json"
SECURITY_HEADERS = {  # even a value that escaped escaping could not run a script
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make the browser send "Origin: null" with forms
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class AttendanceWeb:
    """The app's state: config, database path, the folder of the sessions' photos, and the pipelines (built once,
    shared by the request threads and run by one request at a time)."""

    def __init__(self, cfg: dict, db_path=None, pipelines: dict | None = None, verbose: bool = False):
        self.cfg = cfg
        self.db_path = Path(db_path) if db_path else default_database(cfg)
        web = cfg["web"]
        self.data_dir = Path(web["data_dir"]) if web["data_dir"] else self.db_path.with_name(f"{self.db_path.stem}_web")
        self.max_bytes = int(web["max_upload_mb"] * MEGABYTE)
        self.max_files = web["max_files"]
        self.pipelines = {} if pipelines is None else pipelines
        self.verbose = verbose
        self.pipeline_lock = threading.Lock()

    @contextmanager
    def service(self):
        """An AttendanceService with this request's own database connection (SQLite connections stay in their
        thread) and the shared pipelines."""
        service = AttendanceService(self.cfg, self.db_path, self.verbose, self.pipelines)
        try:
            yield service
        finally:
            service.close()

    def session_dir(self, class_id: int, session_id: int) -> Path:
        return self.data_dir / f"class_{class_id}" / f"session_{session_id}"

    def save_uploads(self, uploads: list[UploadFile], folder: Path) -> list[tuple[str, Path]]:
        """The files written under ``folder`` with safe, distinct names: [(name as uploaded, path)]."""
        if len(uploads) > self.max_files:
            raise InputError(f"{len(uploads)} photos in one upload; at most {self.max_files} (web.max_files)")
        saved, taken = [], set()
        for upload in uploads:
            path = folder / stored_name(upload.filename or "photo", taken)
            with path.open("wb") as handle:
                shutil.copyfileobj(upload.file, handle)
            saved.append((upload.filename, path))
        return saved

    def uploads(self, class_id: int, session_id: int) -> list[dict]:
        """The manifests of a session's uploads, oldest first, each with its ``number``."""
        manifests = []
        for path in sorted(self.session_dir(class_id, session_id).glob(f"upload_*/{MANIFEST}")):
            manifest = json.loads(path.read_text(encoding="utf-8"))
            manifest["number"] = int(path.parent.name.removeprefix("upload_"))
            manifests.append(manifest)
        return manifests


def stored_name(filename: str, taken: set[str]) -> str:
    """A file name that is safe on disk from an upload's name: its last component with odd characters replaced, an
    image extension appended when it has none (the content decides the format anyway), distinct from ``taken``."""
    name = UNSAFE_FILE_CHARS.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1])
    name = name[-MAX_FILE_NAME_CHARS:].strip(" .") or "photo"
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        name += ".jpg"
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{Path(name).stem}_{number}{Path(name).suffix}"
    taken.add(candidate.lower())
    return candidate


def reason(error_text: str, path: Path) -> str:
    """An error message about a saved upload without the server's temporary path."""
    return error_text.removeprefix(f"{path}: ")


def decode_photos(saved: list[tuple[str, Path]]) -> list[tuple[str, np.ndarray]]:
    """[(stored name, RGB array)]; a file that is not an image fails the request, naming it as uploaded."""
    images = []
    for shown, path in saved:
        try:
            images.append((path.name, read_image(path)))
        except ImageReadError as error:
            raise ImageReadError(f"{shown}: {reason(str(error), path)}") from None
    return images


def checked_name(value: str, what: str) -> str:
    name = value.strip()
    if not name:
        raise InputError(f"the {what} is empty")
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InputError(f"the {what} must be at most {MAX_NAME_CHARS} printable characters")
    return name


def write_manifest(out: Path, result: MarkResult) -> None:
    """The unknown faces' aligned chips as JPEGs, and ``manifest.json``: the photos with their annotated copies and
    the unknown faces with the student each resembles most (under the threshold)."""
    photos, unknown = [], []
    for item in result.photos:
        photos.append({"name": item.photo, "annotated": annotated_name(item.photo), "faces": len(item.detections)})
        for face in item.unknown:
            name = f"unknown_{len(unknown) + 1:03d}.jpg"
            cv2.imwrite(str(out / name), cv2.cvtColor(item.chips[face], cv2.COLOR_RGB2BGR))
            nearest = int(item.scores[face].argmax()) if item.scores.shape[1] else None
            unknown.append({"file": name, "photo": item.photo,
                            "nearest": None if nearest is None else result.names[nearest],
                            "score": None if nearest is None else round(float(item.scores[face, nearest]), 3)})
    advice = result.summary.get("small_faces")
    (out / MANIFEST).write_text(json.dumps({"photos": photos, "unknown": unknown,
                                            "advice": advice["message"] if advice else None},
                                           indent=2, ensure_ascii=False), encoding="utf-8")


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text: a string starting like a formula gets a leading quote."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_response(rows: list[dict], fields: list[str], filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def mark_rows(marks: list[dict]) -> list[dict]:
    return [{**mark, "present": int(mark["present"]), "corrected": int(mark["corrected"]),
             "score": "" if mark["score"] is None else round(mark["score"], 4)} for mark in marks]


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def create_app(cfg: dict, db_path=None, pipelines: dict | None = None, verbose: bool = False) -> FastAPI:
    """The app over ``db_path`` (default: the config's database). ``pipelines`` ({"enroll": ..., "mark": ...})
    replaces the configured ones (tests)."""
    web = AttendanceWeb(cfg, db_path, pipelines, verbose)
    app = FastAPI(title="Attendance", docs_url=None, redoc_url=None, openapi_url=None, max_body_size=web.max_bytes)
    app.state.web = web

    def page(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)

    def error_page(request: Request, status: int, message: str) -> HTMLResponse:
        print(f"{request.method} {request.url.path}: {status} {message}", file=sys.stderr)  # the server's log
        return page(request, "error.html", status, status=status, message=message)

    def class_name(service: AttendanceService, class_id: int) -> str:
        name = service.db.classes().get(class_id)
        if name is None:
            raise HTTPException(404, f"there is no class number {class_id}")
        return name

    def find_session(service: AttendanceService, name: str, session_id: int) -> dict:
        for session in service.db.sessions(name):
            if session["id"] == session_id:
                return session
        raise HTTPException(404, f"class {name!r} has no session number {session_id}")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method == "POST" and not same_origin(request):
            return PlainTextResponse("cross-site form submissions are refused", status_code=403)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(UserError)  # GalleryError, ImageReadError, bad form values: for the teacher to fix
    async def bad_request(request: Request, error: UserError):
        return error_page(request, 400, str(error))

    @app.exception_handler(FileNotFoundError)  # models or weights missing: the server's setup, not the teacher's
    async def missing_file(request: Request, error: FileNotFoundError):
        return error_page(request, 500, f"the server is not set up: {error}")

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, error: RequestValidationError):
        fields = ", ".join(sorted({str(item["loc"][1]) for item in error.errors() if len(item["loc"]) > 1}))
        return error_page(request, 422, f"missing or invalid form fields: {fields}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_page(request, error.status_code, error.detail)

    # ------------------------------------------------------------------ classes
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        with web.service() as service:
            classes = service.db.classes()
        return page(request, "index.html", classes=classes, database=web.db_path)

    @app.post("/classes")
    def create_class(name: str = Form(...)):
        name = checked_name(name, "class name")
        with web.service() as service, web.pipeline_lock:  # the enrolment pipeline names the class's embedder
            class_id = service.create_class(name)
        return RedirectResponse(f"/classes/{class_id}", status_code=303)

    @app.get("/classes/{class_id}", response_class=HTMLResponse)
    def class_page(request: Request, class_id: int):
        with web.service() as service:
            name = class_name(service, class_id)
            gallery = service.db.gallery(name)
            sessions = service.db.sessions(name)
        students = [(student, int((gallery.owners == index).sum())) for index, student in enumerate(gallery.names)]
        return page(request, "class.html", class_id=class_id, name=name, students=students, sessions=sessions,
                    today=dt.date.today().isoformat(), max_mb=web.max_bytes / MEGABYTE, max_files=web.max_files)

    @app.post("/classes/{class_id}/enroll", response_class=HTMLResponse)
    def enroll(request: Request, class_id: int, student: str = Form(...), photos: list[UploadFile] = File(...)):
        student = check_student_name(checked_name(student, "student name"))
        with web.service() as service, tempfile.TemporaryDirectory() as roster:
            name = class_name(service, class_id)
            folder = Path(roster) / student
            folder.mkdir()
            saved = web.save_uploads(photos, folder)
            with web.pipeline_lock:
                result = service.enroll(name, Path(roster))
            rejected = {Path(photo).name: reason(text, Path(photo)) for photo, text in result.rejected}
        checks = [{"photo": shown, "ok": path.name not in rejected, "message": rejected.get(path.name, "accepted")}
                  for shown, path in saved]
        return page(request, "enrolled.html", 200 if result.enrolled else 422, class_id=class_id, name=name,
                    student=student, checks=checks, warnings=result.warnings, enrolled=result.enrolled.get(student, 0))

    # ------------------------------------------------------------------ sessions
    @app.post("/classes/{class_id}/mark")
    def mark(class_id: int, photos: list[UploadFile] = File(...), date: str = Form(""), session: str = Form("")):
        date = iso_date(date.strip() or None, "the date") or dt.date.today().isoformat()
        key = checked_name(session, "session name") if session.strip() else date
        with web.service() as service, tempfile.TemporaryDirectory() as uploads:
            name = class_name(service, class_id)
            images = decode_photos(web.save_uploads(photos, Path(uploads)))
            class_dir = web.data_dir / f"class_{class_id}"
            class_dir.mkdir(parents=True, exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=".incoming_", dir=class_dir))
            try:
                with web.pipeline_lock:  # one mark at a time also numbers the session's uploads without a race
                    result = service.mark_images(name, images, key, date, out)
                    write_manifest(out, result)
                    session_dir = web.session_dir(class_id, result.session_id)
                    session_dir.mkdir(exist_ok=True)
                    out.rename(session_dir / f"upload_{len(list(session_dir.glob('upload_*'))) + 1:03d}")
            finally:
                shutil.rmtree(out, ignore_errors=True)  # still there only when the request failed
        return RedirectResponse(f"/classes/{class_id}/sessions/{result.session_id}", status_code=303)

    @app.get("/classes/{class_id}/sessions/{session_id}", response_class=HTMLResponse)
    def session_page(request: Request, class_id: int, session_id: int):
        with web.service() as service:
            name = class_name(service, class_id)
            session = find_session(service, name, session_id)
            marks = [mark for mark in service.db.session_marks(name, session["date"], session["date"])
                     if mark["session"] == session["session"]]
            corrections = service.db.corrections(name, session["session"])
            students = service.db.gallery(name).names
        return page(request, "session.html", class_id=class_id, name=name, session=session, marks=marks,
                    present=sum(mark["present"] for mark in marks), corrections=corrections, students=students,
                    uploads=web.uploads(class_id, session_id))

    @app.get("/classes/{class_id}/sessions/{session_id}/uploads/{number}/{file_name}")
    def session_file(class_id: int, session_id: int, number: int, file_name: str):
        for upload in web.uploads(class_id, session_id):
            listed = {photo["annotated"] for photo in upload["photos"]} | {face["file"] for face in upload["unknown"]}
            if upload["number"] == number and file_name in listed:
                return FileResponse(web.session_dir(class_id, session_id) / f"upload_{number:03d}" / file_name,
                                    media_type="image/jpeg")
        raise HTTPException(404, "no such photo")

    @app.post("/classes/{class_id}/sessions/{session_id}/correct")
    def correct(class_id: int, session_id: int, student: str = Form(...), change: str = Form(...),
                actual: str = Form("")):
        """``change`` "present": a missed student; "absent" with ``actual``: the face was ``actual``'s (wrong
        student); "absent" alone: the student was not there."""
        with web.service() as service:
            name = class_name(service, class_id)
            key = find_session(service, name, session_id)["session"]
            if change == "present":
                service.db.correct_marks(name, key, {student: True}, REASON_MISSED)
            elif change == "absent" and actual:
                if actual == student:
                    raise InputError(f"{student!r} cannot replace themself")
                service.db.correct_marks(name, key, {student: False, actual: True}, REASON_WRONG)
            elif change == "absent":
                service.db.correct_marks(name, key, {student: False}, REASON_ABSENT)
            else:
                raise InputError(f"change must be 'present' or 'absent', got {change!r}")
        return RedirectResponse(f"/classes/{class_id}/sessions/{session_id}", status_code=303)

    @app.get("/classes/{class_id}/sessions/{session_id}/attendance.csv")
    def session_csv(class_id: int, session_id: int):
        with web.service() as service:
            name = class_name(service, class_id)
            session = find_session(service, name, session_id)
            marks = [mark for mark in service.db.session_marks(name, session["date"], session["date"])
                     if mark["session"] == session["session"]]
        return csv_response(mark_rows(marks), MARK_FIELDS, f"class{class_id}_session{session_id}.csv")

    # ------------------------------------------------------------------ history
    def dates(date_from: str, date_to: str) -> tuple[str | None, str | None]:
        return iso_date(date_from.strip() or None, "from"), iso_date(date_to.strip() or None, "to")

    @app.get("/classes/{class_id}/history", response_class=HTMLResponse)
    def history(request: Request, class_id: int, date_from: str = Query("", alias="from"),
                date_to: str = Query("", alias="to")):
        start, end = dates(date_from, date_to)
        with web.service() as service:
            name = class_name(service, class_id)
            marks = service.db.session_marks(name, start, end)
            corrections = service.db.corrections(name)
        rates = attendance_rates(marks)
        chart = None
        if marks:
            with tempfile.TemporaryDirectory() as out:
                plot_rates(rates, Path(out) / RATES_PNG, rates_title(name, marks))
                chart = base64.b64encode((Path(out) / RATES_PNG).read_bytes()).decode()
        sessions = sorted({(mark["date"], mark["session"]) for mark in marks})
        corrections = [entry for entry in corrections if (entry["date"], entry["session"]) in sessions]
        grid = {rate["student"]: {} for rate in rates}
        for mark in marks:
            grid[mark["student"]][(mark["date"], mark["session"])] = mark
        return page(request, "history.html", class_id=class_id, name=name, sessions=sessions, rates=rates, grid=grid,
                    chart=chart, corrections=corrections, date_from=start or "", date_to=end or "")

    @app.get("/classes/{class_id}/attendance.csv")
    def history_csv(class_id: int, date_from: str = Query("", alias="from"), date_to: str = Query("", alias="to")):
        start, end = dates(date_from, date_to)
        with web.service() as service:
            marks = service.db.session_marks(class_name(service, class_id), start, end)
        return csv_response(mark_rows(marks), MARK_FIELDS, f"class{class_id}_attendance.csv")

    @app.get("/classes/{class_id}/rates.csv")
    def rates_csv(class_id: int, date_from: str = Query("", alias="from"), date_to: str = Query("", alias="to")):
        start, end = dates(date_from, date_to)
        with web.service() as service:
            marks = service.marks_between(class_name(service, class_id), start, end)
        return csv_response(attendance_rates(marks), RATE_FIELDS, f"class{class_id}_rates.csv")

    return app


def serve(cfg: dict, db_path=None, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False) -> None:
    import uvicorn

    app = create_app(cfg, db_path, verbose=verbose)
    if host not in LOOPBACK_HOSTS:
        print(f"warning: listening on {host}: anyone who can reach this computer can read and change the attendance "
              "(the app has no login)")
    print(f"attendance web app: http://{'[' + host + ']' if ':' in host else host}:{port}/  "
          f"(database {app.state.web.db_path}; Ctrl+C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
