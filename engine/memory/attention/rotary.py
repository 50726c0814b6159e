"""Rotary maths: the model's frequencies, and rotating vectors to other positions.

Convention: the Llama ``rotate_half`` one (Llama, Mistral, Qwen, Gemma, Phi-3), over
the first 2*len(inv_freq) dims (partial rotary). Models without rotary embeddings
(GPT-2) have no ``inv_freq``: every function here leaves vectors as they are."""
from __future__ import annotations

import torch


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


def rotation(cache: dict, inv_freq, pos: int, device):
    """(cos, sin) float32 (r,) on ``device`` rotating to position ``pos`` (float64
    angles, as ``rotate``), kept in ``cache``: a decode step needs the same one at
    every memory layer."""
    cs = cache.get(pos)
    if cs is None:
        if len(cache) > 4096:
            cache.clear()
        ang = pos * inv_freq.detach().cpu().to(torch.float64)
        emb = torch.cat([ang, ang])
        cs = cache[pos] = (emb.cos().float().to(device), emb.sin().float().to(device))
    return cs


def rotate_by(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every vector x[..., d] by one (cos, sin) pair from ``rotation``."""
    r = cos.numel()
    xr = x[..., :r]
    out = xr * cos + torch.cat([-xr[..., r // 2:], xr[..., :r // 2]], dim=-1) * sin
    if r < x.shape[-1]:
        out = torch.cat([out, x[..., r:]], dim=-1)
    return out
