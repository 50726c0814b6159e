"""Memory-aware attention, registered through transformers' ``AttentionInterface``.

Installed once per model (``install``), the function is a pass-through to the
model's own implementation (sdpa or eager) except inside ``knn_memory(...)`` (read)
or ``index_tokens(...)`` (write), which set a thread-local state. Nothing in the
model files changes, so any decoder the library supports works; the code only
needs what every attention module passes: post-RoPE query/key/value with grouped
KV heads, ``module.layer_idx`` and (when given) ``position_ids``.

Keys are stored un-rotated (see knn.py): at write time the post-RoPE key of a token
at local position p is rotated by -p. At read time a retrieved key is rotated to the
position the read mode gives it:
* ``behind`` (default): just behind the first key the query can see locally (at a
  fixed distance, ``gap`` further), so a memory from 100k tokens back looks like a
  recent one. Search is then exact: the attention logit of stored key u placed at p'
  is (R(-p') q) . u, so we search with the query rotated by -p'.
* ``exact``: at its original position (book position - ``offset``). Search uses the
  behind-placement ranking as a proxy; with every key retrievable (k >= stored)
  window + memory equals full attention (tests/test_attention.py checks this).
Models without rotary embeddings (GPT-2) store and read keys as they are.
Rotary convention assumed: the Llama ``rotate_half`` one (Llama, Mistral, Qwen,
Gemma, Phi-3), over the first 2*len(inv_freq) dims (partial rotary).

Read modes at memory layers (computed eagerly there, in float32, in query chunks):
* ``attend``: each memory query head takes its top-k stored keys of its KV head and
  attends over them and the local keys in one softmax, or (``gate``) in separate
  softmaxes mixed by sigmoid(b_h).
* ``inject``: the seed's value surgery (DESIGN.md), driven by the newest query's
  attention row; types 1/2/3 and the presets live in knn.PRESETS.

Shared search (``search_every`` N > 1, attend): only every N-th memory layer searches
the FAISS indexes; its hits, as token rows (a row is the same token at every layer),
form the query's candidate pool, and the next N-1 memory layers take their own top-k
from that pool by exact logits with their own keys. The index search is the one cost
that grows with the book; this divides it by N while each layer still picks by its
own attention.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from .knn import KNNSettings, KNNStore

_local = threading.local()
PREFIX = "mnemosyne_"
QUERY_CHUNK = 64


class _Stop(Exception):
    """Raised after the last layer an indexing pass needs: the rest is not computed."""


# -- installation ------------------------------------------------------------------------
def _base_fn(name: str):
    if name == "eager":
        from transformers.models.llama.modeling_llama import eager_attention_forward
        return eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return ALL_ATTENTION_FUNCTIONS[name]


def install(lm) -> str:
    """Route the model's attention through the memory function (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    model = lm.model if hasattr(lm, "model") else lm
    current = model.config._attn_implementation or "eager"
    if current.startswith(PREFIX):
        return current
    base = current if current in ("sdpa", "eager") else "sdpa"
    name = PREFIX + base
    AttentionInterface.register(name, partial(_attention, _base_fn(base), base))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model.set_attn_implementation(name)
    return name


def rotary_inv_freq(lm):
    """The model's rotary inverse frequencies, or None for models without RoPE."""
    model = lm.model if hasattr(lm, "model") else lm
    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if isinstance(inv, torch.Tensor):
            return inv
    return None


def rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq) -> torch.Tensor:
    """Rotate vectors x[..., n, d] to positions pos[..., n] (relative rotation)."""
    if inv_freq is None:
        return x
    r = inv_freq.numel() * 2
    ang = pos.to(torch.float64)[..., None] * inv_freq.to(device=x.device, dtype=torch.float64)
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    xr = x[..., :r]
    half = r // 2
    rot = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rot * sin, x[..., r:]], dim=-1)


# -- state -----------------------------------------------------------------------------
class _Capture:
    """Write: collect un-rotated keys and values of the last ``n`` tokens per layer."""

    def __init__(self, layers, n, inv_freq):
        self.layers, self.n, self.inv_freq = set(layers), n, inv_freq
        self.last = max(layers)
        self.keys, self.values = {}, {}


