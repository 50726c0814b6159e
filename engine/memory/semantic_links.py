"""Derived associations of the semantic memory ('cooccur'): consecutive chunks of one
passage, and items that name the same people or places, capped per item. The writer's
own links (kind 'link') are never derived; SemanticMemory.link adds them."""
from __future__ import annotations

from .semantic_keys import CODES, KINDS, _order, key, names, parse_key, unfid

MEMORY_TO_CHUNKS = 10      # co-occurrence caps keep the association graph bounded
MEMORY_TO_MEMORIES = 10
CHUNK_TO_MEMORIES = 10
NAME_RECENT = 64           # an inverted-index list keeps only the newest items per name


def cooccur(store, texts, st, changed: set, full: bool) -> None:
    """Recompute derived 'cooccur' edges touching changed sources (all when full)."""
    item_text = {}
    for f, (s, e) in st.spans.items():
        kind, src, ch = unfid(f)
        t = texts.get((CODES[kind], src))
        if t is not None:
            item_text[key(kind, src, ch)] = t[s:e]
    changed_keys = {k for k in item_text
                    if full or (CODES[parse_key(k)[0]], parse_key(k)[1]) in changed}
    gone_prefix = [f"{KINDS[c]}:{s}" for c, s in changed]
    nm = {k: names(t) for k, t in item_text.items()}
    index: dict[str, list[str]] = {}
    for k in sorted(item_text, key=_order):
        for n in nm[k]:
            index.setdefault(n, []).append(k)
    for lst in index.values():
        del lst[:-NAME_RECENT]
    edges: dict[tuple[str, str], float] = {}

    def add(a, b, w):
        if a != b:
            edges[(min(a, b), max(a, b))] = max(w, edges.get((min(a, b), max(a, b)), 0))

    for k in changed_keys:
        kind, src, ch = parse_key(k)
        if kind == "passage":
            for other in (key("passage", src, ch - 1), key("passage", src, ch + 1)):
                if other in item_text:
                    add(k, other, 1.0)
        counts: dict[str, int] = {}
        for n in nm[k]:
            for other in index.get(n, ()):
                counts[other] = counts.get(other, 0) + 1
        counts.pop(k, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _order(kv[0])))
        if kind == "passage":
            mem = [(o, c) for o, c in ranked if not o.startswith("passage:")]
            for o, c in mem[:CHUNK_TO_MEMORIES]:
                add(k, o, float(c))
        else:
            psg = [(o, c) for o, c in ranked if o.startswith("passage:")]
            mem = [(o, c) for o, c in ranked if not o.startswith("passage:")]
            for o, c in psg[:MEMORY_TO_CHUNKS] + mem[:MEMORY_TO_MEMORIES]:
                add(k, o, float(c))
    # one transaction: every derived edge (full) or those of the changed sources
    store.associations.rewrite("cooccur", edges, None if full else gone_prefix)
