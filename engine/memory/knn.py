"""kNN persistent memory: the keys and values of every manuscript token, for a few
layers, searchable per (layer, KV head) by inner product.

Why this shape:
* One FAISS index per layer and KV head, because attention is per head and grouped
  query heads share their KV head's keys: a query head searches its KV head's index.
* Keys are stored *un-rotated* (pre-RoPE, but after any key norm and RoPE scaling):
  the attention function places them at whatever position the read mode wants
  (just behind the window, or at their original position) by rotating them at read
  time, so one store serves both position modes and any window.
* Exact ``IndexFlatIP`` while small; past ``approx_threshold`` vectors an approximate
  index (IVF with 8-bit scalar quantisation by default, or HNSW), which keeps
  retrieval fast at a million stored tokens (figures: docs/measurements.md, kNN memory).
* Keys and values also live in numpy arrays (float16): they are the source of truth
  from which any index can be rebuilt, and the values are gathered from them.
* Everything is derived from the manuscript, so a missing, corrupt or foreign store
  (other model fingerprint or layers) is never trusted: it is rebuilt. The on-disk
  half (save, verified load, tidying) is knn_files.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# the settings are declared with the others (engine/settings.py); re-exported here
from ..settings import PRESETS, KNNSettings
# the on-disk half, re-exported here where the rest of the engine imports it from
from .knn_files import FORMAT_VERSION, KNN_DIR, StoreError, clean_stale, store_folder
from .knn_files import load_store, save_store

__all__ = ["FORMAT_VERSION", "KNN_DIR", "PRESETS", "KNNSettings", "KNNStore", "StoreError",
           "clean_stale", "gpu_available", "k32", "new_store", "store_folder"]


def _faiss():
    import faiss
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class KNNStore:
    """Keys/values of stored tokens for some layers; FAISS index per (layer, KV head).

    ``keys[layer]``/``values[layer]`` are float16 arrays ``(kv_heads, n, head_dim)``;
    ``positions`` are book positions (token index in the manuscript), increasing;
    ``tokens`` the token ids, used to tell what changed in the manuscript.
    """

    def __init__(self, folder: Path | None, layers, kv_heads: int, head_dim: int,
                 fingerprint: str = "", settings: KNNSettings | None = None,
                 depth: int = 0):
        self.folder = Path(folder) if folder else None
        self.layers = tuple(sorted(int(x) for x in layers))
        self.kv_heads, self.head_dim = int(kv_heads), int(head_dim)
        self.fingerprint = fingerprint
        self.settings = settings or KNNSettings()
        self.depth = depth
        self.keys = {l: np.zeros((kv_heads, 0, head_dim), np.float16) for l in self.layers}
        self.values = {l: np.zeros((kv_heads, 0, head_dim), np.float16) for l in self.layers}
        self.positions = np.zeros(0, np.int64)
        self.tokens = np.zeros(0, np.int32)
        self._index: dict = {}          # (layer, head) -> faiss index
        self._dense: dict = {}          # (layer, head) -> float32 torch keys (batch search)
        self._kind = "flat"
        self._built_n = 0               # entries when the indexes were last built
        self._last_params = None        # (key, (params, selector)) of the last search
        self._gpu = None
        self.saved_stamp = None         # the stamp read from disk (load)

    # -- size and kind -------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def kind(self) -> str:
        return self._kind

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.keys.values()) +
                   sum(a.nbytes for a in self.values.values()) + self.positions.nbytes)

    def index(self, layer: int, head: int):
        """The built FAISS index of (layer, KV head), or None until a search builds it."""
        return self._index.get((layer, head))

    def info(self) -> dict:
        return {"tokens": len(self), "layers": list(self.layers), "index": self._kind,
                "bytes": self.nbytes(), "fingerprint": self.fingerprint}

    # -- writing -------------------------------------------------------------------
    def add(self, keys: dict, values: dict, positions, tokens=None) -> None:
        """Append entries. keys/values: layer -> array (kv_heads, n, head_dim)."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        n = positions.shape[0]
        if n == 0:
            return
        if len(self) and positions[0] <= self.positions[-1]:
            raise ValueError("positions must increase: truncate before re-adding")
        for l in self.layers:
            k = np.asarray(keys[l], np.float16)
            v = np.asarray(values[l], np.float16)
            assert k.shape == (self.kv_heads, n, self.head_dim), k.shape
            self.keys[l] = np.concatenate([self.keys[l], k], axis=1)
            self.values[l] = np.concatenate([self.values[l], v], axis=1)
        self.positions = np.concatenate([self.positions, positions])
        tok = np.full(n, -1, np.int32) if tokens is None else np.asarray(tokens, np.int32)
        self.tokens = np.concatenate([self.tokens, tok])
        if self._index and self._can_grow():
            for (l, h), index in self._index.items():
                index.add(np.ascontiguousarray(k32(self.keys[l][h, -n:])))
        else:
            self._index = {}  # rebuilt lazily (and approximate past the threshold)

    def _can_grow(self) -> bool:
        """Whether new entries can join the current indexes instead of a rebuild: a flat
        index up to the threshold; an approximate one until the store has doubled since
        its lists were trained (a rebuild per accepted passage is slow on a big book,
        while quantiser and lists trained on half the data still fit)."""
        if self._kind == "flat":
            return len(self) <= self.settings.approx_threshold
        return len(self) <= 2 * self._built_n

    def truncate(self, n: int) -> None:
        """Keep the first n entries (what an edit or deletion did not touch)."""
        if n >= len(self):
            return
        for l in self.layers:
            self.keys[l] = self.keys[l][:, :n].copy()
            self.values[l] = self.values[l][:, :n].copy()
        self.positions, self.tokens = self.positions[:n].copy(), self.tokens[:n].copy()
        self._index, self._dense = {}, {}

    def clone(self, n: int | None = None, settings: KNNSettings | None = None) -> "KNNStore":
        """An in-memory copy of the first n entries (no folder: never saved by accident)."""
        n = len(self) if n is None else int(n)
        c = KNNStore(None, self.layers, self.kv_heads, self.head_dim, self.fingerprint,
                     settings or self.settings, self.depth)
        for l in self.layers:
            c.keys[l], c.values[l] = self.keys[l][:, :n].copy(), self.values[l][:, :n].copy()
        c.positions, c.tokens = self.positions[:n].copy(), self.tokens[:n].copy()
        return c

    # -- search ----------------------------------------------------------------------
    def build_index(self) -> None:
        faiss = _faiss()
        n, s = len(self), self.settings
        self._index = {}
        self._built_n = n
        if n <= s.approx_threshold:
            self._kind = "flat"
        else:
            self._kind = s.approx
        for l in self.layers:
            for h in range(self.kv_heads):
                x = np.ascontiguousarray(k32(self.keys[l][h]))
                if self._kind == "flat":
                    index = faiss.IndexFlatIP(self.head_dim)
                elif self._kind == "hnsw":
                    index = faiss.IndexHNSWFlat(self.head_dim, 32, faiss.METRIC_INNER_PRODUCT)
                    index.hnsw.efConstruction = 64
                else:
                    # ~4 sqrt(n) lists, but at least 39 training points each (FAISS warns,
                    # and its centroids are noise, below that)
                    nlist = int(min(4096, max(16, min(4 * np.sqrt(n), n / 39))))
                    quant = faiss.IndexFlatIP(self.head_dim)
                    index = faiss.IndexIVFScalarQuantizer(
                        quant, self.head_dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                        faiss.METRIC_INNER_PRODUCT)
                    rng = np.random.default_rng(0)
                    sample = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
                    index.train(sample)
                if n:
                    index.add(x)
                if self._gpu is not False and gpu_available() and self._kind != "hnsw":
                    if self._gpu is None:
                        self._gpu = faiss.StandardGpuResources()
                    index = faiss.index_cpu_to_gpu(self._gpu, 0, index)
                self._index[(l, h)] = index

    def _params(self, limit: int | None):
        """Search parameters (and the selector they point to), the last ones reused:
        a decode step searches with the same ones on every layer and head."""
        key = (self._kind, limit, self.settings.nprobe, self.settings.ef_search)
        cached = self._last_params
        if cached is not None and cached[0] == key:
            return cached[1]
        self._last_params = (key, self._make_params(limit))
        return self._last_params[1]

    def _make_params(self, limit: int | None):
        faiss = _faiss()
        sel = faiss.IDSelectorRange(0, int(limit)) if limit is not None else None
        if self._kind == "ivf":
            p = faiss.SearchParametersIVF(nprobe=self.settings.nprobe)
        elif self._kind == "hnsw":
            p = faiss.SearchParametersHNSW(efSearch=self.settings.ef_search)
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p, sel  # the caller keeps sel alive while p is in use

    def search(self, layer: int, head: int, queries: np.ndarray, k: int,
               limit: int | None = None):
        """Top-k stored entries of (layer, KV head) by inner product, among the first
        ``limit`` entries (None: all). Returns (scores, ids), ids -1 where none."""
        if not self._index:
            self.build_index()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(self) if limit is None else min(int(limit), len(self))
        if n <= 0 or k <= 0:
            return (np.full((q.shape[0], max(k, 0)), -np.inf, np.float32),
                    np.full((q.shape[0], max(k, 0)), -1, np.int64))
        if self._kind == "flat" and q.shape[0] >= 32 and not self._index_on_gpu():
            return self._search_dense(layer, head, q, k, n)
        index = self._index[(layer, head)]
        params, _sel = self._params(n if n < len(self) else None)
        scores, ids = index.search(q, int(k), params=params)
        return scores, ids

    def _search_dense(self, layer, head, q, k, n):
        """Exact search as one BLAS matmul + top-k: for a batch of queries (scoring,
        prefill) FAISS's flat scan with an ID range selector does not use BLAS and was
        the bottleneck (figures: docs/measurements.md, kNN memory, implementation notes)."""
        import torch
        key = (layer, head)
        keys = self._dense.get(key)
        if keys is None or keys.shape[0] != len(self):
            keys = torch.from_numpy(k32(self.keys[layer][head]))
            self._dense[key] = keys
        kk = min(int(k), n)
        scores = torch.from_numpy(q) @ keys[:n].T
        top, ids = scores.topk(kk, dim=-1)
        if kk < k:
            pad = q.shape[0], k - kk
            top = torch.cat([top, torch.full(pad, -float("inf"))], 1)
            ids = torch.cat([ids, torch.full(pad, -1, dtype=torch.long)], 1)
        return top.numpy(), ids.numpy()

    def search_layer(self, layer: int, queries, k: int, limit: int | None = None):
        """Top-k of every KV head of ``layer`` in one call (a decode step): ``queries`` a
        float32 torch tensor (kv_heads, m, d), row block h searched in head h's index,
        among the first ``limit`` entries (None: all). Returns torch (scores, ids)
        (kv_heads, m, k), ids -1 and scores -inf where none, and whether the scores are
        exact inner products (flat index) rather than an approximate index's.
        For a handful of queries FAISS's own scan beats a torch matmul + top-k (figures:
        docs/measurements.md, kNN memory, implementation notes), so all go through FAISS.
        """
        import torch
        if not self._index:
            self.build_index()
        m = queries.shape[1]
        n = len(self) if limit is None else min(int(limit), len(self))
        if n <= 0 or k <= 0:
            return (torch.full((self.kv_heads, m, max(k, 0)), -float("inf")),
                    torch.full((self.kv_heads, m, max(k, 0)), -1, dtype=torch.long), True)
        q = np.ascontiguousarray(queries.numpy(), dtype=np.float32)
        params, _sel = self._params(n if n < len(self) else None)
        scores = np.empty((self.kv_heads, m, k), np.float32)
        ids = np.empty((self.kv_heads, m, k), np.int64)
        # FAISS's own OpenMP threads: forcing one per search (as an earlier version did
        # after a measurement on busy cores) made a quiet search slower
        for h in range(self.kv_heads):
            scores[h], ids[h] = self._index[(layer, h)].search(q[h], int(k), params=params)
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids)
        return scores.masked_fill(ids < 0, -float("inf")), ids, self._kind == "flat"

    def count_before(self, position) -> np.ndarray:
        """How many stored entries have a book position < position (vectorised)."""
        return np.searchsorted(self.positions, np.asarray(position), side="left")

    # -- persistence ----------------------------------------------------------------
    def meta(self) -> dict:
        return {"version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                "layers": list(self.layers), "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "count": len(self), "depth": self.depth,
                "stamp": self.settings.stamp(self.depth) if self.depth else None,
                "saved": time.time()}

    def save(self, folder: Path | None = None) -> None:
        """Write atomically: a fresh sibling folder, then a rename swap."""
        self.folder = Path(folder or self.folder)
        save_store(self, self.folder)

    def _index_on_gpu(self) -> bool:
        return self._gpu not in (None, False)

    @classmethod
    def load(cls, folder: Path, settings: KNNSettings | None = None) -> "KNNStore":
        """Load and verify every file against its recorded digest; StoreError if not."""
        return load_store(cls, folder, settings)

def k32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# -- a store for a model (engine/memory/knn_index.py keeps it in line with a book) ------
def new_store(folder, lm, settings: KNNSettings) -> KNNStore:
    depth, kv, hd = lm.shape
    return KNNStore(folder, settings.read_layers(depth), kv, hd, lm.fingerprint,
                    settings, depth)
