"""The kNN memory of one novel: its per-novel setting, its store kept in step with
the manuscript, and the read context a Continue runs under.

* The writer's choice is ``novel.settings.get('knn')`` (on, layers, k); everything
  else comes from KNNSettings' measured defaults.
* The store is derived data in ``<project>/memory/knn``: ``ensure_store`` loads it,
  distrusts missing/corrupt/foreign files (rebuilds them) and re-indexes only what
  changed since (common token prefix). It is kept in memory between Continues.
* Reading: stored tokens at or after the first manuscript token the prompt already
  holds are never read (``horizon``), so memory brings back only what the context
  dropped. The prefix cache key carries the memory's settings, the horizon and a
  digest of the readable tokens: retrieved memories change the keys/values of later
  layers, so a cached prefix is only reused under the very same memory.
"""
from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

from dataclasses import replace

from ..context import encode
from ..settings import SettingsError, layers_text, parse_layers
from .knn import KNNSettings, StoreError, store_folder
from .knn_index import ensure_store
from .protocol import Reader

class ProjectKNN:
    """``novel.knn``: one novel's kNN memory (a Memory, see protocol.py). ``novel`` gives
    .store, .settings, .folder, .model, .desk and .chapters (the book with its margin
    notes inline); the model lock is taken around every forward pass here."""
    name = "knn"

    def __init__(self, novel):
        self.novel = novel
        self._store = None
        self._lock = threading.RLock()

    # -- settings ---------------------------------------------------------------
    def choice(self):
        """What the writer chose (engine.settings.KNN: on, layers, k)."""
        return self.novel.settings.get("knn")

    def read_settings(self) -> KNNSettings:
        """How the store is written and read: the writer's choice over the defaults."""
        c = self.choice()
        return KNNSettings(layers=c.layers, k=c.k)

    def settings(self) -> dict:
        """What the page shows: on, the layers actually read (defaults resolved), k."""
        c = self.choice()
        depth = self._depth()
        layers = list(self.read_settings().read_layers(depth)) if depth else (
            list(c.layers) if c.layers else None)
        return {"on": c.on, "layers": layers, "k": c.k, "depth": depth}

    def set_settings(self, on: bool | None = None, layers=None, k: int | None = None) -> dict:
        """Turn kNN memory on/off; layers as '14-29' / '22,25' / a list ('' = defaults)."""
        if layers is not None:
            try:
                layers = parse_layers(layers, self._depth()) or ""
            except ValueError as e:
                raise SettingsError(str(e)) from e
        c = self.choice().changed(on=on, k=k)
        if layers is not None:
            c = replace(c, layers=layers or None)
        self.novel.settings.put(c)
        return self.settings()

    def preparing(self) -> str | None:
        return None  # indexing what changed is quick; a rebuild has its own progress

    def _depth(self) -> int:
        try:
            return self.novel.model.get(timeout=0).shape[0]
        except Exception:  # noqa: BLE001 - model still loading: show what is stored
            return 0

    # -- the store -------------------------------------------------------------
    def folder(self) -> Path:
        return store_folder(self.novel.folder)

    def tokens(self, lm) -> list[int]:
        return encode(lm.tokenizer, self.novel.chapters.memory_book())  # prose, notes inline

    def store(self, progress=None, locked: bool = False):
        """The store, in step with the manuscript (indexing what changed)."""
        lm = self.novel.model.get()
        with self._lock:
            settings = self.read_settings()
            ids = self.tokens(lm)
            cur = self._store
            if cur is not None and (cur.fingerprint != lm.fingerprint or
                                    cur.saved_stamp != settings.stamp(lm.shape[0])):
                cur = None
            lock = _Null() if locked else lm.lock
            with lock:
                self._store = ensure_store(self.folder(), lm, ids, settings,
                                           progress=progress or False, store=cur)
            return self._store

    def rebuild(self, progress=None) -> dict:
        """Forget the files and index the whole manuscript again; progress:
        callable(done, total) or None. Returns info()."""
        self.novel.desk.idle_or_fail()
        with self._lock:
            self._store = None
            shutil.rmtree(self.folder(), ignore_errors=True)
            self.store(progress)
        return self.info()

    def info(self) -> dict:
        """Stored tokens, index kind and size on disk, without indexing anything."""
        folder = self.folder()
        size = sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) \
            if folder.is_dir() else 0
        st = self._store
        if st is None and folder.is_dir():
            try:
                import json
                meta = json.loads((folder / "meta.json").read_text())
                return {"tokens": int(meta["count"]), "index": meta.get("kind", "flat"),
                        "bytes": size, "layers": meta["layers"], "loaded": False}
            except (OSError, ValueError, KeyError):
                pass
        if st is None:
            return {"tokens": 0, "index": "none", "bytes": size, "layers": [],
                    "loaded": False}
        return {"tokens": len(st), "index": st.kind, "bytes": size,
                "layers": list(st.layers), "loaded": True}

    def after_accept(self, chapter_id, passage_id) -> None:
        """Index the new passage (only when memory is on)."""
        if self.choice().on:
            try:
                self.store()
            except StoreError:
                pass  # the next Continue rebuilds it

    # -- reading during a Continue -------------------------------------------
    def reader(self, lm, chapter_id: int, prompt_ids: list[int], receipt: dict) -> Reader | None:
        """Its part in a Continue with this prompt (None when off). Call outside the model
        lock (indexing takes it)."""
        if not self.choice().on:
            return None
        from .attention import knn_memory

        store = self.store()
        settings = store.settings
        horizon, offset = self._horizon(lm, chapter_id, prompt_ids, receipt)
        n = int(store.count_before(horizon))
        digest = hashlib.sha1(store.tokens[:n].tobytes()).hexdigest()[:16]
        layers = settings.read_layers(store.depth)
        key = (lm.fingerprint, "knn", layers, settings.k, settings.position, horizon, digest)
        receipt.setdefault("inside", []).append(
            f"Long memory (kNN): {n:,} of {len(store):,} stored tokens readable (the rest "
            f"is in the prompt already) · layers {layers_text(layers)} · k {settings.k}"
            if n else f"Long memory (kNN): nothing to read yet, all {len(store):,} stored "
            "tokens are in the prompt already")
        if n == 0:
            return Reader(key=key)

        # offset also hides entries within (prompt start) tokens of the horizon, as if
        # the bible and pins were manuscript: pass it only where positions need it.
        offset = offset if settings.position == "exact" else None

        def ctx():
            return knn_memory(lm, store, settings, offset=offset, horizon=horizon)
        return Reader(ctx, key)

    def _horizon(self, lm, chapter_id, prompt_ids, receipt) -> tuple[int, int]:
        """Book position of the first manuscript token in the prompt (the kept tail of
        this chapter), and the book-minus-local offset of that token."""
        tail = next((b for b in receipt.get("blocks", []) if b["kind"] == "tail"), None)
        tok = lm.tokenizer
        chapters = self.novel.store.chapters()
        here = self._position(chapters, chapter_id)
        book = self.novel.chapters
        before = "\n\n".join(book.memory_text(c) for c in chapters if c["position"] < here)
        own = book.memory_text(next(c for c in chapters if c["id"] == chapter_id))
        start = len(encode(tok, before + "\n\n")) if before else 0
        own_n = len(encode(tok, own))
        kept = tail["tokens"] if tail else 0
        horizon = max(0, start + own_n - kept)
        local = tail["start"] if tail else len(prompt_ids)
        return horizon, horizon - local

    @staticmethod
    def _position(chapters, chapter_id):
        return next(c["position"] for c in chapters if c["id"] == chapter_id)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
