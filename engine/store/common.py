"""What every part of the store shares: the folder layout, the limits, ProjectError and
the validators, and the change preview of a revision."""
from __future__ import annotations

import re
import time

from ..errors import UserError

DB_NAME = "novel.db"
MEMORY_DIR = "memory"
# Held (flock, advisory) by whichever process is streaming into the novel.
WRITING_LOCK = ".writing.lock"

# A project name becomes a folder name: keep it boring and portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
MAX_TITLE_CHARS = 200
MAX_FIELD_CHARS = 20_000
# ~300k words: far beyond any real chapter, small enough to keep the UI responsive.
MAX_CHAPTER_CHARS = 2_000_000
# Writer edits within this many seconds of the last one share one undo step.
EDIT_COALESCE_S = 30.0


class ProjectError(UserError, ValueError):
    """A user-facing problem with a project: the message is shown as is."""


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ProjectError("The project name is empty.")
    if ".." in name or "/" in name or "\\" in name or not _NAME_RE.match(name):
        raise ProjectError(
            f"'{name[:80]}' is not a valid project name: use up to 64 letters, digits, "
            "spaces, '.', '-' or '_', starting with a letter or digit (no '/' or '..')."
        )
    return name


def slugify(title: str) -> str:
    """A folder name derived from a title ('' when nothing usable is left)."""
    slug = re.sub(r"[^A-Za-z0-9 _\-]+", "", title).strip(" ._-")
    return re.sub(r"\s+", " ", slug)[:64].strip()


def validate_text(label: str, text: str, limit: int) -> str:
    text = text or ""
    if len(text) > limit:
        raise ProjectError(
            f"{label} is too long ({len(text):,} characters; the limit is {limit:,}). "
            "Nothing was saved; split it up or import it as a file."
        )
    return text


def now() -> float:
    return time.time()


def _common_ends(a: str, b: str) -> tuple[int, int]:
    """(common prefix length, common suffix length not overlapping it) of two texts,
    found by bisection on slice comparisons (fast on a 2M-character chapter)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    pre = lo
    lo, hi = 0, min(len(a), len(b)) - pre
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return pre, lo


def change_preview(parent: str, text: str, limit: int = 80) -> str:
    """What ``text`` adds to ``parent``, first ``limit`` characters (what it cut, when it
    only cut)."""
    pre, suf = _common_ends(parent, text)
    added = " ".join(text[pre:len(text) - suf].split())
    if not added:
        cut = " ".join(parent[pre:len(parent) - suf].split())
        return f"(cut: {cut[:limit - 7]}…)" if len(cut) > limit - 7 else \
            (f"(cut: {cut})" if cut else "")
    return added[:limit - 1] + "…" if len(added) > limit else added
