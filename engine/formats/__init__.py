"""The manuscript formats novelists exchange: Word (.docx) and EPUB 3, out and in.

Writing: ``render(bible, chapters, fmt)`` -> bytes. Reading: ``read_markdown(data,
suffix, name)`` -> the book as Markdown ("# " chapter headings, *italics*, "* * *"
scene breaks), which engine/importing.py splits into chapters like any .md file."""
from __future__ import annotations

from ..store import ProjectError

# format -> (file suffix, what it is)
BINARY = {"docx": (".docx", "Word manuscript"),
          "docx-notes": (".docx", "Word manuscript with the margin notes as comments"),
          "epub": (".epub", "EPUB 3 e-book")}
SUFFIXES = (".docx", ".epub")


def render(bible: dict, chapters: list[dict], fmt: str) -> bytes:
    """The book as ``fmt`` (see BINARY); chapters are dicts with 'title', 'text' and,
    for docx-notes, 'notes' (rows with 'anchor', 'text', 'passage_id')."""
    if fmt in ("docx", "docx-notes"):
        from . import docx
        return docx.write(bible, chapters, notes=fmt == "docx-notes")
    if fmt == "epub":
        from . import epub
        return epub.write(bible, chapters)
    raise ValueError(f"Unknown export format '{fmt}': choose one of {', '.join(BINARY)}.")


def read_markdown(data: bytes, suffix: str, name: str) -> str:
    """A .docx or .epub as Markdown, or a ProjectError saying why it cannot be read
    (empty, damaged, protected, no text)."""
    if not data:
        raise ProjectError(f"{name} is empty (0 bytes).")
    if suffix == ".docx":
        from . import docx
        blocks = docx.blocks(data, name)
    elif suffix == ".epub":
        from . import epub
        blocks = epub.blocks(data, name)
    else:
        raise ProjectError(f"{name}: only {', '.join(SUFFIXES)} are read here.")
    text = markdown(blocks)
    if not text.strip():
        raise ProjectError(f"{name} holds no text to import.")
    return text


def markdown(blocks: list[tuple]) -> str:
    """Blocks to Markdown. A chapter starts at each heading of the book's top level
    (a lower one stays a line of its chapter), and at an EPUB file listed in the table
    of contents; a file that is not listed continues the chapter before it (e-book
    converters split long chapters)."""
    levels = [b[1] for b in blocks if b[0] == "h" and b[1] <= 3]
    top = min(levels) if levels else None
    out: list[str] = []
    label = None  # the toc label of the file just started, until its first block
    for b in blocks:
        if b[0] == "file":
            label = b[1]
        elif b[0] == "h" and (b[1] == top or label is not None):
            out.append(f"# {b[2]}")
            label = None
        else:
            if label is not None:
                out.append(f"# {label}")
                label = None
            out.append(b[-1])
    return "\n\n".join(out)
