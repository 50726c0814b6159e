"""Positions and masks, built from what every attention module passes."""
from __future__ import annotations

import torch


def query_positions(position_ids, q_len, kv_len, device):
    """Local positions of the queries: from ``position_ids``, else the cache length."""
    if position_ids is not None:
        p = position_ids.reshape(-1, position_ids.shape[-1])[0]
        if p.numel() == q_len:
            return p.to(device)
    return torch.arange(kv_len - q_len, kv_len, device=device)


def bool_mask(attention_mask, q_pos, key_pos, window):
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


def float_mask(mask, dtype):
    """A bool mask as the additive float mask eager attention takes."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def first_visible(mask, key_pos):
    """Local position of the first key each query may see (from batch row 0)."""
    m = mask[0, 0]
    idx = torch.where(m.any(-1), m.float().argmax(-1), torch.zeros_like(m[:, 0], dtype=torch.long))
    return key_pos[idx]


def repeat_kv(x, groups):
    """KV heads (B, KV, n, d) repeated for their query heads (B, KV*groups, n, d)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)
