"""Reading the kNN memory in ``attend`` mode at the memory layers.

Each memory query head takes its top-k stored keys of its KV head and attends over
them and the local keys in one softmax, or (``gate``) in separate softmaxes mixed by
sigmoid(b_h); computed eagerly, in float32, in query chunks. Stored keys are
un-rotated; where they sit is the position mode's choice:
* ``behind`` (default): just behind the first key the query can see locally (at a
  fixed distance, ``gap`` further), so a memory from 100k tokens back looks like a
  recent one. Search is then exact: the attention logit of stored key u placed at p'
  is (R(-p') q) . u, so we search with the query rotated by -p'.
* ``exact``: at its original position (book position - ``offset``). Search uses the
  behind-placement ranking as a proxy; with every key retrievable (k >= stored)
  window + memory equals full attention (tests/test_attention.py checks this)."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..knn import KNNSettings, KNNStore
from .knn_search import (Pool, gather, rerank, rerank_heads, retrieve, searching_layers,
                         unique_rows)
from .masks import first_visible, repeat_kv
from .rotary import rotary_inv_freq, rotate, rotate_by, rotation

QUERY_CHUNK = 64


class Read:
    """Read: which store, which layers, and where the local window sits in the book."""

    def __init__(self, lm, store: KNNStore | None, settings: KNNSettings, offset, horizon,
                 window, gates):
        self.store = store if store is not None and len(store) else None
        self.settings = settings
        self.offset, self.horizon, self.window = offset, horizon, window
        self.depth = lm.shape[0]
        layers = settings.read_layers(self.depth) if self.store is not None else ()
        if self.store is not None:
            missing = set(layers) - set(self.store.layers)
            if missing:
                raise ValueError(f"the kNN store holds layers {self.store.layers}, "
                                 f"not {sorted(missing)}: call ensure_store with these settings")
        self.layers = set(layers)
        self.inv_freq = rotary_inv_freq(lm)
        if gates is None and settings.gate and settings.gate_file and self.layers:
            from ..knn_gate import load_gates
            gates = load_gates(settings.gate_file, lm, sorted(self.layers))
        self.gates = gates
        self.queries: dict = {}  # inject: layer -> {local position: (B, H, d) query}
        self.stats = {"searches": 0, "search_s": 0.0}
        self.rotations: dict = {}  # position -> (cos, sin) for decode steps
        self._heads: dict = {}     # n_heads -> memory heads
        self.searching = searching_layers(self.layers, settings.search_every)
        self.pool: dict = {}       # query chunk start -> candidate rows (B, nq, P)
        self.offsets: dict = {}    # (kv_heads, n) -> row offsets of the KV heads (decode)

    def heads(self, n_heads: int) -> list[int]:
        got = self._heads.get(n_heads)
        if got is None:
            m = max(1, int(round(self.settings.heads * n_heads)))
            got = self._heads[n_heads] = sorted(
                {int(round(x)) for x in np.linspace(0, n_heads - 1, m)})
        return got

    def limits(self, first_visible: torch.Tensor) -> np.ndarray:
        """Per query: stored entries with book position < limit may be read."""
        lim = np.full(first_visible.shape[0], np.iinfo(np.int64).max, np.int64)
        if self.offset is not None:
            lim = np.minimum(lim, first_visible.cpu().numpy().astype(np.int64) + self.offset)
        if self.horizon is not None:
            lim = np.minimum(lim, int(self.horizon))
        return self.store.count_before(lim)

    def gate_bias(self, layer, head):
        if self.gates is not None:
            return self.gates[layer][head]
        return torch.tensor(float(self.settings.gate_bias))


def attend(st, layer, query, key, value, mask, scaling, q_pos, key_pos):
    s = st.settings
    B, H, q_len, d = query.shape
    if q_len == 1 and not s.gate:
        return attend_one(st, layer, query, key, value, mask, scaling, key_pos)
    groups = H // key.shape[1]
    q = query.float()
    K = repeat_kv(key.float(), groups)
    V = repeat_kv(value.float(), groups)
    mem_heads = st.heads(H)
    first = first_visible(mask, key_pos)                 # (q,)
    placed = first - 1 - s.gap                            # behind: local position
    exact = s.position == "exact" and st.offset is not None
    n_allowed_all = st.limits(first)                       # (q,)
    dev = q.device
    out = torch.empty(B, H, q_len, d, device=dev)
    for c0 in range(0, q_len, QUERY_CHUNK):
        sl = slice(c0, min(q_len, c0 + QUERY_CHUNK))
        qc = q[:, :, sl]
        logits = torch.matmul(qc, K.transpose(2, 3)) * scaling
        mc = mask[..., sl, :]
        logits = logits.masked_fill(~mc, float("-inf"))
        local_max = logits.amax(-1, keepdim=True).clamp_min(-1e30)
        p_local = torch.exp(logits - local_max)
        z_local = p_local.sum(-1, keepdim=True)
        o_local = torch.matmul(p_local, V)                # unnormalised
        out[:, :, sl] = o_local / z_local.clamp_min(1e-30)
        n_allowed = n_allowed_all[sl]
        if n_allowed.max() <= 0:
            continue
        nq = sl.stop - sl.start
        searching = layer in st.searching
        found = []
        # one search per KV head for all of its memory query heads (fewer, larger
        # FAISS calls: at decode time the per-call overhead dominates)
        for g in sorted({h // groups for h in mem_heads}):
            hs = [h for h in mem_heads if h // groups == g]
            nh = len(hs)
            qh = qc[:, hs].transpose(0, 1)                            # (nh, B, nq, d)
            # search vectors: the query rotated by -placed (exact logits for behind)
            sv = rotate(qh, -placed[sl], st.inv_freq)
            if searching:
                ids = retrieve(st, layer, g, sv.detach().reshape(-1, d).cpu().numpy(), s.k,
                               np.tile(n_allowed, nh * B))
                found.append(ids.reshape(nh, B, nq, -1).transpose(1, 2, 0, 3)
                             .reshape(B, nq, -1))
            else:
                pool = st.pool[c0].reshape(B * nq, -1)
                vecs = sv.permute(1, 2, 0, 3).reshape(B * nq, nh, d).cpu()
                ids = rerank(st.store.keys[layer][g], vecs, pool, s.k)[1]
                ids = ids.permute(1, 0, 2).reshape(nh * B * nq, -1).numpy()
            u, v, pos = gather(st, layer, g, ids, dev)            # (nh*B*nq, k, d)
            if exact:  # keys at their own positions
                km = rotate(u, (pos - st.offset).float(), st.inv_freq)
                lm_ = torch.einsum("nd,nkd->nk", qh.reshape(-1, d), km) * scaling
            else:  # behind: q . R(placed) u is the search vector's (R(-placed) q) . u
                lm_ = torch.einsum("nd,nkd->nk", sv.reshape(-1, d), u) * scaling
            lm_ = lm_.masked_fill(torch.from_numpy(ids < 0).to(dev), float("-inf"))
            lm_ = lm_.view(nh, B, nq, -1).transpose(0, 1)             # (B, nh, nq, k)
            v = v.view(nh, B, nq, -1, d).transpose(0, 1)              # (B, nh, nq, k, d)
            if s.gate:
                gate = torch.stack([torch.sigmoid(st.gate_bias(layer, h)) for h in hs]).to(dev)
                pm = torch.softmax(lm_, -1).nan_to_num(0.0)
                o_mem = torch.einsum("bhqk,bhqkd->bhqd", pm, v)
                has = torch.from_numpy((ids >= 0).any(-1)).to(dev).view(nh, B, nq, 1).transpose(0, 1)
                mix = torch.where(has, gate.view(1, nh, 1, 1), torch.zeros((), device=dev))
                out[:, hs, sl] = mix * o_mem + (1 - mix) * out[:, hs, sl]
            else:
                lmax = local_max[:, hs]                                # (B, nh, nq, 1)
                m_max = torch.maximum(lmax, lm_.amax(-1, keepdim=True))
                pl = p_local[:, hs] * torch.exp(lmax - m_max)
                pm = torch.exp(lm_ - m_max)
                z = pl.sum(-1, keepdim=True) + pm.sum(-1, keepdim=True)
                o = torch.matmul(pl, V[:, hs]) + torch.einsum("bhqk,bhqkd->bhqd", pm, v)
                out[:, hs, sl] = o / z
        if searching:
            st.pool[c0] = unique_rows(np.concatenate(found, -1))
    return out


def attend_one(st, layer, query, key, value, mask, scaling, key_pos):
    """``attend`` for a single query position (a decode step), same result with a
    fraction of the small-op overhead, which, not the search, dominated a decode step
    (docs/measurements.md, kNN memory, implementation notes): all heads at once,
    grouped by KV head without repeating keys, one search call per layer, memory
    logits straight from the search scores when they are exact, values gathered with
    one index_select, one joint softmax over [local keys, retrieved keys]. ``mask``
    None: every key is visible."""
    s = st.settings
    B, H, _, d = query.shape
    KV = key.shape[1]
    G = H // KV
    q = query.float().view(B, KV, G, d)
    V = value.float()
    logits = torch.matmul(q, key.float().transpose(2, 3)).mul_(scaling)  # (B, KV, G, kv)
    kv_len = logits.shape[-1]
    if mask is None:
        first = int(key_pos[0])
    else:
        row = mask[..., -1:, :]                                      # (B|1, 1, 1, kv)
        logits.masked_fill_(~row, float("-inf"))
        # first key the query sees (batch row 0), as first_visible
        r0 = row[0, 0, 0]
        first = int(key_pos[int(r0.to(torch.uint8).argmax()) if bool(r0.any()) else 0])
    n_allowed = len(st.store)
    if st.offset is not None:
        n_allowed = min(n_allowed, int(st.store.count_before(first + st.offset)))
    if st.horizon is not None:
        n_allowed = min(n_allowed, int(st.store.count_before(int(st.horizon))))
    if n_allowed <= 0:
        return torch.matmul(torch.softmax(logits, -1), V).view(B, H, 1, d)
    placed = first - 1 - s.gap
    # search vectors: the query rotated by -placed (its logit with a stored key placed
    # just behind the window is the inner product), (KV, B*G, d)
    if st.inv_freq is None:
        sv = q
    else:
        sv = rotate_by(q, *rotation(st.rotations, st.inv_freq, -placed, q.device))
    sv = sv.transpose(0, 1).reshape(KV, B * G, d)
    t = time.perf_counter()
    store: KNNStore = st.store
    mem_heads = st.heads(H)
    off = None  # query heads that do not read memory
    if len(mem_heads) < H:
        off = torch.ones(H, dtype=torch.bool)
        off[mem_heads] = False
    if layer in st.searching:
        scores, ids, exact_scores = store.search_layer(
            layer, sv.cpu(), s.k, limit=n_allowed if n_allowed < len(store) else None)
        st.stats["searches"] += KV
        hit = ids.view(KV, B, G, -1).permute(1, 0, 2, 3).clone()       # (B, KV, G, k)
        if off is not None:  # the pool holds what memory heads found, as in attend
            hit[:, off.view(KV, G)] = -1
        st.pool["decode"] = Pool(unique_rows(hit.reshape(B, -1).numpy()), KV, len(store))
    else:
        scores, ids = rerank_heads(store.keys[layer], sv.view(KV, B, G, d).cpu(),
                                   st.pool["decode"], s.k)
        scores, ids = scores.view(KV, B * G, -1), ids.view(KV, B * G, -1)
        exact_scores = True
    st.stats["search_s"] += time.perf_counter() - t
    k = ids.shape[-1]
    n = len(store)
    dev = q.device  # search and gather run on the host; what they found moves to dev
    offs = st.offsets.get((KV, n))
    if offs is None:  # each KV head's first row in the flattened store arrays
        st.offsets.clear()
        offs = st.offsets[(KV, n)] = torch.arange(0, KV * n, n).view(KV, 1, 1)
    flat = (ids.clamp_min(0) + offs).view(-1)

    def rows(arrays):  # (KV, n, d) fp16 store rows -> (KV, B*G, k, d) float32 on dev
        return torch.from_numpy(arrays[layer]).reshape(KV * n, d).index_select(
            0, flat).to(dev).float().view(KV, B * G, k, d)

    v = rows(store.values)
    if s.position == "exact" and st.offset is not None:  # keys at their own positions
        where = (torch.from_numpy(store.positions).index_select(0, flat.remainder(n))
                 - st.offset).float().view(KV, B * G, k).to(dev)
        km = rotate(rows(store.keys), where, st.inv_freq)
        mem = torch.einsum("hmd,hmkd->hmk", q.transpose(0, 1).reshape(KV, B * G, d), km)
    elif exact_scores:  # already -inf wherever nothing was found (ids -1)
        mem = scores.to(dev)
    else:  # an approximate index's scores: recompute them from the stored keys
        mem = torch.einsum("hmd,hmkd->hmk", sv, rows(store.keys))
    mem = mem * scaling
    if not exact_scores or s.position == "exact":  # recomputed: mask the misses
        mem.masked_fill_((ids < 0).to(dev), float("-inf"))
    mem = mem.view(KV, B, G, k).transpose(0, 1)                     # (B, KV, G, k)
    v = v.view(KV, B, G, k, d).transpose(0, 1)
    if off is not None:
        mem = mem.masked_fill(off.to(dev).view(1, KV, G, 1), float("-inf"))
    p = torch.softmax(torch.cat([logits, mem], -1), -1)
    out = torch.matmul(p[..., :kv_len], V)
    out += torch.matmul(p[..., kv_len:].unsqueeze(-2), v).squeeze(-2)
    return out.view(B, H, 1, d)
