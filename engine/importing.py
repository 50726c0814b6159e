"""Reading a writer's files: encoding detection, Gutenberg trimming, chapter splitting.
A .docx or .epub is read as Markdown first (engine/formats), then split like a .md."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

from . import formats
from .store import MAX_CHAPTER_CHARS, ProjectError

MAX_IMPORT_BYTES = 50_000_000
HEADING_RE = re.compile(
    r"^[ \t]*(?:#{1,3}[ \t]+\S.*|(?:chapter|CHAPTER|Chapter)[ \t]+(?:\d+|[IVXLCDM]+|[A-Za-z]+)\b.*)$",
    re.MULTILINE)
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THIS|THE) PROJECT GUTENBERG.*$", re.M)
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THIS|THE) PROJECT GUTENBERG.*$", re.M)


BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"),
        (b"\xef\xbb\xbf", "utf-8-sig"), (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))
_WIDE = ("utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le")
# Control characters that never occur in prose (tab, newlines, form feed and the old
# DOS end-of-file mark excepted): many of them mean a binary file read as text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x19\x1b-\x1f\x7f]")


def read_text_file(path: Path) -> str:
    """The file's text, or a ProjectError saying in one sentence why not."""
    return read_text(path)[0]


TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
SUFFIXES = (*TEXT_SUFFIXES, *formats.SUFFIXES)


def read_text(path: Path) -> tuple[str, str]:
    """(text, encoding) of an importable file; see ``decode_text``. A .docx or .epub
    comes back as Markdown: its headings as "# " lines, *italics*, "* * *" scene breaks
    (their XML is UTF-8, so the encoding is 'utf-8')."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in formats.SUFFIXES:
        return formats.read_markdown(read_bytes(path), suffix, path.name), "utf-8"
    if suffix not in TEXT_SUFFIXES:
        raise ProjectError(f"{path.name}: only .txt and .md text files, Word .docx files "
                           "and .epub e-books can be imported.")
    return decode_text(read_bytes(path), path.name)


def read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ProjectError(f"{path}: no such file.")
    if path.stat().st_size > MAX_IMPORT_BYTES:
        raise ProjectError(f"{path.name} is larger than {MAX_IMPORT_BYTES // 1_000_000} MB.")
    return path.read_bytes()


def decode_text(data: bytes, name: str) -> tuple[str, str]:
    """(text with \\n line ends, encoding used) or a ProjectError.

    Word's "Unicode Text" is UTF-16 with a byte-order mark and Windows editors still
    save Windows-1252, so: a BOM decides first (UTF-8, UTF-16, UTF-32), then strict
    UTF-8, then charset-normalizer's guess. A NUL byte anywhere in a file that is not
    UTF-16/32 means binary."""
    enc = next((e for bom, e in BOMS if data.startswith(bom)), None)
    if enc is None and b"\x00" in data:
        enc = _bomless_utf16(data)
        if enc is None:
            raise ProjectError(f"{name} looks like a binary file, not text.")
    if enc is not None:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError as e:
            raise ProjectError(f"{name} starts like {enc.upper()} text but has a bad byte "
                               f"at offset {e.start}; re-save it as UTF-8.") from e
        text, enc = text.removeprefix("\ufeff"), enc.replace("-sig", "")
    else:
        try:
            text, enc = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as e:
            text, enc = _guess(data, name, e.start)
    if len(_CONTROL.findall(text[:1_000_000])) > max(8, len(text[:1_000_000]) // 1000):
        raise ProjectError(f"{name} looks like a binary file, not text.")
    return text.replace("\r\n", "\n").replace("\r", "\n"), enc


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 without a byte-order mark: NULs in every other byte (the high byte of
    Latin text), all on one side; else None."""
    if len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if min(even, odd) or max(even, odd) < len(data) // 8:
        return None
    enc = "utf-16-be" if even else "utf-16-le"
    try:
        data.decode(enc)
    except UnicodeDecodeError:
        return None
    return enc


def _guess(data: bytes, name: str, bad: int) -> tuple[str, str]:
    """Not UTF-8: charset-normalizer's best guess; among equally good guesses,
    Windows-1252 (the usual legacy encoding of English and Western European text)."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data, cp_exclusion=list(_WIDE)))
    if not matches:
        raise ProjectError(f"{name} is not UTF-8 text (bad byte at offset {bad}) and its "
                           "encoding could not be recognised; re-save it as UTF-8.")
    best = matches[0]
    ties = [m for m in matches if m.chaos <= best.chaos + 0.01
            and m.coherence >= best.coherence - 0.01]
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    if western is not None:
        if any("cp1252" in m.could_be_from_charset for m in ties):
            return western, "windows-1252"
        # A short text gives the detector too little to go on ("Don’t." came out as
        # Arabic cp720): with no language recognised, Windows-1252 wins if it reads
        # cleanly (Greek or Russian read as Windows-1252 scores over 1).
        from charset_normalizer.md import mess_ratio
        if best.coherence < 0.1 and mess_ratio(western, 0.5) < 0.5:
            return western, "windows-1252"
    if best.coherence < 0.1:  # no language recognised in any guess: noise, not prose
        raise ProjectError(f"{name} is not UTF-8 text (bad byte at offset {bad}) and its "
                           "encoding could not be recognised; re-save it as UTF-8.")
    return str(best), encoding_name(best.encoding)


def encoding_name(codec: str) -> str:
    """Python's codec name as writers know it: cp1252 -> windows-1252, utf_8 -> utf-8."""
    codec = codec.lower().replace("_", "-")
    m = re.fullmatch(r"cp(125\d)", codec)
    return f"windows-{m.group(1)}" if m else codec


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
