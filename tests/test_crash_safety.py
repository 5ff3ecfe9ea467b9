"""Crash safety: ``kill -9`` of training and of the attendance database's writers, damaged checkpoints, concurrent
``mark`` runs, and training stopped by a non-finite loss or gradient.

The kills are real SIGKILLs of real processes: a process that ``torch.save``s in a loop, ``train.py``, and
``attendance.py enroll`` / ``mark``; inside a database transaction the kill comes from SQLite's statement trace,
so it lands between two statements of the same transaction every time.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import train
from common.checkpoint import load_checkpoint
from common.cli import EXIT_USAGE, run_cli
from common.engine import NonFiniteLossError, Trainer, make_loader
from classroom.database import AttendanceDB, EnrolledPhoto, Mark
from tests.blazeface_data import write_face_crops
from tests.conftest import ROOT, shared_path

POLL_S = 0.2
START_TIMEOUT_S = 300  # a loaded CI machine can take minutes to import torch and load the models
KILLED = -signal.SIGKILL
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=SUBPROCESS_ENV, **kwargs)


def start(*args: str, log: Path) -> subprocess.Popen:
    """A script running in the background, stdout and stderr into ``log``."""
    handle = log.open("w")
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                            env=SUBPROCESS_ENV)


def kill_when(process: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail if it ended first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        assert process.poll() is None, f"the process ended (exit {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {START_TIMEOUT_S} s"
        time.sleep(POLL_S)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(60) == KILLED


# ==================================================================== checkpoints
SAVER = """
import sys, torch
from common.checkpoint import atomic_save
step = 0
while True:  # ~40 MB per save, so that a kill lands inside torch.save most of the time
    atomic_save({"model": {"w": torch.full((10_000_000,), float(step))}, "epoch": step}, sys.argv[1])
    step += 1
    print(step, flush=True)
"""


# Kill delays after the first save: each lands inside a later save (one takes ~0.3 s here). With a plain
# torch.save in SAVER, 7 of 10 such kills left a truncated file that no longer loads.
KILL_DELAYS_S = (0.02, 0.1, 0.2, 0.3)


@pytest.mark.slow
def test_kill_9_during_atomic_save_never_leaves_a_half_written_checkpoint(tmp_path):
    path = tmp_path / "model_last.pth"
    log = tmp_path / "saver.log"
    for delay in KILL_DELAYS_S:
        saver = start("-c", SAVER, str(path), log=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not log.read_text().split():
            assert saver.poll() is None and time.monotonic() < deadline, "the saver never saved"
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(saver.pid, signal.SIGKILL)
        assert saver.wait(60) == KILLED
        state = load_checkpoint(path)  # whole, and one of the saves
        assert torch.equal(state["model"]["w"], torch.full((10_000_000,), float(state["epoch"])))
    # what a killed save leaves is a temporary file beside it, never the checkpoint itself
    assert {p.name for p in tmp_path.iterdir() if p.suffix == ".pth"} == {"model_last.pth"}


class ToyImages(Dataset):
    """Six (input, target) pairs whose targets name an image file, like the detection datasets'."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        return torch.tensor([index / 6, 1.0]), {"target": torch.ones(1), "image_path": f"photo_{index}.jpg"}


def collate(batch):
    inputs, targets = zip(*batch)
    return torch.stack(inputs), list(targets)


def mse_step(model, batch):
    inputs, targets = batch
    return {"loss": ((model(inputs) - torch.stack([t["target"] for t in targets])) ** 2).mean()}


def toy_trainer(tmp_path, step_fn, epochs: int, best_mode: str = "min") -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, step_fn, tmp_path / "ckpt",
                   tmp_path / "logs", "Toy", torch.device("cpu"), epochs, config={}, checkpoint_every=0,
                   best_mode=best_mode)


