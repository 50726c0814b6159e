"""How every panel tells the writer what happened: one style for success and errors."""
from __future__ import annotations

from engine.models import ModelError
from engine.store import ProjectError

# Errors whose message is meant for the writer, shown as is.
USER_ERRORS = (ProjectError, ModelError, ValueError, OSError)


def ok(msg: str) -> str:
    return f"<span class='ok'>{msg}</span>"


def err(e: Exception | str) -> str:
    return f"<span class='err'>⚠ {e}</span>"
