"""Keys, ids and chunks of the semantic memory: what an item is called ('memory:3',
'passage:4#2'), its FAISS id, how a passage is cut into chunks, the names in a text and
the queries recall searches with. No model, no files."""
from __future__ import annotations

import re

from ..errors import UserError

CODES = {"memory": 0, "passage": 1, "thought": 2}
KINDS = {v: k for k, v in CODES.items()}
CHUNK_CHARS = 400          # ~ 60-100 tokens: a few sentences, inside MiniLM's window
CHUNK_BITS, CODE_BITS = 18, 2
FOCUS_CHARS = 200          # the second recall query: the very end of the text


class SemanticError(UserError, ValueError):
    """A user-facing problem with semantic memory."""


def key(kind: str, src: int, chunk: int = 0) -> str:
    return f"passage:{src}#{chunk}" if kind == "passage" else f"{kind}:{src}"


def parse_key(k: str) -> tuple[str, int, int]:
    m = re.fullmatch(r"(memory|passage|thought):(\d+)(?:#(\d+))?", (k or "").strip())
    if not m:
        raise SemanticError(f"'{k}' is not a memory key (memory:ID, thought:ID or "
                            "passage:ID#CHUNK).")
    return m.group(1), int(m.group(2)), int(m.group(3) or 0)


def fid(kind: str, src: int, chunk: int = 0) -> int:
    return (src << (CHUNK_BITS + CODE_BITS)) | (chunk << CODE_BITS) | CODES[kind]


def unfid(f: int) -> tuple[str, int, int]:
    f = int(f)
    return (KINDS[f & 3], f >> (CHUNK_BITS + CODE_BITS),
            (f >> CODE_BITS) & ((1 << CHUNK_BITS) - 1))


def label(k: str) -> str:
    kind, src, chunk = parse_key(k)
    return f"passage {src} §{chunk + 1}" if kind == "passage" else f"{kind} {src}"


_SENT = re.compile(r"[^.!?\n]+(?:[.!?]+[\"'”’)]*|\n+|$)")


def chunks(text: str, max_chars: int = CHUNK_CHARS) -> list[tuple[int, int]]:
    """Sentence groups of at most ~max_chars inside one paragraph (a paragraph break is
    always a boundary: mixing a fact into its neighbours' chunk dilutes its embedding),
    as (start, end) offsets; never empty text."""
    out, pos = [], 0
    for m in re.finditer(r"\n\s*\n", text + "\n\n"):
        out += [(pos + s, pos + e) for s, e in _chunks(text[pos:m.start()], max_chars)]
        pos = m.end()
    return out[: 1 << CHUNK_BITS]


def _chunks(text: str, max_chars: int) -> list[tuple[int, int]]:
    spans, start, end = [], None, None
    for m in _SENT.finditer(text):
        s, e = m.start(), m.end()
        if not text[s:e].strip():
            continue
        while e - s > max_chars:  # one huge "sentence": cut at a space
            cut = text.rfind(" ", s, s + max_chars)
            cut = cut if cut > s else s + max_chars
            if start is not None:
                spans.append((start, end))
                start = None
            spans.append((s, cut))
            s = cut
        if start is not None and e - start > max_chars:
            spans.append((start, end))
            start = None
        if start is None:
            start = s
        end = e
    if start is not None:
        spans.append((start, end))
    out = []
    for s, e in spans:  # trim whitespace at both ends
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


_NAME = re.compile(r"\b([A-Z][a-z]{2,})(?:['’]s)?\b")
_NOT_NAMES = set("""The And But For Nor Yet She Her Hers Him His They Them Their Its
This That These Those There Then When Where What Who Whom Whose Why How Which While
With Without Within After Before Because Since Until Upon Into Onto From Over Under
Not Now Yes Yet Our Ours You Your All Any Each Every Some Such Only Even Still Just
Perhaps Once One Two Three Here Had Has Have Was Were Are Will Would Could Should
Shall Can May Might Must Did Does Let Remember Earlier Note Title Premise Style
Chapter Part Book Mrs Miss Sir Madam Lady Lord Oh Well Very Too Also Though Although
Indeed Never Always Nothing Something Everything Someone Everyone Nobody""".split())


def names(text: str) -> frozenset[str]:
    """Capitalised words that are likely names: a cheap, language-model-free entity guess."""
    return frozenset(n for n in _NAME.findall(text) if n not in _NOT_NAMES)


def queries(text: str, window: int = 600) -> list[str]:
    """What recall searches with: the recent window, the paragraph being written and its
    last sentence. Max-merged, so a cue in the last line is not drowned by the window."""
    text = text.rstrip()
    para = text[text.rfind("\n\n") + 2:] if "\n\n" in text else text
    sents = [m.group(0).strip() for m in _SENT.finditer(para[-FOCUS_CHARS * 2:])
             if m.group(0).strip()]
    out = []
    for q in (text[-window:], para[-FOCUS_CHARS * 2:], sents[-1] if sents else ""):
        if q.strip() and q not in out:
            out.append(q)
    return out


def _table(store, kind: str):
    """The store's table of a key's kind (memory, passage, thought)."""
    return {"memory": store.memories, "passage": store.passages,
            "thought": store.thoughts}[kind]


def _order(k: str):
    kind, src, ch = parse_key(k)
    return (src, ch, kind)
