"""Reading a writer's files: UTF-8 checks, Gutenberg trimming, chapter splitting."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

from .store import MAX_CHAPTER_CHARS, ProjectError

MAX_IMPORT_BYTES = 50_000_000
HEADING_RE = re.compile(
    r"^[ \t]*(?:#{1,3}[ \t]+\S.*|(?:chapter|CHAPTER|Chapter)[ \t]+(?:\d+|[IVXLCDM]+|[A-Za-z]+)\b.*)$",
    re.MULTILINE)
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THIS|THE) PROJECT GUTENBERG.*$", re.M)
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THIS|THE) PROJECT GUTENBERG.*$", re.M)


def read_text_file(path: Path) -> str:
    """The file's text, or a ProjectError saying in one sentence why not."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".md", ".markdown", ".text"):
        raise ProjectError(f"{path.name}: only .txt and .md files can be imported.")
    if not path.is_file():
        raise ProjectError(f"{path}: no such file.")
    if path.stat().st_size > MAX_IMPORT_BYTES:
        raise ProjectError(f"{path.name} is larger than {MAX_IMPORT_BYTES // 1_000_000} MB.")
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise ProjectError(f"{path.name} looks like a binary file, not text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProjectError(f"{path.name} is not UTF-8 text (bad byte at offset {e.start}); "
                           "re-save it as UTF-8.") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _trim_gutenberg(text: str) -> str:
    start, end = GUTENBERG_START.search(text), GUTENBERG_END.search(text)
    if start and end and start.end() < end.start():
        return text[start.end():end.start()]
    return text


def _unwrap(text: str) -> str:
    """Join hard-wrapped lines inside paragraphs (typical of plain-text e-books)."""
    lines = [len(line) for line in text.split("\n") if line.strip()]
    if len(lines) < 20 or not 45 <= statistics.median(lines) <= 80:
        return text
    paras = re.split(r"\n[ \t]*\n", text)
    return "\n\n".join(re.sub(r"[ \t]*\n[ \t]*", " ", p.strip()) for p in paras if p.strip())


def split_chapters(text: str, fallback_title: str) -> list[tuple[str, str]]:
    """[(title, body)] split on chapter headings; no heading: one chapter."""
    text = _trim_gutenberg(text)
    marks = list(HEADING_RE.finditer(text))
    if not marks:
        body = _unwrap(text.strip())
        return [(fallback_title, body)] if body else []
    chapters = []
    preface = text[:marks[0].start()].strip()
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        title = m.group(0).strip().lstrip("#").strip()
        chapters.append((title[:200], _unwrap(text[m.end():end].strip())))
    if preface and len(preface) > 200:  # keep a real prologue, drop a title page
        chapters.insert(0, (f"{fallback_title} (opening)", _unwrap(preface)))
    for title, body in chapters:
        if len(body) > MAX_CHAPTER_CHARS:
            raise ProjectError(f"Chapter '{title}' is longer than {MAX_CHAPTER_CHARS:,} "
                               "characters; split it with headings first.")
    return chapters
