#!/usr/bin/env python
"""Classroom attendance: enrol a class once, then take attendance from photos of the room.

    python attendance.py enroll --class 7B --roster roster/            # roster/<student>/<photos>
    python attendance.py mark --class 7B --photo room1.jpg room2.jpg --date 2026-11-23 --out results/7B
    python attendance.py report --class 7B --from 2026-09-01 --to 2026-12-31 --out results/7B-report
    python attendance.py demo                                           # classes built from LFW, scored
    python attendance.py serve                                          # the same as a web app on localhost:8000

The database (SQLite) defaults to attendance.sqlite next to the config; --db chooses another.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from classroom.demo import run_demo
from common.lfw import SPLIT_FOLDS
from classroom.service import AttendanceService, attendance_config, default_attendance_config, iso_date
from classroom.webapp import serve
from common.cli import run_cli

DEFAULT_CONFIG = default_attendance_config()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, database: bool = True, photos: bool = True,
                verbose_help: str = "print each stage's time per photo"):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", default=str(DEFAULT_CONFIG), help="attendance YAML (default: %(default)s)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        if database:
            sub.add_argument("--db", help="SQLite database (default: attendance.sqlite next to the config)")
        if photos:
            sub.add_argument("--verbose", action="store_true", help=verbose_help)
        return sub

    enroll = command("enroll", "enrol (or re-enrol) students from DIR/<student>/<photos>")
    enroll.add_argument("--class", dest="class_name", required=True)
    enroll.add_argument("--roster", required=True, help="folder with one sub-folder of photos per student")
    enroll.add_argument("--keep-photos", action="store_true", help="also store the enrolment photos in the database")
    mark = command("mark", "take attendance from one or more photos of one session")
    mark.add_argument("--class", dest="class_name", required=True)
    mark.add_argument("--photo", required=True, nargs="+", help="class photo(s) of one session")
    mark.add_argument("--session", help="session id (default: the date)")
    mark.add_argument("--date", help="YYYY-MM-DD (default: today)")
    mark.add_argument("--out", default="attendance_out", help="folder for CSV, JSON, annotated photos, HTML")
    # a report reads the database only: no photo is processed, so no --verbose
    report = command("report", "attendance rate per student over a date range", photos=False)
    report.add_argument("--class", dest="class_name", required=True)
    report.add_argument("--from", dest="date_from", help="YYYY-MM-DD (default: the first session)")
    report.add_argument("--to", dest="date_to", help="YYYY-MM-DD (default: the last session)")
    report.add_argument("--out", default="attendance_report", help="folder for the CSV and the PNG chart")
    # the demo enrols its classes in a temporary database of its own, deleted afterwards: no --db
    demo = command("demo", "build classes from LFW, mark them, print precision/recall", database=False,
                   verbose_help="print each stage's time per photo and every rejected enrolment photo")
    demo.add_argument("--split", choices=list(SPLIT_FOLDS),
                      help="report: the people of LFW fold 10, seeds from 1000 (nothing was tuned on them); tune: "
                           "folds 1-9, seeds from 0 (default: demo.split of the config)")
    demo.add_argument("--lfw-root", help="LFW folder (default: ../shared/data/lfw, else scikit-learn's download)")
    demo.add_argument("--classes", type=int, help="random classes to run (default: demo.classes of the config)")
    demo.add_argument("--out", default="results/attendance_demo", help="folder for the demo's figures and photos")
    serve = command("serve", "the web app for teachers: create classes, enrol, mark, correct, history, CSV")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this computer only; the app has no login)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = attendance_config(args.config, args.set)
    if args.command == "demo":
        run_demo(cfg, args.lfw_root, args.classes, Path(args.out), verbose=args.verbose, split=args.split)
        return 0
    if args.command == "serve":
        serve(cfg, args.db, args.host, args.port, verbose=args.verbose)
        return 0
    service = AttendanceService(cfg, db_path=args.db, verbose=getattr(args, "verbose", False))
    try:
        if args.command == "enroll":
            result = service.enroll(args.class_name, Path(args.roster), keep_photos=args.keep_photos)
            return 0 if result.enrolled else 1
        if args.command == "mark":
            date = iso_date(args.date, "--date") or dt.date.today().isoformat()
            service.mark(args.class_name, [Path(p) for p in args.photo], args.session or date, date, Path(args.out))
            return 0
        service.report(args.class_name, iso_date(args.date_from, "--from"), iso_date(args.date_to, "--to"),
                       Path(args.out))
        return 0
    finally:
        service.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
