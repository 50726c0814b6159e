"""Memory-aware attention, registered through transformers' ``AttentionInterface``.

Installed once per model (``install``), the function is a pass-through to the
model's own implementation (sdpa or eager) except inside ``knn_memory(...)`` (read),
``index_tokens(...)`` (write) or ``matrix_tokens(...)``, which set this thread's
``MemoryCall`` (state.py). Nothing in the model files changes, so any decoder the
library supports works; the code only needs what every attention module passes:
post-RoPE query/key/value with grouped KV heads, ``module.layer_idx`` and (when
given) ``position_ids``.

The rooms: this file installs, dispatches each layer's call and holds the context
managers; rotary.py the rotary maths; masks.py positions and masks; state.py the
per-call state; knn_capture.py the kNN write; knn_read.py (attend), knn_inject.py
(inject) and knn_search.py (index search, shared pool) the kNN read; matrix.py the
memory matrix's tokens and the layer projections.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from ..knn import KNNSettings, KNNStore
from .knn_capture import Capture
from .knn_inject import inject
from .knn_read import QUERY_CHUNK, Read, attend, attend_one
from .knn_search import searching_layers
from .masks import bool_mask, float_mask, query_positions
from .matrix import MatrixTokens, attention_module, project_tokens
# a module global of this file, looked up at each call (tests spy on it here)
from .matrix import with_tokens as _with_tokens
from .rotary import rotary_inv_freq, rotate
from .state import MemoryCall, Stop, current_call, entered

__all__ = ["PREFIX", "QUERY_CHUNK", "MatrixTokens", "MemoryCall", "attention_module",
           "current_call", "index_tokens", "install", "knn_memory", "layer_states",
           "matrix_tokens", "project_tokens", "rotary_inv_freq", "rotate",
           "searching_layers"]

PREFIX = "mnemosyne_"


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


# -- the attention function ---------------------------------------------------------------
def _attention(base, base_name, module, query, key, value, attention_mask, scaling=None,
               dropout=0.0, **kw):
    call = current_call()
    layer = getattr(module, "layer_idx", None)
    tok = call.tokens.get(layer) if call.tokens else None
    st, cap = call.read, call.capture
    if st is None and cap is None and tok is None:
        return base(module, query, key, value, attention_mask, scaling=scaling,
                    dropout=dropout, **kw)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    q_len, kv_len = query.shape[2], key.shape[2]
    q_pos = query_positions(kw.get("position_ids"), q_len, kv_len, query.device)
    key_pos = q_pos[-1] - kv_len + 1 + torch.arange(kv_len, device=query.device)
    if cap is not None:  # an indexing pass: keep the keys, attend as the model does
        cap.take(layer, key, value, key_pos)
        return base(module, query, key, value, attention_mask, scaling=scaling,
                    dropout=dropout, **kw)
    if st is None:  # memory-matrix tokens only
        mask = bool_mask(attention_mask, q_pos, key_pos, None)
        out = _with_tokens(query, key, value, mask, scaling, q_pos, tok)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if (q_len == 1 and attention_mask is None and st.window is None and layer in st.layers
            and st.settings.mode == "attend" and not st.settings.gate):
        # a decode step without padding or window sees every cached key: no mask to
        # build and apply at each memory layer (small ops dominate a decode step)
        out = attend_one(st, layer, query, key, value, None, scaling, key_pos)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    mask = attention_mask
    if st.window is not None or layer in st.layers:
        mask = bool_mask(attention_mask, q_pos, key_pos, st.window)
    if layer not in st.layers and tok is not None:  # kNN layers take precedence
        if mask is attention_mask:
            mask = bool_mask(attention_mask, q_pos, key_pos, None)
        out = _with_tokens(query, key, value, mask, scaling, q_pos, tok)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if layer not in st.layers:
        if mask is not attention_mask and base_name == "eager":
            mask = float_mask(mask, query.dtype)
        return base(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kw)
    if st.settings.mode == "inject":
        out = inject(st, layer, query, key, value, mask, scaling, q_pos, key_pos)
    else:
        out = attend(st, layer, query, key, value, mask, scaling, q_pos, key_pos)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


# -- the kNN memory -------------------------------------------------------------------------
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
    st = Read(lm, store, settings or KNNSettings(), offset, horizon, window, gates)
    with entered(read=st):
        yield st


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
    try:
        for c0 in range(0, len(ids), chunk):
            piece = ids[c0:c0 + chunk]
            inp = torch.tensor([history + piece], device=device)
            cap = Capture(store.layers, len(piece), inv_freq)
            with entered(read=None, capture=cap):
                try:
                    lm.model(input_ids=inp, use_cache=False)
                except Stop:
                    pass
            store.add({l: cap.keys[l].cpu().numpy() for l in store.layers},
                      {l: cap.values[l].cpu().numpy() for l in store.layers},
                      positions[c0:c0 + len(piece)], piece)
            history = (history + piece)[-overlap:] if overlap else []
            bar.update(len(piece))
            if report is not None:
                report(min(c0 + chunk, len(ids)), len(ids))
    finally:
        bar.close()
    return store


# -- the memory matrix (engine/memory/matrix.py) ---------------------------------------------
@contextmanager
def matrix_tokens(lm, tokens: dict):
    """Let every query at each layer of ``tokens`` ({layer: MatrixTokens}) attend to
    them (this thread only). Composes with ``knn_memory`` (a kNN layer ignores them)."""
    install(lm)
    with entered(tokens={**(current_call().tokens or {}), **tokens}):
        yield


@torch.no_grad()
def layer_states(lm, layer: int, token_ids, prefix=(), chunk: int = 512,
                 overlap: int = 64) -> np.ndarray:
    """The input of layer ``layer``'s attention (after its norm) for each of
    ``token_ids`` (n, hidden), each chunk read after ``overlap`` tokens of context
    (``prefix`` for the first). Runs the model only up to that layer, with no memory."""
    install(lm)
    module = attention_module(lm, layer)
    ids = [int(t) for t in token_ids]
    history = [int(t) for t in prefix][-overlap:] if overlap else []
    device = next(lm.model.parameters()).device
    out, grab = [], {}

    def hook(_m, args, kwargs):
        grab["h"] = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0])
        raise Stop()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with entered(read=None, capture=None, tokens=None):
            for c0 in range(0, len(ids), chunk):
                piece = ids[c0:c0 + chunk]
                try:
                    lm.model(input_ids=torch.tensor([history + piece], device=device),
                             use_cache=False)
                except Stop:
                    pass
                out.append(grab["h"][0, -len(piece):].float().cpu().numpy())
                history = (history + piece)[-overlap:] if overlap else []
    finally:
        handle.remove()
    return np.concatenate(out) if out else np.zeros((0, lm.model.config.hidden_size), np.float32)
