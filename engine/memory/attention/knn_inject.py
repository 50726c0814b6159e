"""Reading the kNN memory in ``inject`` mode: the seed's value surgery (DESIGN.md),
driven by the newest query's attention row; types 1/2/3 and the presets live in
knn.PRESETS."""
from __future__ import annotations

import math

import numpy as np
import torch

from .knn_search import gather, retrieve
from .masks import first_visible, repeat_kv
from .rotary import rotate


def inject(st, layer, query, key, value, mask, scaling, q_pos, key_pos):
    """The seed's value surgery, driven by the newest query's attention row."""
    p = st.settings.preset_params()
    B, H, q_len, d = query.shape
    groups = H // key.shape[1]
    q = query.float()
    K = repeat_kv(key.float(), groups)
    V = repeat_kv(value.float(), groups).clone()
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
    n_allowed = st.limits(first_visible(mask, key_pos)[-1:])      # newest query's limit
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
                ids = retrieve(st, layer, g, uj.cpu().numpy(), k, np.repeat(n_allowed, len(js)))
                u, v, _ = gather(st, layer, g, ids, K.device)             # (J, k, d)
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
