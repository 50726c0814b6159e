"""The kNN memory of one novel: its per-novel setting, its store kept in step with
the manuscript, and the read context a Continue runs under.

Why here and not in novel.py: the Novel facade only delegates (knn_settings,
set_knn_settings, knn_info, rebuild_knn, the after-accept hook and the Continue's
forward context), so the kNN plumbing stays in one small module.

* The setting lives in the novel's database (``settings['knn']``: on, layers, k);
  everything else comes from KNNSettings' measured defaults.
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

from ..context import encode
from .knn import KNNSettings, StoreError, store_folder
from .knn_index import ensure_store

SETTING = "knn"


class ProjectKNN:
    """One novel's kNN memory. ``novel`` gives .store (db), .folder, .model and
    .memory_book() (prose with margin notes inline); the model lock is taken around every forward pass here."""

    def __init__(self, novel):
        self.novel = novel
        self._store = None
        self._lock = threading.RLock()

    # -- settings --------------------------------------------------------------
    def raw(self) -> dict:
        d = self.novel.store.get_setting(SETTING) or {}
        return {"on": bool(d.get("on", False)), "layers": d.get("layers"),
                "k": int(d.get("k", KNNSettings.k))}

    def settings(self) -> KNNSettings:
        d = self.raw()
        return KNNSettings(layers=tuple(d["layers"]) if d["layers"] else None, k=d["k"])

    def public(self) -> dict:
        """What the UI shows: on, the layers actually read (defaults resolved), k."""
        d = self.raw()
        depth = self._depth()
        layers = list(self.settings().read_layers(depth)) if depth else d["layers"]
        return {"on": d["on"], "layers": layers, "k": d["k"], "depth": depth}

    def set(self, on: bool, layers=None, k: int | None = None) -> dict:
        d = self.raw()
        d["on"] = bool(on)
        if layers is not None:
            d["layers"] = parse_layers(layers, self._depth()) or None
        if k is not None:
            d["k"] = max(1, min(int(k), 1024))
        self.novel.store.set_setting(SETTING, d)
        return self.public()

    def _depth(self) -> int:
        try:
            return self.novel.model.get(timeout=0).shape[0]
        except Exception:  # noqa: BLE001 - model still loading: show what is stored
            return 0

    # -- the store -------------------------------------------------------------
    def folder(self) -> Path:
        return store_folder(self.novel.folder)

    def tokens(self, lm) -> list[int]:
        return encode(lm.tokenizer, self.novel.memory_book())  # prose, notes inline

    def store(self, progress=None, locked: bool = False):
        """The store, in step with the manuscript (indexing what changed)."""
        lm = self.novel.model.get()
        with self._lock:
            settings = self.settings()
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

    def rebuild(self, progress=None):
        """Forget the files and index the whole manuscript again."""
        with self._lock:
            self._store = None
            shutil.rmtree(self.folder(), ignore_errors=True)
            return self.store(progress)

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

    def after_accept(self, novel, chapter_id, passage_id) -> None:
        """After-accept hook: index the new passage (only when memory is on)."""
        if self.raw()["on"]:
            try:
                self.store()
            except StoreError:
                pass  # the next Continue rebuilds it

    # -- reading during a Continue -------------------------------------------
    def reader(self, lm, chapter_id: int, prompt_ids: list[int], receipt: dict):
        """(forward_context or None, prefix_key) for a Continue with this prompt.
        Call outside the model lock (indexing takes it)."""
        if not self.raw()["on"]:
            return None, lm.fingerprint
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
            return None, key

        # offset also hides entries within (prompt start) tokens of the horizon, as if
        # the bible and pins were manuscript: pass it only where positions need it.
        offset = offset if settings.position == "exact" else None

        def ctx():
            return knn_memory(lm, store, settings, offset=offset, horizon=horizon)
        return ctx, key

    def _horizon(self, lm, chapter_id, prompt_ids, receipt) -> tuple[int, int]:
        """Book position of the first manuscript token in the prompt (the kept tail of
        this chapter), and the book-minus-local offset of that token."""
        tail = next((b for b in receipt.get("blocks", []) if b["kind"] == "tail"), None)
        tok = lm.tokenizer
        chapters = self.novel.store.chapters()
        here = self._position(chapters, chapter_id)
        before = "\n\n".join(self.novel.memory_text(c) for c in chapters
                             if c["position"] < here)
        own = self.novel.memory_text(next(c for c in chapters if c["id"] == chapter_id))
        start = len(encode(tok, before + "\n\n")) if before else 0
        own_n = len(encode(tok, own))
        kept = tail["tokens"] if tail else 0
        horizon = max(0, start + own_n - kept)
        local = tail["start"] if tail else len(prompt_ids)
        return horizon, horizon - local

    @staticmethod
    def _position(chapters, chapter_id):
        return next(c["position"] for c in chapters if c["id"] == chapter_id)


def parse_layers(text, depth: int = 0) -> list[int]:
    """'14-29', '22, 25' or a list -> sorted layer indices (checked against depth)."""
    if isinstance(text, (list, tuple)):
        parts = [str(x) for x in text]
    else:
        parts = [p for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    out = set()
    for p in parts:
        p = p.strip()
        try:
            if "-" in p:
                a, b = (int(x) for x in p.split("-", 1))
                out |= set(range(min(a, b), max(a, b) + 1))
            else:
                out.add(int(p))
        except ValueError as e:
            raise ValueError(f"'{p}' is not a layer number or range like 14-29") from e
    if depth and any(not 0 <= x < depth for x in out):
        raise ValueError(f"layers must lie in 0..{depth - 1} for this model")
    return sorted(out)


def layers_text(layers) -> str:
    """'15-29' for a run of layers, else '22, 25'."""
    layers = sorted(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(x) for x in layers)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
