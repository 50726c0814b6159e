"""The in-model memory matrix: a per-novel ``M`` (m slots x d) written once per passage
by a gated rule and read through a sketch as a few "memory tokens" (DESIGN.md).

Write (``MemoryMatrix.write``), for a passage whose pooled hidden state at the memory
layer is ``c``::

    x = (c - mu) / |c - mu|          # centred, unit: the book's common direction carries
                                     # no information and would pull every slot together
    v = sqrt(d) * M x                # rows are unit, so an unrelated slot scores ~N(0, 1)
    g = sigmoid(gain * (v - bias))   # the seed's long-tailed gate is gain 0.5, bias 0
    M <- M + lr * g (x) x            # outer product; pinned rows are never updated
    rows renormalised (or decayed)   # keeps M bounded

With bias 0 every slot takes about half of every passage and all slots collapse onto
the book's mean direction; the threshold ``bias`` makes the gate long-tailed in
practice (slots that recognise a passage take most of it, the rest fade slowly).
The defaults come from ``python -m engine bench matrix``; the figures are in
docs/measurements.md (Memory matrix).

Read (``summary``): ``S M`` with ``S`` a CountSketch (each slot hashed to one of r
rows with a random sign, frozen from the seed), or a learned r x m matrix from an
adapter. The rows are mapped back to hidden states (``mu + scale * unit row``) and
projected by the layer's own key/value projections in attention.py.

Everything here is numpy; the file format is safetensors with a JSON stamp.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
# the settings are declared with the others (engine/settings.py); re-exported here
from ..settings import MatrixSettings

__all__ = ["BUCKETS", "FORMAT", "MatrixError", "MatrixSettings", "MemoryMatrix",
           "countsketch", "sketch_matrix"]

FORMAT = 1
BUCKETS = 64  # slot groups in the usage log (the UI's plot rows)


class MatrixError(UserError, ValueError):
    """A matrix file that cannot be trusted (corrupt, foreign, wrong shape, NaN)."""


def countsketch(m: int, r: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(row of each slot, sign of each slot): the frozen hash of a CountSketch."""
    rng = np.random.default_rng([seed, m, r, 7])
    return rng.integers(0, r, m), rng.choice(np.array([-1.0, 1.0], np.float32), m)


def sketch_matrix(m: int, r: int, seed: int) -> np.ndarray:
    """The CountSketch as a dense (r, m) matrix (a learned S starts from it)."""
    h, s = countsketch(m, r, seed)
    S = np.zeros((r, m), np.float32)
    S[h, np.arange(m)] = s
    return S


