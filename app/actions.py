"""How a UI handler meets the engine: one decorator opens the novel a handler works on
and turns what goes wrong into what the writer sees.

A ``UserError`` (engine/errors.py) is shown as its message. So is an ``OSError`` that
says something about the writer's machine which they can fix (a full disk, a file or
folder they may not write, a read-only disk: ``MACHINE_ERRNOS``), from the files the app
writes itself (the kNN index, the matrix, an export); the store already turns sqlite's
into a ProjectError. Anything else is a bug: it is logged with its traceback (stderr,
and ``<projects dir>/mnemosyne.log`` once ``configure_logging`` ran) and the writer is
told "Internal error, details in the log".
"""
from __future__ import annotations

import errno
import functools
import inspect
import logging
import sys
from pathlib import Path

import gradio as gr

from app.messages import err
from engine.errors import UserError

log = logging.getLogger("mnemosyne")
LOG_NAME = "mnemosyne.log"
INTERNAL = "Internal error, details in the log"
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_log_file: Path | None = None


def configure_logging(folder=None) -> Path | None:
    """Log the app's errors to stderr and to ``folder/mnemosyne.log``; returns the file
    (None without a folder, or when it cannot be written: stderr only). Calling it again
    replaces what the last call set up."""
    global _log_file
    for h in list(log.handlers):
        if getattr(h, "_mnemosyne", False):
            log.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    path = Path(folder) / LOG_NAME if folder is not None else None
    try:
        if path is not None:
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
    except OSError as e:
        print(f"mnemosyne: cannot write the log {path}: {e}", file=sys.stderr)
        path = None
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT))
        h._mnemosyne = True
        log.addHandler(h)
    log.setLevel(logging.INFO)
    _log_file = path
    return path


def writer_message(e: BaseException, where: str = "") -> str:
    """What the writer sees for ``e`` (an err() span). Anything but a writer's error is
    logged with its traceback."""
    if isinstance(e, UserError):
        return err(e)
    if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
        log.warning("%s: %s", where or "handler", e, exc_info=e)
        return err(f"Your computer refused: {e.strerror or e}"
                   + (f" ({e.filename})" if e.filename else "") + ".")
    log.error("internal error in %s", where or "a handler", exc_info=e)
    return err(f"{INTERNAL} ({_log_file})." if _log_file else f"{INTERNAL}.")


def action(outputs: int = 1, message: int = -1, *, lib=None,
           needs: str | None = "Open a novel first.", chapter: str | None = None,
           others: dict | None = None, on_error=None):
    """Decorate a Gradio handler (a function or a generator).

    With ``lib``, its first input is the novel's name, and the handler gets the open
    Novel in its place: a missing name is the writer's error ``needs`` (with
    ``needs=None`` the handler gets None instead). With ``chapter``, the second input (a
    chapter id) must be there too, else the writer is told ``chapter``.

    On an error the handler's ``outputs`` outputs become: the message at index
    ``message``, ``others[i]`` where given, gr.update() (no change) elsewhere; or, with
    ``on_error``, what ``on_error(message, *inputs)`` returns.
    """
    def error_outputs(e, where, args):
        msg = writer_message(e, where)
        if on_error is not None:
            try:
                return on_error(msg, *args)
            except Exception as e2:  # noqa: BLE001 - the page must still hear of it
                msg = writer_message(e2, f"{where} (showing an error)")
        out = [gr.update() for _ in range(outputs)]
        for i, v in (others or {}).items():
            out[i] = v
        out[message] = msg
        return out[0] if outputs == 1 else tuple(out)

    def resolve(args):
        if lib is None:
            return args
        name, rest = (args[0] if args else None), args[1:]
        if not name:
            if needs is not None:
                raise UserError(needs)
            novel = None
        else:
            novel = lib.open(name)
        if chapter is not None and (not rest or rest[0] is None):
            raise UserError(chapter)
        return (novel, *rest)

    def decorate(fn):
        where = fn.__qualname__
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args):
                try:
                    yield from fn(*resolve(args))
                except Exception as e:  # noqa: BLE001 - shown as the writer's or logged
                    yield error_outputs(e, where, args)
            return stream

        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*resolve(args))
            except Exception as e:  # noqa: BLE001 - shown as the writer's or logged
                return error_outputs(e, where, args)
        return run
    return decorate
