"""The benchmark book: Pride and Prejudice split into chapters, with its people and
places renamed to invented names so that pretraining cannot supply them."""
from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pride_and_prejudice.txt"

# Longest first where one name contains another; every invented name is new.
RENAMES = {
    "Lady Catherine": "Lady Orsolya", "de Bourgh": "de Varenne", "Fitzwilliam": "Aldrecht",
    "Elizabeth": "Ysolde", "Lizzy": "Ysa", "Eliza": "Ysola", "Bennet": "Vossler",
    "Jane": "Merrow", "Lydia": "Quenna", "Kitty": "Tibba", "Catherine": "Tibbaline",
    "Mary": "Oriel", "Darcy": "Thornquist", "Bingley": "Corvath", "Wickham": "Strade",
    "Collins": "Pellow", "Lucas": "Danmoor", "Charlotte": "Idrene", "Gardiner": "Halvick",
    "Phillips": "Brunnock", "Longbourn": "Hollowmere", "Netherfield": "Wendlecote",
    "Pemberley": "Kestrowan", "Meryton": "Dunhallow", "Rosings": "Marrowfell",
    "Hunsford": "Pellingate", "Hurst": "Orlick", "Louisa": "Elvina", "Caroline": "Serafine",
    "Georgiana": "Amarante", "Derbyshire": "Wrenshire", "Hertfordshire": "Calderwold",
    "Brighton": "Saltmere", "Lambton": "Ivelstow", "Reynolds": "Maddrick",
    "Jenkinson": "Tolliver", "Forster": "Grisewood", "Denny": "Harrowby",
    "William": "Ambrose", "London": "Corrin", "Kent": "Varrow",
}
_PATTERN = re.compile(r"\b(" + "|".join(sorted(map(re.escape, RENAMES), key=len,
                                                 reverse=True)) + r")\b")


def chapters(path: Path | str = DATA) -> list[str]:
    """Chapter texts (without their 'Chapter N' headings), Gutenberg matter removed."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.find("*** START OF")
    end = text.find("*** END OF")
    text = text[text.find("\n", start) + 1 if start >= 0 else 0: end if end >= 0 else None]
    parts = re.split(r"^Chapter \d+\s*$", text, flags=re.M)
    return ["\n\n".join(" ".join(line.strip() for line in para.splitlines())
                        for para in re.split(r"\n\s*\n", p.strip()))
            for p in parts[1:] if p.strip()]


def rename(text: str) -> tuple[str, list[tuple[int, int, str]]]:
    """(renamed text, [(start, end, invented name)] spans in the renamed text)."""
    out, spans, pos, shift = [], [], 0, 0
    for m in _PATTERN.finditer(text):
        new = RENAMES[m.group(1)]
        out.append(text[pos:m.start()])
        start = m.start() + shift
        spans.append((start, start + len(new), new))
        out.append(new)
        shift += len(new) - len(m.group(1))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), spans


def renamed_chapters(path: Path | str = DATA) -> list[tuple[str, list]]:
    return [rename(c) for c in chapters(path)]


def encode_chapters(lm, texts) -> list[list[int]]:
    """Token ids per chapter; chapters joined by a blank line, as Novel.manuscript does."""
    tok = lm.tokenizer
    return [list(tok(t + "\n\n", add_special_tokens=False).input_ids) for t in texts]
