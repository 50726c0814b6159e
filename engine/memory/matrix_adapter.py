"""The memory matrix's trained read path (``python -m engine train memory`` learns it,
engine/train/memory.py): the sketch S, a read-gate bias per query head and a low-rank
correction of the summary rows, and the file it is saved in."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .matrix import MatrixError, MatrixSettings, MemoryMatrix, sketch_matrix

RANK = 16
ADAPTER = "matrix_adapter.safetensors"


class MatrixAdapter(torch.nn.Module):
    """Learned read path: S, read bias per query head, low-rank row correction."""

    def __init__(self, settings: MatrixSettings, hidden: int, heads: int, layer: int,
                 fingerprint: str):
        super().__init__()
        self.settings, self.layer, self.fingerprint = settings, layer, fingerprint
        g = torch.Generator().manual_seed(settings.seed)
        self.S = torch.nn.Parameter(torch.from_numpy(
            sketch_matrix(settings.slots, settings.rows, settings.seed)))
        self.bias = torch.nn.Parameter(torch.full((heads,), float(settings.read_bias)))
        self.A = torch.nn.Parameter(torch.randn(RANK, hidden, generator=g) / math.sqrt(hidden))
        self.B = torch.nn.Parameter(torch.zeros(hidden, RANK))

    def rows(self, M, mu, spread):
        """(r, hidden) hidden states of the memory tokens (differentiable in S, A, B)."""
        dev = self.S.device
        z = self.S @ torch.as_tensor(M, dtype=torch.float32, device=dev)
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-6)
        z = z + z @ self.A.T @ self.B.T
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return torch.as_tensor(mu, dtype=torch.float32, device=dev) + max(float(spread), 1e-3) * z

    def summary(self, mm: MemoryMatrix):
        if mm.settings.slots != self.S.shape[1]:
            raise MatrixError(f"the adapter was trained for {self.S.shape[1]} slots, the "
                              f"matrix has {mm.settings.slots}")
        return self.rows(mm.M, mm.mu, mm.spread), self.bias

    def meta(self) -> dict:
        return {"fingerprint": self.fingerprint, "layer": str(self.layer),
                "settings": json.dumps(self.settings.to_dict())}


def load_adapter(path, lm) -> MatrixAdapter:
    """Load an adapter for this model; MatrixError with the reason otherwise."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / ADAPTER
    if not p.is_file():
        raise MatrixError(f"there is no memory adapter at {p}")
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        settings = MatrixSettings(**json.loads(meta["settings"]))
        layer = int(meta["layer"])
    except Exception as e:  # noqa: BLE001
        raise MatrixError(f"the memory adapter {p.name} cannot be read "
                          f"({type(e).__name__})") from e
    if meta.get("fingerprint") != lm.fingerprint:
        raise MatrixError("the memory adapter was trained for another model")
    cfg = lm.model.config
    ad = MatrixAdapter(settings, cfg.hidden_size, cfg.num_attention_heads, layer,
                       lm.fingerprint)
    try:
        ad.load_state_dict(state)
    except RuntimeError as e:
        raise MatrixError("the memory adapter's shapes do not fit this model") from e
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise MatrixError("the memory adapter holds NaN or infinite values")
    if not 0 <= layer < lm.shape[0]:
        raise MatrixError("the memory adapter's layer does not exist in this model")
    return ad.eval()
