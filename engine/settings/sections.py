"""Every settings section: a novel's own (Writing, Thoughts, Recall, KNN, Matrix, loaded
and saved through ``Settings``) and the memories' full settings (KNNSettings,
MatrixSettings)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .fields import (PRESETS, Section, _optional_str, _share, _slots, _span, like, opt, parse_every,
                     parse_inject, parse_layers)


# -- a novel's own sections -----------------------------------------------------------------
@dataclass(frozen=True)
class Writing(Section):
    """The page's sampling sliders, kept per novel (None: the engine's default)."""
    key: ClassVar[str] = "writing"
    temperature: float | None = opt(None, "sampling temperature", lo=0.0, hi=5.0)
    top_p: float | None = opt(None, "top-p (nucleus) mass", lo=0.001, hi=1.0)
    max_tokens: int | None = opt(None, "new tokens per Continue", lo=1, hi=4096)


@dataclass(frozen=True)
class Thoughts(Section):
    """Margin notes: ``mode`` 'prompt' (a summarising prompt writes each note) or 'self'
    (a model tuned by 'train thoughts' writes them inline)."""
    key: ClassVar[str] = "thoughts"
    on: bool = opt(True, "write margin notes")
    plan_first: bool = opt(False, "the note comes before its passage (a plan)")
    mode: str = opt("prompt", "who writes the notes: a summarising prompt, or the model "
                    "itself tuned by 'train thoughts'", choices=("prompt", "self"))
    adapter: str = opt("", "self mode: the thought adapter's folder ('' = the model's "
                       "default)")
    every: str | int = opt("paragraph", "a note after each paragraph (default), each "
                           "passage, or every N tokens", parse=parse_every,
                           metavar="passage|paragraph|N")


@dataclass(frozen=True)
class Recall(Section):
    """Semantic recall: what the context gets from the book's embedded memories."""
    key: ClassVar[str] = "recall"
    enabled: bool = opt(True, "semantic recall on")
    k: int = opt(6, "direct hits by similarity", lo=0, hi=100)
    min_score: float = opt(0.25, "cosine below which a hit is noise", lo=-1.0, hi=1.0)
    depth: int = opt(2, "association tiers after the direct hits", lo=0, hi=5)
    tier1: int = opt(10, "associations per direct hit", lo=0, hi=100)
    tier_n: int = opt(3, "associations per item of each deeper tier", lo=0, hi=100)
    query_chars: int = opt(600, "characters of the text's end used as the query",
                           lo=50, hi=20000)
    share: float = opt(0.35, "share of the prompt budget for recall", lo=0.0, hi=1.0)


# -- the memories' full settings -------------------------------------------------------------
@dataclass(frozen=True)
class KNNSettings(Section):
    """How the kNN memory is written and read.

    The defaults (layers, k, position, search_every, nprobe, approx_threshold, gate
    off) and their measurements: docs/measurements.md (kNN memory).
    """
    key: ClassVar[str] = "knn"
    mode: str = opt("attend", "read mode: attend (memory as extra keys) or inject (the "
                    "seed's value surgery)", choices=("attend", "inject"))
    layers: tuple | None = opt(None, "attend layers: 22,25 or 15-29 (default: the span)",
                               parse=parse_layers)
    layer_span: tuple = opt((0.5, 1.0), "default attend layers: [from, to) as fractions "
                            "of the depth, like 0.5,1", parse=_span)
    k: int = opt(32, "neighbours per query head", lo=1, hi=1024)
    heads: float = opt(1.0, "share of query heads that read memory, in (0, 1]",
                       parse=_share)
    search_every: int = opt(3, "attend layers per index search; the others re-rank its "
                            "hits", lo=1)
    position: str = opt("behind", "where stored keys sit: just behind the window, or at "
                        "their book position", choices=("behind", "exact"))
    gap: int = opt(0, "extra distance behind the window (behind mode)", lo=0)
    gate: bool = opt(False, "gate mode: memory in a separate softmax mixed by "
                     "sigmoid(bias)")
    gate_bias: float = opt(-4.0, "gate mode: memory's share is sigmoid(bias) when no gate "
                           "file")
    gate_file: str | None = opt(None, "gate mode with learned biases per layer and head "
                                "(python -m engine train knn)", parse=_optional_str)
    preset: str = opt("recall", "inject preset", choices=tuple(PRESETS))
    inject: dict = opt(help="override the inject preset: inject_type, k, bf, mf, ts, r, "
                       "layer_fractions (as 0.5/0.6/0.7)", parse=parse_inject,
                       factory=dict, metavar="KEY=VALUE,...")
    approx_threshold: int = opt(8_192, "vectors per index from which search is "
                                "approximate", lo=1)
    approx: str = opt("ivf", "the approximate index", choices=("ivf", "hnsw"))
    nprobe: int = opt(8, "IVF lists searched", lo=1)
    ef_search: int = opt(64, "HNSW beam", lo=1)
    chunk: int = opt(512, "tokens per indexing forward pass", lo=1)
    overlap: int = opt(256, "context tokens before each indexing chunk", lo=0)

    def preset_params(self) -> dict:
        p = dict(PRESETS[self.preset])
        p.update(self.inject)
        return p

    def read_layers(self, depth: int) -> tuple:
        """The layers that read memory in the current mode, for a model of this depth."""
        if self.mode == "inject":
            fr = self.preset_params()["layer_fractions"]
            return tuple(sorted({min(depth - 1, int(round(f * depth))) for f in fr}))
        if self.layers is not None:
            return tuple(sorted(int(x) for x in self.layers))
        a, b = (min(depth - 1, max(0, int(round(f * depth)))) for f in self.layer_span)
        return tuple(range(a, max(a + 1, b if self.layer_span[1] < 1 else depth)))

    def stamp(self, depth: int) -> dict:
        """What makes stored keys/values valid: which layers, how they were computed."""
        from ..memory.knn_files import FORMAT_VERSION  # the store's format (numpy side)

        return {"layers": list(self.read_layers(depth)), "overlap": self.overlap,
                "format": FORMAT_VERSION}


