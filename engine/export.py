"""Exports of the manuscript: Markdown and plain text here, Word and EPUB in
engine/formats; and writing them safely."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import formats
from .store import ProjectError

FORMATS = ("md", "txt")
BINARY = formats.BINARY  # docx, docx-notes, epub: bytes
ALL = ("md", "txt", "notes", *BINARY)


def suffix(fmt: str) -> str:
    """The file name ending for an export in ``fmt`` ('notes' is Markdown)."""
    return BINARY[fmt][0] if fmt in BINARY else ".md" if fmt == "notes" else f".{fmt}"


def render_binary(bible: dict, chapters: list[dict], fmt: str) -> bytes:
    """The whole book as .docx or .epub bytes (see engine/formats)."""
    return formats.render(bible, chapters, fmt)


def render(bible: dict, chapters: list[dict], fmt: str) -> str:
    """The whole book in ``fmt``; chapters are dicts with 'title' and 'text'."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format '{fmt}': choose one of {', '.join(FORMATS)}.")
    title = bible.get("title", "").strip() or "Untitled"
    if fmt == "md":
        parts = [f"# {title}\n"]
        parts += [f"## {c['title']}\n\n{(c['text'] or '').strip()}\n" for c in chapters]
    else:
        parts = [f"{title}\n{'=' * len(title)}\n"]
        parts += [f"{c['title']}\n\n{(c['text'] or '').strip()}\n" for c in chapters]
    return "\n".join(parts)


def check_out_path(out, project) -> Path:
    """The resolved path an export may be written to, or a ProjectError: never over a
    file inside a project folder (the novel's own, or any folder holding a novel.db),
    where it could replace novel.db or the memory files."""
    out_path = Path(out).expanduser()
    target = out_path.resolve()
    project = Path(project).expanduser().resolve()
    if target.is_dir():
        raise ProjectError(f"{out} is a folder; give a file name, e.g. {out_path / 'novel.md'}.")
    for folder in target.parents:
        if folder == project or (folder / "novel.db").exists():
            raise ProjectError(f"{out} lies inside the project folder {folder}; an export "
                               "there could overwrite the novel. Write it somewhere else.")
    if not target.parent.is_dir():
        raise ProjectError(f"The folder {out_path.parent} does not exist.")
    return target


def write_atomic(path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` all at once: a temporary file in the same
    folder, synced, then renamed over the target (a crash leaves the old file or the new one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        binary = isinstance(text, bytes)
        with (os.fdopen(fd, "wb") if binary
              else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