class MemoryMatrix:
    """M, its pins, the running statistics that centre and scale it, and a usage log."""

    def __init__(self, d: int, settings: MatrixSettings, stamp: dict | None = None):
        self.settings, self.d = settings, d
        self.stamp = stamp or {}
        rng = np.random.default_rng(settings.seed)
        M = rng.standard_normal((settings.slots, d)).astype(np.float32)
        self.M = M / np.linalg.norm(M, axis=1, keepdims=True)
        self.pinned = np.zeros(settings.slots, bool)
        self.mu = np.zeros(d, np.float64)       # running mean of token states
        self.tokens = 0                          # tokens behind mu
        self.spread = 0.0                        # running mean |h_t - mu| (token scale)
        self.writes = 0
        self.usage = np.zeros((0, BUCKETS), np.float32)   # gate mass per write per bucket
        self.chapters = np.zeros(0, np.int64)             # chapter of each write
        self.extra: dict | None = None                    # saved with it (see save)

    # -- write ---------------------------------------------------------------------
    def observe(self, states: np.ndarray) -> np.ndarray:
        """Fold a passage's token states (n, d) into mu/spread; returns its pooled c."""
        states = np.asarray(states, np.float64)
        n = states.shape[0]
        c = states.mean(0)
        self.mu = (self.mu * self.tokens + states.sum(0)) / (self.tokens + n)
        dev = float(np.linalg.norm(states - self.mu, axis=1).mean())
        self.spread = (self.spread * self.tokens + dev * n) / (self.tokens + n)
        self.tokens += n
        return c

    def encode(self, c: np.ndarray) -> np.ndarray | None:
        x = np.asarray(c, np.float64) - self.mu
        n = np.linalg.norm(x)
        return None if n < 1e-6 else (x / n).astype(np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """v: how strongly each slot recognises the unit vector x (z units)."""
        return math.sqrt(self.d) * (self.M @ x)

    def gate(self, v: np.ndarray) -> np.ndarray:
        s = self.settings
        return 1.0 / (1.0 + np.exp(-s.gain * (v - s.bias)))

    def write(self, states: np.ndarray, chapter: int = 0) -> dict:
        """One passage (its token states at the memory layer): the gated write."""
        s = self.settings
        x = self.encode(self.observe(states))
        g = np.zeros(s.slots, np.float32)
        if x is not None:
            g = self.gate(self.scores(x)).astype(np.float32)
            g[self.pinned] = 0.0
            free = ~self.pinned
            self.M[free] += s.lr * g[free, None] * x[None, :]
            if s.norm == "rows":
                self.M[free] /= np.linalg.norm(self.M[free], axis=1, keepdims=True).clip(1e-6)
            elif s.norm == "decay":
                self.M[free] *= 1.0 - s.decay
        self.writes += 1
        self.usage = np.vstack([self.usage, g.reshape(BUCKETS, -1).sum(1)[None]])
        self.chapters = np.append(self.chapters, chapter)
        return {"gate_mean": float(g.mean()), "gate_max": float(g.max()),
                "slots_over_half": int((g > 0.5).sum())}

    # -- read ------------------------------------------------------------------------
    def summary(self, S: np.ndarray | None = None) -> np.ndarray:
        """(r, d) hidden states for the memory tokens: mu + spread * unit(S M)."""
        s = self.settings
        if S is None:
            h, sign = countsketch(s.slots, s.rows, s.seed)
            out = np.zeros((s.rows, self.d), np.float32)
            np.add.at(out, h, sign[:, None] * self.M)
        else:
            out = S @ self.M
        out /= np.linalg.norm(out, axis=1, keepdims=True).clip(1e-6)
        return (self.mu + max(self.spread, 1e-3) * out).astype(np.float32)

    # -- pins ---------------------------------------------------------------------------
    def strongest(self, states: np.ndarray, n: int = 1) -> list[int]:
        """The n slots that most recognise a text's states (what a pin protects)."""
        x = self.encode(np.asarray(states, np.float64).mean(0))
        if x is None:
            return []
        return [int(i) for i in np.argsort(-self.scores(x))[:n]]

    def set_pinned(self, slots, pinned: bool) -> None:
        self.pinned[np.asarray(list(slots), np.int64)] = pinned

    # -- checks and files ----------------------------------------------------------------
    def check(self) -> None:
        s = self.settings
        if self.M.shape != (s.slots, self.d):
            raise MatrixError(f"the matrix is {self.M.shape}, expected {(s.slots, self.d)}")
        if not (np.isfinite(self.M).all() and np.isfinite(self.mu).all()):
            raise MatrixError("the matrix holds NaN or infinite values")

    def save(self, path: Path, extra: dict | None = None) -> None:
        """Write M and everything about it to one file, atomically. ``extra``: more
        JSON-able fields kept in the same file (a project's segment list), so the
        matrix and what it records can never be saved apart."""
        from safetensors.numpy import save_file

        self.check()
        meta = {"format": str(FORMAT), "stamp": json.dumps(self.stamp, sort_keys=True),
                "settings": json.dumps(self.settings.to_dict()), "tokens": str(self.tokens),
                "spread": repr(self.spread), "writes": str(self.writes)}
        if extra:
            meta["extra"] = json.dumps(extra)
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"M": self.M, "pinned": self.pinned.astype(np.uint8), "mu": self.mu,
                   "usage": self.usage, "chapters": self.chapters}, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)  # atomic: a crash leaves the old file or the new one

    @classmethod
    def load(cls, path: Path, stamp: dict) -> "MemoryMatrix":
        """Load and verify; MatrixError when the file is corrupt, foreign or stale."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != str(FORMAT):
                raise MatrixError("the matrix file has an unknown format")
            if json.loads(meta["stamp"]) != stamp:
                raise MatrixError("the matrix was written for another model or settings")
            settings = MatrixSettings(**json.loads(meta["settings"]))
            mm = cls(arrays["M"].shape[1], settings, stamp)
            mm.M = arrays["M"].astype(np.float32)
            mm.pinned = arrays["pinned"].astype(bool)
            mm.mu = arrays["mu"].astype(np.float64)
            mm.usage, mm.chapters = arrays["usage"], arrays["chapters"]
            mm.tokens, mm.writes = int(meta["tokens"]), int(meta["writes"])
            mm.spread = float(meta["spread"])
            mm.extra = json.loads(meta["extra"]) if "extra" in meta else None
        except MatrixError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file is "corrupt"
            raise MatrixError(f"the matrix file cannot be read ({type(e).__name__})") from e
        mm.check()
        if mm.pinned.shape != (settings.slots,):
            raise MatrixError("the matrix's pin list does not match its slots")
        return mm