class _Read:
    """Read: which store, which layers, and where the local window sits in the book."""

    def __init__(self, lm, store, settings, offset, horizon, window, gates):
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
            from .knn_gate import load_gates
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


def _state():
    return getattr(_local, "state", None)


# -- the attention function ---------------------------------------------------------------
def _attention(base, base_name, module, query, key, value, attention_mask, scaling=None,
               dropout=0.0, **kw):
    st = _state()
    layer = getattr(module, "layer_idx", None)
    tokens = getattr(_local, "tokens", None)
    tok = tokens.get(layer) if tokens else None
    if st is None and tok is None:
        return base(module, query, key, value, attention_mask, scaling=scaling,
                    dropout=dropout, **kw)
    if st is None:  # memory-matrix tokens only (engine/memory/matrix.py)
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        q_pos = _query_positions(kw.get("position_ids"), query.shape[2], key.shape[2],
                                 query.device)
        key_pos = q_pos[-1] - key.shape[2] + 1 + torch.arange(key.shape[2], device=query.device)
        mask = _bool_mask(attention_mask, q_pos, key_pos, None)
        out = _with_tokens(query, key, value, mask, scaling, q_pos, tok)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    q_len, kv_len = query.shape[2], key.shape[2]
    q_pos = _query_positions(kw.get("position_ids"), q_len, kv_len, query.device)
    key_pos = q_pos[-1] - kv_len + 1 + torch.arange(kv_len, device=query.device)
    if isinstance(st, _Capture):
        if layer in st.layers:
            n = min(st.n, kv_len)
            st.keys[layer] = rotate(key[0, :, -n:].float(), -key_pos[-n:], st.inv_freq)
            st.values[layer] = value[0, :, -n:].float()
        if layer == st.last:
            raise _Stop()
        return base(module, query, key, value, attention_mask, scaling=scaling,
                    dropout=dropout, **kw)
    if (q_len == 1 and attention_mask is None and st.window is None and layer in st.layers
            and st.settings.mode == "attend" and not st.settings.gate):
        # a decode step without padding or window sees every cached key: no mask to
        # build and apply at each memory layer (small ops dominate a decode step)
        out = _attend_one(st, layer, query, key, value, None, scaling, key_pos)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    mask = attention_mask
    if st.window is not None or layer in st.layers:
        mask = _bool_mask(attention_mask, q_pos, key_pos, st.window)
    if layer not in st.layers and tok is not None:  # kNN layers take precedence
        if mask is attention_mask:
            mask = _bool_mask(attention_mask, q_pos, key_pos, None)
        out = _with_tokens(query, key, value, mask, scaling, q_pos, tok)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if layer not in st.layers:
        if mask is not attention_mask and base_name == "eager":
            mask = _float_mask(mask, query.dtype)
        return base(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kw)
    if st.settings.mode == "inject":
        out = _inject(st, layer, query, key, value, mask, scaling, q_pos, key_pos)
    else:
        out = _attend(st, layer, query, key, value, mask, scaling, q_pos, key_pos)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _query_positions(position_ids, q_len, kv_len, device):
    if position_ids is not None:
        p = position_ids.reshape(-1, position_ids.shape[-1])[0]
        if p.numel() == q_len:
            return p.to(device)
    return torch.arange(kv_len - q_len, kv_len, device=device)


def _bool_mask(attention_mask, q_pos, key_pos, window):
    """(B|1, 1, q, kv) bool, True = may attend; causal by position, plus the window."""
    if attention_mask is None:
        m = (key_pos[None, :] <= q_pos[:, None])[None, None]
    elif attention_mask.dtype == torch.bool:
        m = attention_mask
    else:
        m = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if window is not None:
        m = m & (key_pos[None, :] > q_pos[:, None] - window)[None, None]
    return m


def _float_mask(mask, dtype):
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def _first_visible(mask, key_pos):
    """Local position of the first key each query may see (from batch row 0)."""
    m = mask[0, 0]
    idx = torch.where(m.any(-1), m.float().argmax(-1), torch.zeros_like(m[:, 0], dtype=torch.long))
    return key_pos[idx]


