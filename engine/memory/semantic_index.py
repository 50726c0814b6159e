"""The semantic index of one novel: its files on disk, its sync with the database (the
truth; the index is derived), the background catch-up, and the nearest-item search."""
from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .semantic_keys import CHUNK_BITS, CODE_BITS, CODES, KINDS, _table, chunks, fid, key, \
    parse_key, unfid
from .semantic_links import cooccur

log = logging.getLogger("engine.memory.semantic")  # the name the log has always shown
FORMAT = 2                 # 2: meta.json records a sha256 of each file
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


@dataclass
class _State:
    index: object = None                       # faiss.IndexIDMap2(IndexFlatIP)
    spans: dict = field(default_factory=dict)  # fid -> (start, end) inside its source
    sources: dict = field(default_factory=dict)  # (code, src) -> crc32 of the source text
    signature: str = ""


class SemanticIndex:
    """One novel's semantic index; thread-safe; files under memory/semantic/.
    ``embed`` is a callable returning the embedder (loaded on first use)."""

    FILES = ("index.faiss", "items.npy", "sources.npy", "meta.json")

    def __init__(self, store, embed):
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
                cooccur(self.store, texts, st, {k for k in gone} | set(new),
                        full=bool(reason) or force)
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
            n = min(k, st.index.ntotal)  # read again: a sync may have removed rows since
            if n <= 0:
                return []
            scores, ids = st.index.search(vecs, n)
        best: dict[int, float] = {}
        for row_ids, row_scores in zip(ids, scores):
            for f, sc in zip(row_ids, row_scores):
                if f >= 0 and sc > best.get(int(f), -2.0):
                    best[int(f)] = float(sc)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        return [(key(*unfid(f)), sc) for f, sc in ranked]

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
