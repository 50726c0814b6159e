"""The kNN memory's learned read gate (gate mode): one bias per memory layer and query
head, loaded from the file ``python -m engine train knn`` writes (engine/train/knn.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


class GateError(UserError, ValueError):
    """A gate file that cannot be used with this model: the message says why."""


def load_gates(path, lm, layers) -> dict:
    """{layer: (H,) bias} from a gate file, checked against this model and ``layers``."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise GateError(f"no gate file at {p}: train one with 'python -m engine train knn'")
    try:
        with safe_open(str(p), "pt") as f:
            meta, bias = f.metadata() or {}, f.get_tensor("bias")
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise GateError(f"the gate file {p} is unreadable or corrupt") from e
    if meta.get("fingerprint") != lm.fingerprint:
        raise GateError(f"the gate file {p} was trained for another model")
    saved = [int(x) for x in meta.get("layers", "").split(",") if x]
    heads = lm.model.config.num_attention_heads
    if saved != list(layers) or tuple(bias.shape) != (len(saved), heads):
        raise GateError(f"the gate file {p} is for memory layers {saved}, not {list(layers)}")
    if not torch.isfinite(bias).all():
        raise GateError(f"the gate file {p} holds NaN or infinite values")
    return {l: bias[i].float() for i, l in enumerate(saved)}