def _repeat_kv(x, groups):
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _retrieve(st, layer, kv_head, vecs, k, n_allowed):
    """Search one KV head's index with vecs (m, d); entries >= n_allowed[i] masked.
    Returns ids (m, k) with -1 where nothing valid."""
    t = time.perf_counter()
    store: KNNStore = st.store
    lim = int(n_allowed.max())
    _, ids = store.search(layer, kv_head, vecs, k, limit=lim if lim < len(store) else None)
    st.stats["searches"] += 1
    st.stats["search_s"] += time.perf_counter() - t
    ids = np.where(ids < n_allowed[:, None], ids, -1)
    return ids


def _unique_rows(ids: np.ndarray) -> np.ndarray:
    """Candidate pool: ids (..., P) with duplicates and misses set to -1."""
    srt = np.sort(ids, axis=-1)
    dup = np.zeros(srt.shape, bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    return np.where(dup, -1, srt)


def _top_rows(sc: torch.Tensor, rows: torch.Tensor, k: int, bad=None):
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


def _rerank(keys: np.ndarray, vecs: torch.Tensor, pool: np.ndarray, k: int):
    """Top-k of search vectors among their candidate rows, by exact inner product.
    keys (n, d) fp16 store rows of one (layer, KV head); vecs (m, h, d), the h vectors
    of row i sharing candidates pool[i] (m, P), -1 for none. Returns (scores, ids) as
    torch (m, h, k), -inf/-1 where none. Rows are gathered once per pool and converted
    in torch (numpy's float16 conversion was most of the cost)."""
    m, P = pool.shape
    pool_t = torch.from_numpy(np.array(pool))
    u = torch.from_numpy(keys).index_select(0, pool_t.clamp_min(0).view(-1))
    sc = torch.matmul(vecs.float(), u.view(m, P, -1).float().transpose(1, 2))  # (m, h, P)
    return _top_rows(sc, pool_t.clamp_min(0), k, (pool_t < 0)[:, None, :])


class _Pool:
    """A decode step's candidate rows (B, P), laid out once for the re-ranking layers
    that follow the searching one: the flat row index into every KV head's keys."""

    def __init__(self, rows: np.ndarray, kv_heads: int, n: int):
        self.B = rows.shape[0]
        if self.B == 1:  # one sequence: keep only real rows, nothing to mask (in numpy:
            real = rows[0][rows[0] >= 0]  # each torch op costs ~20 us in a decode step)
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


def _rerank_heads(keys: np.ndarray, vecs: torch.Tensor, pool: _Pool, k: int):
    """``_rerank`` for every KV head in one call (a decode step): keys (KV, n, d),
    vecs (KV, B, G, d). Returns (scores, ids) (KV, B, G, k), -inf/-1 where none."""
    KV, n, d = keys.shape
    m, P = pool.rows.shape
    u = torch.from_numpy(keys).view(KV * n, d).index_select(0, pool.flat)
    sc = torch.matmul(vecs.reshape(m, -1, d), u.view(m, P, d).float().transpose(1, 2))
    top, ids = _top_rows(sc, pool.rows, k, pool.bad)
    return top.view(KV, pool.B, -1, k), ids.view(KV, pool.B, -1, k)


def searching_layers(layers, every: int) -> set:
    """The memory layers that search the index: the first of every ``every`` in order
    (the ones between re-rank its hits)."""
    return {l for i, l in enumerate(sorted(layers)) if i % max(1, int(every)) == 0}


def _gather(st, layer, kv_head, ids, device):
    """Stored keys, values and positions of ``ids`` (numpy, -1 for none), float32 on
    ``device`` (the store lives in host memory; only the rows read travel to the GPU).
    Rows are picked and converted in torch: numpy's float16 conversion cost ~0.4 s per
    scored block of 256 tokens."""
    safe = torch.from_numpy(np.where(ids >= 0, ids, 0)).view(-1)
    shape = (*ids.shape, st.store.head_dim)

    def rows(arrays):
        return torch.from_numpy(arrays[layer][kv_head]).index_select(0, safe).to(
            device).float().view(shape)

    pos = torch.from_numpy(st.store.positions).index_select(0, safe).view(ids.shape)
    return rows(st.store.keys), rows(st.store.values), pos.to(device)


def _attend(st, layer, query, key, value, mask, scaling, q_pos, key_pos):
    s = st.settings
    B, H, q_len, d = query.shape
    if q_len == 1 and not s.gate:
        return _attend_one(st, layer, query, key, value, mask, scaling, key_pos)
    groups = H // key.shape[1]
    q = query.float()
    K = _repeat_kv(key.float(), groups)
    V = _repeat_kv(value.float(), groups)
    mem_heads = st.heads(H)
    first = _first_visible(mask, key_pos)                 # (q,)
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
                ids = _retrieve(st, layer, g, sv.detach().reshape(-1, d).cpu().numpy(), s.k,
                                np.tile(n_allowed, nh * B))
                found.append(ids.reshape(nh, B, nq, -1).transpose(1, 2, 0, 3)
                             .reshape(B, nq, -1))
            else:
                pool = st.pool[c0].reshape(B * nq, -1)
                vecs = sv.permute(1, 2, 0, 3).reshape(B * nq, nh, d).cpu()
                ids = _rerank(st.store.keys[layer][g], vecs, pool, s.k)[1]
                ids = ids.permute(1, 0, 2).reshape(nh * B * nq, -1).numpy()
            u, v, pos = _gather(st, layer, g, ids, dev)            # (nh*B*nq, k, d)
            if exact:  # keys at their own positions
                km = rotate(u, (pos - st.offset).float(), st.inv_freq)
                lm_ = torch.einsum("nd,nkd->nk", qh.reshape(-1, d), km) * scaling
            else:  # behind: q . R(placed) u is the search vector's (R(-placed) q) . u
                lm_ = torch.einsum("nd,nkd->nk", sv.reshape(-1, d), u) * scaling
            lm_ = lm_.masked_fill(torch.from_numpy(ids < 0).to(dev), float("-inf"))
            lm_ = lm_.view(nh, B, nq, -1).transpose(0, 1)             # (B, nh, nq, k)
            v = v.view(nh, B, nq, -1, d).transpose(0, 1)              # (B, nh, nq, k, d)
            if s.gate:
                gate = torch.stack([torch.sigmoid(_gate_bias(st, layer, h)) for h in hs]).to(dev)
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
            st.pool[c0] = _unique_rows(np.concatenate(found, -1))
    return out


def _rotation(st, pos: int, device):
    """(cos, sin) float32 (r,) on ``device`` rotating to position ``pos`` (float64
    angles, as ``rotate``), cached per position: a decode step needs one per memory
    layer."""
    cache = st.rotations
    cs = cache.get(pos)
    if cs is None:
        if len(cache) > 4096:
            cache.clear()
        ang = pos * st.inv_freq.detach().cpu().to(torch.float64)
        emb = torch.cat([ang, ang])
        cs = cache[pos] = (emb.cos().float().to(device), emb.sin().float().to(device))
    return cs


def _attend_one(st, layer, query, key, value, mask, scaling, key_pos):
    """``_attend`` for a single query position (a decode step), same result with a
    fraction of the small-op overhead (which, not the search, dominated a decode
    step: 2.0 -> 0.4 ms per memory layer): all heads at once, grouped by KV head
    without repeating keys, one search call per layer, memory logits straight from
    the search scores when they are exact, values gathered with one index_select,
    one joint softmax over [local keys, retrieved keys]. ``mask`` None: every key
    is visible."""
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
        # first key the query sees (batch row 0), as _first_visible
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
        cos, sin = _rotation(st, -placed, q.device)
        r = cos.numel()
        xr = q[..., :r]
        sv = xr * cos + torch.cat([-xr[..., r // 2:], xr[..., :r // 2]], dim=-1) * sin
        if r < d:
            sv = torch.cat([sv, q[..., r:]], dim=-1)
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
        if off is not None:  # the pool holds what memory heads found, as in _attend
            hit[:, off.view(KV, G)] = -1
        st.pool["decode"] = _Pool(_unique_rows(hit.reshape(B, -1).numpy()), KV, len(store))
    else:
        scores, ids = _rerank_heads(store.keys[layer], sv.view(KV, B, G, d).cpu(),
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

    def gather(arrays):  # (KV, n, d) fp16 store rows -> (KV, B*G, k, d) float32 on dev
        return torch.from_numpy(arrays[layer]).reshape(KV * n, d).index_select(
            0, flat).to(dev).float().view(KV, B * G, k, d)

    v = gather(store.values)
    if s.position == "exact" and st.offset is not None:  # keys at their own positions
        where = (torch.from_numpy(store.positions).index_select(0, flat.remainder(n))
                 - st.offset).float().view(KV, B * G, k).to(dev)
        km = rotate(gather(store.keys), where, st.inv_freq)
        mem = torch.einsum("hmd,hmkd->hmk", q.transpose(0, 1).reshape(KV, B * G, d), km)
    elif exact_scores:  # already -inf wherever nothing was found (ids -1)
        mem = scores.to(dev)
    else:  # an approximate index's scores: recompute them from the stored keys
        mem = torch.einsum("hmd,hmkd->hmk", sv, gather(store.keys))
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


def _gate_bias(st, layer, head):
    if st.gates is not None:
        return st.gates[layer][head]
    return torch.tensor(float(st.settings.gate_bias))


def _inject(st, layer, query, key, value, mask, scaling, q_pos, key_pos):
    """The seed's value surgery, driven by the newest query's attention row."""
    p = st.settings.preset_params()
    B, H, q_len, d = query.shape
    groups = H // key.shape[1]
    q = query.float()
    K = _repeat_kv(key.float(), groups)
    V = _repeat_kv(value.float(), groups).clone()
    seen = st.queries.setdefault(layer, {})
    for t in range(q_len):
        seen[int(q_pos[t])] = q[:, :, t]
    logits = torch.matmul(q, K.transpose(2, 3)) * scaling
    logits = logits.masked_fill(~mask, float("-inf"))
    a = torch.softmax(logits[:, :, -1], -1)                       # (B, H, kv)
    row = mask[0, 0, -1] if mask.shape[-2] > 1 else mask[0, 0, 0]
    visible = torch.nonzero(row).flatten()
    T = max(1, visible.numel())
    first_j = int(visible[0]) if visible.numel() else 0
    n_allowed = st.limits(_first_visible(mask, key_pos)[-1:])      # newest query's limit
    if n_allowed.max() > 0:
        inject_type, k, r = int(p["inject_type"]), int(p["k"]), float(p["r"])
        r = 0.0 if inject_type == 1 else r
        for b in range(B):
            for h in range(H):
                keep = set()
                if a[b, h, first_j] > p["bf"]:
                    keep.add(first_j)
                if p["mf"] > 0:
                    thr = 1.0 / (p["mf"] * T)
                    keep |= {int(j) for j in torch.nonzero(a[b, h] >= thr).flatten()}
                if not keep:
                    continue
                js = torch.tensor(sorted(keep), device=K.device)
                g = h // groups
                kj = K[b, h, js]                                          # (J, d) post-RoPE
                uj = rotate(kj, -key_pos[js], st.inv_freq)                # key-to-key search
                ids = _retrieve(st, layer, g, uj.cpu().numpy(), k, np.repeat(n_allowed, len(js)))
                u, v, _ = _gather(st, layer, g, ids, K.device)            # (J, k, d)
                kc = rotate(u, key_pos[js][:, None].expand(-1, k).float(), st.inv_freq)
                valid = torch.from_numpy(ids >= 0).to(K.device)
                if inject_type in (1, 3):
                    kc = torch.cat([kc, kj[:, None]], 1)
                    v = torch.cat([v, V[b, h, js][:, None]], 1)
                    valid = torch.cat([valid, torch.ones(len(js), 1, dtype=torch.bool,
                                                         device=K.device)], 1)
                qj = torch.stack([seen[int(key_pos[j])][b, h] if int(key_pos[j]) in seen
                                  else kj[i] for i, j in enumerate(js.tolist())])
                w = float(p["ts"]) * torch.einsum("jd,jkd->jk", qj, kc) / math.sqrt(d)
                w = torch.softmax(w.masked_fill(~valid, float("-inf")), -1).nan_to_num(0.0)
                m = torch.einsum("jk,jkd->jd", w, v)
                has = valid.any(-1, keepdim=True)
                V[b, h, js] = torch.where(has, (1 - r) * m + r * V[b, h, js], V[b, h, js])
    probs = torch.softmax(logits, -1).nan_to_num(0.0)
    return torch.matmul(probs, V)


# -- public API ----------------------------------------------------------------------------
@contextmanager
def knn_memory(lm, store: KNNStore | None, settings: KNNSettings | None = None, *,
               offset: int | None = None, horizon: int | None = None,
               window: int | None = None, gates=None):
    """Read kNN memory during the forward passes inside the block (this thread only).

    offset:  book position minus local position of the manuscript tokens in the local
             context (e.g. for a prompt ending in manuscript tokens starting at book
             position P at local index i: offset = P - i). It makes the stored tokens
             that are already in the local window unreadable and enables ``exact``.
    horizon: stored entries at book positions >= horizon are never read (the first
             book position the prompt holds); use it when offset is unknown.
    window:  restrict local attention to the last ``window`` keys (scoring).
    gates:   optional {layer: tensor(H)} learned gate biases (gate mode).
    Works for prefill and for incremental decoding with a DynamicCache: query
    positions come from ``position_ids`` (or the cache length). Yields the state,
    whose ``stats`` count searches and search seconds.
    """
    install(lm)
    prev = _state()
    st = _Read(lm, store, settings or KNNSettings(), offset, horizon, window, gates)
    _local.state = st
    try:
        yield st
    finally:
        _local.state = prev


@torch.no_grad()
def index_tokens(lm, store: KNNStore, token_ids, positions=None, progress: bool = True,
                 *, prefix=(), chunk: int | None = None, overlap: int | None = None):
    """Write keys/values of ``token_ids`` (book ``positions``, default: after the
    store's last) into ``store`` at its layers, in chunks of ``chunk`` tokens each read
    after ``overlap`` tokens of preceding context (``prefix`` for the first chunk).
    ``progress``: a bool (tqdm bar) or a callable(done, total).
    Runs the model only up to the deepest stored layer; no memory is read meanwhile.
    """
    from tqdm.auto import tqdm

    install(lm)
    s = store.settings
    chunk, overlap = chunk or s.chunk, s.overlap if overlap is None else overlap
    ids = [int(t) for t in token_ids]
    if positions is None:
        start = int(store.positions[-1]) + 1 if len(store) else 0
        positions = range(start, start + len(ids))
    positions = np.asarray(list(positions), np.int64)
    history = [int(t) for t in prefix][-overlap:] if overlap else []
    inv_freq = rotary_inv_freq(lm)
    device = next(lm.model.parameters()).device
    report = progress if callable(progress) else None
    bar = tqdm(total=len(ids), desc="kNN memory", unit="tok",
               disable=not progress or report is not None, leave=False)
    prev = _state()
    try:
        for c0 in range(0, len(ids), chunk):
            piece = ids[c0:c0 + chunk]
            inp = torch.tensor([history + piece], device=device)
            cap = _Capture(store.layers, len(piece), inv_freq)
            _local.state = cap
            try:
                lm.model(input_ids=inp, use_cache=False)
            except _Stop:
                pass
            finally:
                _local.state = prev
            store.add({l: cap.keys[l].cpu().numpy() for l in store.layers},
                      {l: cap.values[l].cpu().numpy() for l in store.layers},
                      positions[c0:c0 + len(piece)], piece)
            history = (history + piece)[-overlap:] if overlap else []
            bar.update(len(piece))
            if report is not None:
                report(min(c0 + chunk, len(ids)), len(ids))
    finally:
        bar.close()
        _local.state = prev
    return store


# -- memory-matrix tokens (engine/memory/matrix.py) -----------------------------------------
class MatrixTokens:
    """Memory tokens for one layer: un-rotated keys and values (kv_heads, r, head_dim),
    a read-gate bias added to their logits (scalar or per query head), and the rotary
    distance behind each query where they sit (like kNN's ``behind`` placement)."""

    def __init__(self, keys, values, bias=0.0, distance: int = 64, inv_freq=None):
        self.keys, self.values, self.bias = keys, values, bias
        self.distance, self.inv_freq = distance, inv_freq


def _with_tokens(query, key, value, mask, scaling, q_pos, tok: MatrixTokens):
    """Eager attention over the local keys plus the memory tokens, one joint softmax.
    Differentiable (training learns the tokens' sketch, projection and gate)."""
    B, H, q_len, d = query.shape
    groups = H // key.shape[1]
    q = query.float()
    K = _repeat_kv(key.float(), groups)
    V = _repeat_kv(value.float(), groups)
    logits = torch.matmul(q, K.transpose(2, 3)) * scaling
    logits = logits.masked_fill(~mask, float("-inf"))
    # a key at (p - distance) seen from p: rotate the query back by (p - distance)
    qm = rotate(q, -(q_pos - tok.distance).to(q.device), tok.inv_freq)
    Km = _repeat_kv(tok.keys.float()[None], groups)[0]            # (H, r, d)
    Vm = _repeat_kv(tok.values.float()[None], groups)[0]
    bias = torch.as_tensor(tok.bias, dtype=torch.float32, device=q.device)
    bias = bias.view(1, -1, 1, 1) if bias.ndim == 1 else bias
    lm_ = torch.einsum("bhqd,hrd->bhqr", qm, Km) * scaling + bias
    p = torch.softmax(torch.cat([lm_, logits], -1), -1)
    r = Km.shape[1]
    return torch.einsum("bhqr,hrd->bhqd", p[..., :r], Vm) + torch.matmul(p[..., r:], V)


def attention_module(lm, layer: int):
    """The attention module of decoder layer ``layer`` (it carries ``layer_idx``)."""
    model = lm.model if hasattr(lm, "model") else lm
    for m in model.modules():
        if getattr(m, "layer_idx", None) == layer and (hasattr(m, "k_proj") or hasattr(m, "c_attn")):
            return m
    raise ValueError(f"the model has no attention layer {layer}")


def project_tokens(lm, layer: int, x: torch.Tensor):
    """Hidden states x (r, hidden) -> (keys, values) (kv_heads, r, head_dim) through the
    layer's own projections, un-rotated (Llama family incl. k_norm; GPT-2's c_attn)."""
    module = attention_module(lm, layer)
    _, kv, hd = lm.shape
    w = next(module.parameters())
    x = x.to(device=w.device, dtype=w.dtype)
    if hasattr(module, "k_proj"):
        k = module.k_proj(x).view(x.shape[0], kv, hd)
        v = module.v_proj(x).view(x.shape[0], kv, hd)
        if getattr(module, "k_norm", None) is not None:
            k = module.k_norm(k)
    else:  # GPT-2: one fused projection, q|k|v along the last dim
        _, k, v = module.c_attn(x).split(module.split_size, dim=-1)
        k, v = k.view(x.shape[0], kv, hd), v.view(x.shape[0], kv, hd)
    return k.transpose(0, 1), v.transpose(0, 1)


@contextmanager
def matrix_tokens(lm, tokens: dict):
    """Let every query at each layer of ``tokens`` ({layer: MatrixTokens}) attend to
    them (this thread only). Composes with ``knn_memory`` (a kNN layer ignores them)."""
    install(lm)
    prev = getattr(_local, "tokens", None)
    _local.tokens = {**(prev or {}), **tokens}
    try:
        yield
    finally:
        _local.tokens = prev


@torch.no_grad()
def layer_states(lm, layer: int, token_ids, prefix=(), chunk: int = 512,
                 overlap: int = 64) -> np.ndarray:
    """The input of layer ``layer``'s attention (after its norm) for each of
    ``token_ids`` (n, hidden), each chunk read after ``overlap`` tokens of context
    (``prefix`` for the first). Runs the model only up to that layer."""
    install(lm)
    module = attention_module(lm, layer)
    ids = [int(t) for t in token_ids]
    history = [int(t) for t in prefix][-overlap:] if overlap else []
    device = next(lm.model.parameters()).device
    out, grab = [], {}

    def hook(_m, args, kwargs):
        grab["h"] = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0])
        raise _Stop()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    prev, _local.state = _state(), None
    prev_tokens, _local.tokens = getattr(_local, "tokens", None), None
    try:
        for c0 in range(0, len(ids), chunk):
            piece = ids[c0:c0 + chunk]
            try:
                lm.model(input_ids=torch.tensor([history + piece], device=device),
                         use_cache=False)
            except _Stop:
                pass
            out.append(grab["h"][0, -len(piece):].float().cpu().numpy())
            history = (history + piece)[-overlap:] if overlap else []
    finally:
        handle.remove()
        _local.state, _local.tokens = prev, prev_tokens
    return np.concatenate(out) if out else np.zeros((0, lm.model.config.hidden_size), np.float32)
