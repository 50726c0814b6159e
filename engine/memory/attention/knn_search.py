"""Finding stored entries for queries: index searches, the shared candidate pool and
its re-ranking, and gathering what was found.

Shared search (``search_every`` N > 1, attend): only every N-th memory layer searches
the FAISS indexes; its hits, as token rows (a row is the same token at every layer),
form the query's candidate pool, and the next N-1 memory layers take their own top-k
from that pool by exact logits with their own keys. The index search is the one cost
that grows with the book; this divides it by N while each layer still picks by its
own attention."""
from __future__ import annotations

import time

import numpy as np
import torch


def searching_layers(layers, every: int) -> set:
    """The memory layers that search the index: the first of every ``every`` in order
    (the ones between re-rank its hits)."""
    return {l for i, l in enumerate(sorted(layers)) if i % max(1, int(every)) == 0}


def retrieve(st, layer, kv_head, vecs, k, n_allowed):
    """Search one KV head's index with vecs (m, d); entries >= n_allowed[i] masked.
    Returns ids (m, k) with -1 where nothing valid."""
    t = time.perf_counter()
    store = st.store
    lim = int(n_allowed.max())
    _, ids = store.search(layer, kv_head, vecs, k, limit=lim if lim < len(store) else None)
    st.stats["searches"] += 1
    st.stats["search_s"] += time.perf_counter() - t
    ids = np.where(ids < n_allowed[:, None], ids, -1)
    return ids


def unique_rows(ids: np.ndarray) -> np.ndarray:
    """Candidate pool: ids (..., P) with duplicates and misses set to -1."""
    srt = np.sort(ids, axis=-1)
    dup = np.zeros(srt.shape, bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    return np.where(dup, -1, srt)


def top_rows(sc: torch.Tensor, rows: torch.Tensor, k: int, bad=None):
    """The k best candidates of each search vector: sc (m, h, P) scores of the rows
    (m, P); ``bad`` (m, 1, P) marks no-candidate slots. Returns (scores, ids)
    (m, h, k), -inf/-1 where fewer than k candidates exist."""
    if bad is not None:
        sc.masked_fill_(bad, float("-inf"))
    kk = min(k, sc.shape[-1])
    top, at = sc.topk(kk, dim=-1)
    ids = rows[:, None].expand(-1, sc.shape[1], -1).gather(-1, at)
    if bad is not None:
        ids.masked_fill_(top == float("-inf"), -1)
    if kk < k:
        pad = (sc.shape[0], sc.shape[1], k - kk)
        top = torch.cat([top, torch.full(pad, -float("inf"))], -1)
        ids = torch.cat([ids, torch.full(pad, -1, dtype=ids.dtype)], -1)
    return top, ids


def rerank(keys: np.ndarray, vecs: torch.Tensor, pool: np.ndarray, k: int):
    """Top-k of search vectors among their candidate rows, by exact inner product.
    keys (n, d) fp16 store rows of one (layer, KV head); vecs (m, h, d), the h vectors
    of row i sharing candidates pool[i] (m, P), -1 for none. Returns (scores, ids) as
    torch (m, h, k), -inf/-1 where none. Rows are gathered once per pool and converted
    in torch (numpy's float16 conversion was most of the cost)."""
    m, P = pool.shape
    pool_t = torch.from_numpy(np.array(pool))
    u = torch.from_numpy(keys).index_select(0, pool_t.clamp_min(0).view(-1))
    sc = torch.matmul(vecs.float(), u.view(m, P, -1).float().transpose(1, 2))  # (m, h, P)
    return top_rows(sc, pool_t.clamp_min(0), k, (pool_t < 0)[:, None, :])


class Pool:
    """A decode step's candidate rows (B, P), laid out once for the re-ranking layers
    that follow the searching one: the flat row index into every KV head's keys."""

    def __init__(self, rows: np.ndarray, kv_heads: int, n: int):
        self.B = rows.shape[0]
        if self.B == 1:  # one sequence: keep only real rows, nothing to mask (in numpy,
            real = rows[0][rows[0] >= 0]  # as each torch op is a cost in a decode step)
            tiled = np.tile(real, (kv_heads, 1))
            self.rows = torch.from_numpy(tiled)                              # (KV, P)
            self.flat = torch.from_numpy(
                (tiled + np.arange(0, kv_heads * n, n)[:, None]).reshape(-1))
            self.bad = None
            return
        r = torch.from_numpy(np.ascontiguousarray(rows))
        self.rows = r.clamp_min(0).repeat(kv_heads, 1)                   # (KV*B, P)
        offs = torch.arange(0, kv_heads * n, n).repeat_interleave(self.B).view(-1, 1)
        self.flat = (self.rows + offs).view(-1)
        self.bad = (r < 0).repeat(kv_heads, 1)[:, None] if bool((r < 0).any()) else None


def rerank_heads(keys: np.ndarray, vecs: torch.Tensor, pool: Pool, k: int):
    """``rerank`` for every KV head in one call (a decode step): keys (KV, n, d),
    vecs (KV, B, G, d). Returns (scores, ids) (KV, B, G, k), -inf/-1 where none."""
    KV, n, d = keys.shape
    m, P = pool.rows.shape
    u = torch.from_numpy(keys).view(KV * n, d).index_select(0, pool.flat)
    sc = torch.matmul(vecs.reshape(m, -1, d), u.view(m, P, d).float().transpose(1, 2))
    top, ids = top_rows(sc, pool.rows, k, pool.bad)
    return top.view(KV, pool.B, -1, k), ids.view(KV, pool.B, -1, k)


def gather(st, layer, kv_head, ids, device):
    """Stored keys, values and positions of ``ids`` (numpy, -1 for none), float32 on
    ``device`` (the store lives in host memory; only the rows read travel to the GPU).
    Rows are picked and converted in torch, not numpy, whose float16 conversion was
    the cost (docs/measurements.md, kNN memory, implementation notes)."""
    safe = torch.from_numpy(np.where(ids >= 0, ids, 0)).view(-1)
    shape = (*ids.shape, st.store.head_dim)

    def rows(arrays):
        return torch.from_numpy(arrays[layer][kv_head]).index_select(0, safe).to(
            device).float().view(shape)

    pos = torch.from_numpy(st.store.positions).index_select(0, safe).view(ids.shape)
    return rows(st.store.keys), rows(st.store.values), pos.to(device)