@dataclass(frozen=True)
class MatrixSettings(Section):
    """How the memory matrix is written and read (engine/memory/matrix.py)."""
    key: ClassVar[str] = "matrix"
    layer: int | None = opt(None, "the layer that reads the matrix, checked against the "
                            "model (default: 0.3 of its depth)", lo=0)
    slots: int = opt(4096, "slots, a multiple of 64, 64..65536", parse=_slots)
    rows: int = opt(64, "memory tokens read per layer", lo=1, hi=1024)
    gain: float = opt(1.0, "gate sharpness (the seed's is 0.5)", lo=0.0)
    bias: float = opt(6.0, "gate threshold in z units")
    lr: float = opt(0.5, "step of each write", lo=0.0)
    norm: str = opt("rows", "after each write: renormalise the rows, decay them, or "
                    "neither", choices=("rows", "decay", "none"))
    decay: float = opt(0.01, "decay per write (norm decay)", lo=0.0, hi=1.0)
    seed: int = opt(0, "seed of the start and of the sketch", lo=0)
    distance: int = opt(64, "rotary: memory tokens sit this far behind each query", lo=0)
    read_bias: float = opt(0.0, "added to memory-token attention logits (the read gate)")

    DEFAULT_DEPTH = 0.3        # share of the depth; docs/measurements.md (Memory matrix)

    def resolved_layer(self, depth: int) -> int:
        layer = self.layer if self.layer is not None else int(round(self.DEFAULT_DEPTH * (depth - 1)))
        if not 0 <= layer < depth:
            raise ValueError(f"the memory matrix layer must lie in 0..{depth - 1}")
        return layer

    def write_stamp(self, depth: int) -> dict:
        """What a stored matrix must match to be reused (read-only settings excluded)."""
        d = self.to_dict()
        d["layer"] = self.resolved_layer(depth)
        for k in ("rows", "distance", "read_bias"):
            d.pop(k)
        return d


# -- the writer's choice of each memory (the rest: the memory's defaults) ----------------------
@dataclass(frozen=True)
class KNN(Section):
    """The kNN memory, as the writer chooses it (the rest: KNNSettings' defaults)."""
    key: ClassVar[str] = "knn"
    on: bool = opt(False, "kNN memory on")
    layers: tuple | None = like(KNNSettings, "layers",
                                help="layers read, like 14-29 or 22,25 ('' = default)")
    k: int = like(KNNSettings, "k")


@dataclass(frozen=True)
class Matrix(Section):
    """The memory matrix, as the writer chooses it (the rest: MatrixSettings' defaults)."""
    key: ClassVar[str] = "matrix"
    on: bool = opt(False, "memory matrix on")
    layer: int | None = like(MatrixSettings, "layer")
    slots: int = like(MatrixSettings, "slots")
    rows: int = like(MatrixSettings, "rows")
    adapter: str | None = opt(None, "a trained adapter ('' for none)", parse=_optional_str)


SECTIONS: dict[str, type[Section]] = {c.key: c for c in (Writing, Thoughts, Recall, KNN, Matrix)}


class Settings:
    """A novel's settings: ``get('knn')`` -> KNN, ``set('knn', on=True)`` -> the new KNN,
    checked before anything is saved."""

    def __init__(self, store):
        self._store = store

    def get(self, name: str) -> Section:
        return SECTIONS[name].from_dict(self._store.get_setting(name))

    def stored(self, name: str) -> bool:
        """Whether the writer ever changed this section."""
        return self._store.get_setting(name) is not None

    def set(self, name: str, **changes) -> Section:
        new = self.get(name).changed(**changes)
        self._store.set_setting(name, new.to_dict())
        return new

    def put(self, value: Section) -> Section:
        self._store.set_setting(value.key, value.to_dict())
        return value
