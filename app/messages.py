"""How every panel tells the writer what happened: one style for success and errors.
Which errors the writer sees, and how a handler gets there: app/actions.py."""
from __future__ import annotations


def ok(msg: str) -> str:
    return f"<span class='ok'>{msg}</span>"


def err(e: Exception | str) -> str:
    return f"<span class='err'>⚠ {e}</span>"
