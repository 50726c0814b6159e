"""The memory matrix's read inside the model (engine/memory/matrix.py): memory tokens
that every query of a layer attends to, and the layer's own projections that make them."""
from __future__ import annotations

import torch

from .masks import repeat_kv
from .rotary import rotate


class MatrixTokens:
    """Memory tokens for one layer: un-rotated keys and values (kv_heads, r, head_dim),
    a read-gate bias added to their logits (scalar or per query head), and the rotary
    distance behind each query where they sit (like kNN's ``behind`` placement)."""

    def __init__(self, keys, values, bias=0.0, distance: int = 64, inv_freq=None):
        self.keys, self.values, self.bias = keys, values, bias
        self.distance, self.inv_freq = distance, inv_freq


def with_tokens(query, key, value, mask, scaling, q_pos, tok: MatrixTokens):
    """Eager attention over the local keys plus the memory tokens, one joint softmax.
    Differentiable (training learns the tokens' sketch, projection and gate)."""
    B, H, q_len, d = query.shape
    groups = H // key.shape[1]
    q = query.float()
    K = repeat_kv(key.float(), groups)
    V = repeat_kv(value.float(), groups)
    logits = torch.matmul(q, K.transpose(2, 3)) * scaling
    logits = logits.masked_fill(~mask, float("-inf"))
    # a key at (p - distance) seen from p: rotate the query back by (p - distance)
    qm = rotate(q, -(q_pos - tok.distance).to(q.device), tok.inv_freq)
    Km = repeat_kv(tok.keys.float()[None], groups)[0]             # (H, r, d)
    Vm = repeat_kv(tok.values.float()[None], groups)[0]
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
