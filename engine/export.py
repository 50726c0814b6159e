"""Exports of the manuscript: Markdown and plain text."""
from __future__ import annotations

FORMATS = ("md", "txt")


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
