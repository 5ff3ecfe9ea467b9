"""The attendance workflow as a small local web app for teachers (``python attendance.py serve``): create a class,
enrol students from uploaded photos, take attendance from class photos, correct marks, see the history and export
CSV. It calls ``classroom.service`` for every step, over the same database as the command line."""
from classroom.webapp.app import create_app, serve

__all__ = ["create_app", "serve"]
