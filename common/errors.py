"""The one error type a command line turns into a one-line message.

A ``UserError`` says that something the user gave — a config value, a flag, a file, a photo, a database — cannot
be used, and how to fix it. Every other exception is a bug and keeps its traceback. The specific errors (config,
checkpoint, image, annotation, gallery, pairs ...) derive from it, and from the built-in type they were before
(``ValueError``, ``RuntimeError``), so code that catches those still does.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user gave cannot be used; the message says what and how to fix it."""


class InputError(UserError, ValueError):
    """A flag, an argument or an input value that is not allowed."""