def toy_loader():
    return make_loader(ToyImages(), batch_size=2, shuffle=True, num_workers=0, collate_fn=collate, seed=0)


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    # best_mode max on a falling loss: "best" stays at epoch 1, so only "previous" can stand in for "last"
    toy_trainer(tmp_path, mse_step, epochs=3, best_mode="max").fit(toy_loader())
    ckpt = tmp_path / "ckpt"
    assert [load_checkpoint(ckpt / f"Toy_{tag}.pth")["epoch"] for tag in ("last", "previous", "best")] == [3, 2, 1]
    last = (ckpt / "Toy_last.pth").read_bytes()
    (ckpt / "Toy_last.pth").write_bytes(last[: len(last) // 2])  # cut short, e.g. by a full disk
    (ckpt / ".Toy_last.pth.x1y2z3.tmp").write_bytes(b"left by a killed save")
    resumed = toy_trainer(tmp_path, mse_step, epochs=4, best_mode="max")
    assert not list(ckpt.glob("*.tmp"))  # a killed run's temporary file is cleared away
    path = resumed.auto_resume_path()
    printed = capsys.readouterr().out
    assert "Toy_last.pth is unreadable" in printed and "falling back to an older checkpoint" in printed
    assert path == ckpt / "Toy_previous.pth"
    assert (ckpt / "Toy_last.pth.corrupt").is_file() and not (ckpt / "Toy_last.pth").exists()  # kept aside
    resumed.resume(path)
    assert [record["epoch"] for record in resumed.fit(toy_loader())] == [3, 4]
    assert load_checkpoint(ckpt / "Toy_last.pth")["epoch"] == 4


def test_exploding_gradient_stops_naming_the_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        terms = mse_step(model, batch)
        if calls["n"] == 5:  # epoch 2, batch 1: a finite loss (0 added) whose gradient is infinite (sqrt at 0)
            weight_sum = model.weight.sum()
            terms["loss"] = terms["loss"] + torch.sqrt(weight_sum - weight_sum.detach())
        return terms

    trainer = toy_trainer(tmp_path, step, epochs=3)
    with pytest.raises(NonFiniteLossError) as stopped:
        trainer.fit(toy_loader())
    message = str(stopped.value)
    assert message.startswith("gradient norm is inf at epoch 2, batch 1 (images: photo_")
    assert f"the last good checkpoint is {tmp_path / 'ckpt' / 'Toy_last.pth'}" in message
    kept = load_checkpoint(tmp_path / "ckpt" / "Toy_last.pth")
    assert kept["epoch"] == 1 and all(torch.isfinite(value).all() for value in kept["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # stopped before the update
    rerun = toy_trainer(tmp_path, mse_step, epochs=3)
    rerun.resume(rerun.auto_resume_path())
    assert [record["epoch"] for record in rerun.fit(toy_loader())] == [2, 3]


def test_non_finite_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path):
    def step(model, batch):
        return {"loss": mse_step(model, batch)["loss"] * float("inf"), "box": 1.5}  # a plain float term too

    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 1, batch 0 \(loss=inf, box=1.5\) "
                                                 r"\(images: .*\); .*no checkpoint was written yet"):
        toy_trainer(tmp_path, step, epochs=1).fit(toy_loader())


@pytest.fixture(scope="module")
def crops_csv(tmp_path_factory):
    xml = shared_path("data", "detection", "dlib_faces", "training_with_face_landmarks.xml")
    return write_face_crops(xml, tmp_path_factory.mktemp("crops"), limit=6)


def train_argv(crops_csv: Path, checkpoints: Path, epochs: int) -> list[str]:
    return ["--stage", "detection", "--csv-format", "--train-data", str(crops_csv), "--device", "cpu",
            "--epochs", str(epochs), "--batch-size", "3", "--num-workers", "0", "--checkpoint-dir", str(checkpoints),
            "--log-dir", str(checkpoints.parent / "logs"), "--set", "train.amp=false",
            "--set", "train.checkpoint_every=0", "--set", "model.pretrained=false"]


@pytest.mark.slow
def test_nan_loss_stops_train_py_naming_the_batch_and_a_rerun_resumes(tmp_path, crops_csv, monkeypatch, capsys):
    from detection.blazeface.training import BlazeFaceTask
    checkpoints = tmp_path / "ckpt"
    healthy_step = BlazeFaceTask.step
    calls = {"n": 0}

    def poisoned_step(self, model, batch):
        calls["n"] += 1
        terms = healthy_step(self, model, batch)
        if calls["n"] == 3:  # 5 training crops in batches of 3: epoch 2, batch 0
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(BlazeFaceTask, "step", poisoned_step)
    assert run_cli(train.main, train_argv(crops_csv, checkpoints, epochs=3)) == EXIT_USAGE
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: loss is nan at epoch 2, batch 0 (loss=nan")
    assert "(images: " in error and "crop_0" in error
    assert f"the last good checkpoint is {checkpoints / 'BlazeFace_last.pth'}" in error
    assert load_checkpoint(checkpoints / "BlazeFace_last.pth")["epoch"] == 1
    monkeypatch.setattr(BlazeFaceTask, "step", healthy_step)
    assert run_cli(train.main, train_argv(crops_csv, checkpoints, epochs=3)) == 0
    assert "(epoch 1 done)" in capsys.readouterr().out
    assert load_checkpoint(checkpoints / "BlazeFace_final.pth")["epoch"] == 3


def metrics_epochs(checkpoints: Path) -> list[int]:
    path = checkpoints / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_kill_9_during_training_then_the_rerun_resumes(tmp_path, crops_csv):
    checkpoints = tmp_path / "ckpt"
    argv = ["train.py", *train_argv(crops_csv, checkpoints, epochs=8)]
    trainer = start(*argv, log=tmp_path / "first.log")
    kill_when(trainer, lambda: len(metrics_epochs(checkpoints)) >= 3, "third epoch")
    done = metrics_epochs(checkpoints)[-1]
    # every checkpoint on disk is whole: the kill cannot leave a half-written one
    epochs = {path.name: load_checkpoint(path)["epoch"] for path in checkpoints.glob("*.pth")}
    assert epochs["BlazeFace_last.pth"] in (done - 1, done)  # killed before or after that epoch's save
    assert "BlazeFace_final.pth" not in epochs

    # the last checkpoint damaged too: the rerun says so and falls back to the newest readable one
    last = (checkpoints / "BlazeFace_last.pth").read_bytes()
    (checkpoints / "BlazeFace_last.pth").write_bytes(last[: len(last) // 3])
    fallback = max(("previous", "best"), key=lambda tag: epochs[f"BlazeFace_{tag}.pth"])
    rerun = python(*argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    output = rerun.stdout + rerun.stderr
    assert "Traceback" not in output
    assert "BlazeFace_last.pth is unreadable" in output and "falling back to an older checkpoint" in output
    assert (checkpoints / "BlazeFace_last.pth.corrupt").is_file()
    resumed_epoch = epochs[f"BlazeFace_{fallback}.pth"]
    resumed = [line for line in output.splitlines() if line.startswith("resumed from")]
    assert resumed == [f"resumed from {checkpoints / f'BlazeFace_{fallback}.pth'} (epoch {resumed_epoch} done)"], epochs
    assert metrics_epochs(checkpoints)[-(8 - resumed_epoch):] == list(range(resumed_epoch + 1, 9))
    assert load_checkpoint(checkpoints / "BlazeFace_final.pth")["epoch"] == 8
    assert not list(checkpoints.glob("*.tmp"))


# ==================================================================== the attendance database
# A child process that SIGKILLs itself when SQLite starts the Nth statement matching a prefix, i.e. inside the
# transaction of replace_students or save_session, between two of its statements.
KILL_INSIDE_TRANSACTION = """
import os, signal, sys
import numpy as np
from classroom.database import AttendanceDB, EnrolledPhoto, Mark
path, operation, prefix, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = AttendanceDB(path)
seen = []
def trace(statement):
    if statement.lstrip().upper().startswith(prefix):
        seen.append(statement)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
db.connection.set_trace_callback(trace)
if operation == "enroll":
    db.replace_students("7B", "model-x", {"ann": [EnrolledPhoto("new1.jpg", np.zeros(4)),
                                                  EnrolledPhoto("new2.jpg", np.zeros(4))],
                                          "cat": [EnrolledPhoto("cat.jpg", np.ones(4))]})
else:
    db.save_session("7B", "mon", "2026-11-23", 0.9, 0, ["p.jpg"],
                    [Mark("ann", True, 0.95, "p.jpg", [0, 0, 1, 1]), Mark("bob", True, 0.93, "p.jpg", None)])
print("not killed")
"""


def database_problems(path: Path) -> list[str]:
    """What is wrong with the database file: integrity, students without embeddings, sessions without marks."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check") if row[0] != "ok"]
        problems += [f"student {name} has no embedding" for (name,) in connection.execute(
            "SELECT name FROM students s WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.student_id = s.id)")]
        problems += [f"session {key} has no marks" for (key,) in connection.execute(
            "SELECT key FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM marks m WHERE m.session_id = s.id)")]
        problems += [f"foreign key: {row}" for row in connection.execute("PRAGMA foreign_key_check")]
    return problems


@pytest.fixture
def small_class(tmp_path) -> Path:
    path = tmp_path / "class.sqlite"
    with AttendanceDB(path) as db:
        db.replace_students("7B", "model-x", {"ann": [EnrolledPhoto("a.jpg", np.ones(4))],
                                              "bob": [EnrolledPhoto("b.jpg", -np.ones(4))]})
    return path


@pytest.mark.parametrize("prefix, nth", [("DELETE", 1), ("INSERT INTO STUDENTS", 1), ("INSERT INTO EMBEDDINGS", 1),
                                         ("INSERT INTO STUDENTS", 2), ("COMMIT", 1)])
def test_kill_9_inside_an_enrolment_transaction_leaves_the_old_enrolment(small_class, prefix, nth):
    killed = python("-c", KILL_INSIDE_TRANSACTION, str(small_class), "enroll", prefix, str(nth))
    assert killed.returncode == KILLED and "not killed" not in killed.stdout, killed.stderr
    assert database_problems(small_class) == []
    with AttendanceDB(small_class) as db:
        gallery = db.gallery("7B", "model-x")
        assert gallery.names == ["ann", "bob"] and gallery.photos == ["a.jpg", "b.jpg"]  # as before, not half new
        db.replace_students("7B", "model-x", {"ann": [EnrolledPhoto("new1.jpg", np.zeros(4))]})  # the run repeated
        assert db.gallery("7B").photos == ["b.jpg", "new1.jpg"]
    assert database_problems(small_class) == []


@pytest.mark.parametrize("prefix, nth", [("INSERT INTO SESSIONS", 1), ("INSERT INTO MARKS", 1),
                                         ("INSERT INTO MARKS", 2), ("COMMIT", 1)])
def test_kill_9_inside_a_session_transaction_stores_nothing_and_the_mark_can_be_repeated(small_class, prefix, nth):
    killed = python("-c", KILL_INSIDE_TRANSACTION, str(small_class), "mark", prefix, str(nth))
    assert killed.returncode == KILLED, killed.stderr
    assert database_problems(small_class) == []
    with AttendanceDB(small_class) as db:
        assert db.session_marks("7B") == []  # all of the session or none of it
        db.save_session("7B", "mon", "2026-11-23", 0.9, 0, ["p.jpg"], [Mark("ann", True, 0.95, "p.jpg", None),
                                                                       Mark("bob", False, 0.2, None, None)])
        assert [(m["student"], m["present"]) for m in db.session_marks("7B")] == [("ann", True), ("bob", False)]


# their first two photos each show one face (Jean_Chretien_0001 also shows another person's: refused)
LFW_PEOPLE = ("Colin_Powell", "Tony_Blair", "George_W_Bush", "Gerhard_Schroeder", "Donald_Rumsfeld", "Vladimir_Putin")


def roster(tmp_path: Path, people=LFW_PEOPLE, photos: int = 2) -> Path:
    lfw = shared_path("data", "lfw", "deepfunneled")
    folder = tmp_path / "roster"
    for person in people:
        (folder / person).mkdir(parents=True, exist_ok=True)
        for number in range(1, photos + 1):
            name = f"{person}_{number:04d}.jpg"
            (folder / person / name).write_bytes((lfw / person / name).read_bytes())
    return folder


def attendance(*args: str) -> list[str]:
    return ["attendance.py", *args]


@pytest.mark.slow
def test_kill_9_during_enroll_then_mark_then_both_repeat(tmp_path):
    db = tmp_path / "class.sqlite"
    enroll = attendance("enroll", "--class", "7B", "--roster", str(roster(tmp_path)), "--db", str(db))
    log = tmp_path / "enroll.log"
    process = start(*enroll, log=log)
    kill_when(process, lambda: "enrolling:" in log.read_text(), "enrolment progress")  # models loaded, photos going
    assert database_problems(db) == []
    repeated = python(*enroll)
    assert repeated.returncode == 0 and "6 students enrolled (12 photos)" in repeated.stdout, repeated.stderr

    lfw = shared_path("data", "lfw", "deepfunneled")
    mark = attendance("mark", "--class", "7B", "--photo", str(lfw / "Tony_Blair" / "Tony_Blair_0010.jpg"),
                      "--date", "2026-11-23", "--db", str(db), "--out", str(tmp_path / "out"))
    log = tmp_path / "mark.log"
    process = start(*mark, log=log)
    kill_when(process, lambda: db.with_suffix(".sqlite-wal").exists() or "present" in log.read_text(),
              "the database opened")
    assert database_problems(db) == []
    repeated = python(*mark)
    assert repeated.returncode == 0, repeated.stderr
    with AttendanceDB(db) as check:
        marks = {m["student"]: m["present"] for m in check.session_marks("7B")}
    assert len(marks) == 6 and marks["Tony_Blair"] and sum(marks.values()) == 1


@pytest.mark.slow
def test_two_concurrent_mark_runs_both_land(tmp_path):
    db = tmp_path / "class.sqlite"
    people = LFW_PEOPLE[:3]
    assert python(*attendance("enroll", "--class", "7B", "--roster", str(roster(tmp_path, people)),
                              "--db", str(db))).returncode == 0
    lfw = shared_path("data", "lfw", "deepfunneled")
    runs = []
    for person in people[:2]:  # one photo each, the same session
        photo = lfw / person / f"{person}_0010.jpg"
        runs.append(start(*attendance("mark", "--class", "7B", "--photo", str(photo), "--session", "mon",
                                      "--date", "2026-11-23", "--db", str(db), "--out", str(tmp_path / person)),
                          log=tmp_path / f"{person}.log"))
    assert [run.wait(600) for run in runs] == [0, 0], [(tmp_path / f"{p}.log").read_text()[-2000:] for p in people]
    assert database_problems(db) == []
    with AttendanceDB(db) as check:
        marks = {m["student"]: m["present"] for m in check.session_marks("7B")}
        (photos,) = check.connection.execute("SELECT photos FROM sessions").fetchone()
    assert marks == {people[0]: True, people[1]: True, people[2]: False}  # each run's find, merged
    assert sorted(json.loads(photos)) == sorted(f"{person}_0010.jpg" for person in people[:2])
