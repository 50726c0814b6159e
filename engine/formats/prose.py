"""The chapter text as the manuscript formats see it: one paragraph a line, *italics*
and **bold** as Markdown emphasis, a line of asterisks (or #, ~, ⁂) as a scene break;
and back again (runs -> Markdown) for import."""
from __future__ import annotations

import re
from dataclasses import dataclass

SCENE_BREAK = "* * *"
# What writers type between scenes: "* * *", "***", "#", "~", "⁂", "---" (alone on a line)
_SCENE = re.compile(r"^\s*(?:(?:[*#~⁂•·]\s*){1,5}|-{3,}|—{1,3})\s*$")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"\*(?=[^\s*])(.+?)(?<=[^\s*])\*|(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")


@dataclass
class Para:
    text: str
    end: int  # offset in the chapter text where its line ends
    scene: bool = False


def is_scene_break(line: str) -> bool:
    return bool(_SCENE.match(line))


def paragraphs(text: str) -> list[Para]:
    """Every non-blank line of ``text``: the editor's paragraphs (a note's anchor is an
    offset in the same text, see note_targets)."""
    out, start = [], 0
    text = text or ""
    for line in text.split("\n"):
        end = start + len(line)
        if line.strip():
            out.append(Para(line.strip(), end, is_scene_break(line)))
        start = end + 1
    return out


def note_targets(text: str, paras: list[Para], notes: list[dict]) -> list[tuple[int, dict]]:
    """(paragraph index, note) for each note: the paragraph it follows in the "notes"
    export (the one ending where the note's anchor line ends, or the last before it)."""
    text = text or ""
    out = []
    for note in notes:
        a = max(0, min(int(note["anchor"]), len(text)))
        end = text.find("\n", a)
        end = len(text) if end < 0 else end
        before = [i for i, p in enumerate(paras) if p.end <= end]
        out.append((before[-1] if before else 0, note))
    return out


def runs(line: str) -> list[tuple[str, bool, bool]]:
    """(text, italic, bold) pieces of one paragraph's Markdown emphasis."""
    out = []
    pos = 0
    for m in _BOLD.finditer(line):
        out += [(t, i, False) for t, i in _italics(line[pos:m.start()])]
        out += [(t, i, True) for t, i in _italics(m.group(1))]
        pos = m.end()
    out += [(t, i, False) for t, i in _italics(line[pos:])]
    return [r for r in out if r[0]]


def _italics(text: str) -> list[tuple[str, bool]]:
    out, pos = [], 0
    for m in _ITALIC.finditer(text):
        out += [(text[pos:m.start()], False), (m.group(1) or m.group(2), True)]
        pos = m.end()
    return out + [(text[pos:], False)]


def markdown(pieces: list[tuple[str, bool, bool]]) -> str:
    """Runs back to Markdown: adjacent runs of one style merged, the markers kept tight
    against the words (Word often puts the space inside the italic run)."""
    merged: list[list] = []
    for text, italic, bold in pieces:
        if not text:
            continue
        if not text.strip():
            italic = bold = False  # a styled space is just a space
        if merged and merged[-1][1:] == [italic, bold]:
            merged[-1][0] += text
        else:
            merged.append([text, italic, bold])
    out = []
    for text, italic, bold in merged:
        mark = ("**" if bold else "") + ("*" if italic else "")
        core = text.strip()
        if not mark or not core:
            out.append(text)
            continue
        lead, trail = text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]
        out.append(f"{lead}{mark}{core}{mark[::-1]}{trail}")
    return " ".join("".join(out).split())


def word_count(chapters: list[dict]) -> int:
    """The words of the prose (a scene break is none)."""
    return sum(len(p.text.split()) for c in chapters for p in paragraphs(c.get("text") or "")
               if not p.scene)


def book_meta(bible: dict) -> tuple[str, str]:
    """(title, author); the story bible may have no author: then ''."""
    title = (bible.get("title") or "").strip() or "Untitled"
    return title, (bible.get("author") or "").strip()


def short_title(title: str, limit: int = 30) -> str:
    """The running header's title: the whole title if short, else its first words."""
    if len(title) <= limit:
        return title.upper()
    words, out = title.split(), ""
    for w in words:
        if len(out) + len(w) + 1 > limit:
            break
        out = f"{out} {w}".strip()
    return (out or title[:limit]).upper()
