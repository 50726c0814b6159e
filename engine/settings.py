"""Every setting, declared one way: one typed, frozen dataclass per section whose fields
are made with ``opt`` (default, one-line help, range or choices, parser), checked when
built. A novel's own sections (Writing, Thoughts, Recall, KNN, Matrix) are loaded and
saved one way (``Settings`` over the novel's settings table); the memories' full
settings (KNNSettings, MatrixSettings) are sections too, and command-line flags are made
from the same fields (``add_flags`` / ``changes``).

Light on purpose (stdlib only): the CLI reads it without torch or numpy. Checks that
need the loaded model (a layer against its depth, an adapter against its shape) stay
with the memory that owns the setting.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import ClassVar

from .errors import UserError

EVERY = ("passage", "paragraph")  # where prompted margin notes go, besides every N tokens

# The seed's kNN inject presets (DESIGN.md), with layers given as fractions of depth of
# a 12-layer GPT-2 (layer 10 of 12; layers 7-9 of 12) and translated per model.
PRESETS = {
    "recall": dict(inject_type=2, layer_fractions=(10 / 12,), k=5, bf=0.9, mf=0.0,
                   ts=1000.0, r=0.1),
    "steer": dict(inject_type=3, layer_fractions=(7 / 12, 8 / 12, 9 / 12), k=5, bf=0.9,
                  mf=5.0, ts=0.01, r=0.33),
}


class SettingsError(UserError, ValueError):
    """A setting out of range: shown to the writer as is."""


def opt(default=None, help: str = "", lo=None, hi=None, choices=None, parse=None,
        flag=True, factory=None, metavar=None):
    """A settings field: its default (or ``factory`` for a mutable one), its one-line
    help (also the CLI flag's), its range or choices, and ``parse`` (text or stored
    value -> value, raising ValueError with a message that names the setting)."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "parse": parse,
            "flag": flag, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def like(cls, name: str, **change):
    """The field ``name`` of section ``cls`` again (its default, range and parser, with
    ``change``): one declaration where a writer's section exposes a memory's setting."""
    f = cls.__dataclass_fields__[name]
    return field(default=f.default, metadata={**f.metadata, **change})


# -- parsers (text, a flag or a stored value -> the value, or ValueError) ----------------------
def parse_every(value) -> str | int:
    """'passage' | 'paragraph' | N tokens (16..4096) from a setting, a flag or the UI."""
    v = str(value).strip().lower()
    if v in EVERY:
        return v
    if v.isdigit() and 16 <= int(v) <= 4096:
        return int(v)
    raise ValueError(f"A note goes after each passage, each paragraph, or every N tokens "
                     f"(16 to 4,096), not '{value}'.")


def parse_layers(text, depth: int = 0) -> tuple[int, ...] | None:
    """'14-29', '22, 25' or a list -> sorted layer indices (checked against ``depth`` when
    known); '' or None -> None (the model's default layers)."""
    if text is None:
        return None
    parts = ([str(x) for x in text] if isinstance(text, (list, tuple)) else
             [p for p in str(text).replace(";", ",").split(",") if p.strip()])
    out: set[int] = set()
    for p in parts:
        p = p.strip()
        try:
            if "-" in p[1:]:
                a, b = (int(x) for x in p.split("-", 1))
                out |= set(range(min(a, b), max(a, b) + 1))
            else:
                out.add(int(p))
        except ValueError as e:
            raise ValueError(f"'{p}' is not a layer number or range like 14-29") from e
    if any(x < 0 for x in out) or (depth and any(x >= depth for x in out)):
        raise ValueError(f"layers must lie in 0..{depth - 1 if depth else 'depth-1'}"
                         + (" for this model" if depth else ""))
    return tuple(sorted(out)) or None


def layers_text(layers) -> str:
    """'15-29' for a run of layers, else '22, 25'."""
    layers = sorted(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(x) for x in layers)


def parse_inject(value) -> dict:
    """'r=0.1,k=10,layer_fractions=0.5/0.7' (or such a dict) -> overrides of the kNN
    inject preset, each value of its preset's type."""
    known = set(PRESETS["recall"])
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
        for part in filter(None, (x.strip() for x in str(value).split(","))):
            key, _, v = part.partition("=")
            if key.strip() not in known or not v.strip():
                raise ValueError(f"The inject override '{part}' is not KEY=VALUE with KEY "
                                 f"one of {', '.join(sorted(known))}.")
            items.append((key.strip(), v.strip()))
    out = {}
    for key, v in items:
        if key not in known:
            raise ValueError(f"Unknown inject override '{key}': use "
                             f"{', '.join(sorted(known))}.")
        try:
            if key == "layer_fractions":
                parts = v.split("/") if isinstance(v, str) else list(v)
                out[key] = tuple(float(x) for x in parts)
                if not out[key] or not all(0.0 <= x <= 1.0 for x in out[key]):
                    raise ValueError
            elif key in ("inject_type", "k"):
                out[key] = int(v)
            else:
                out[key] = float(v)
                if not math.isfinite(out[key]):
                    raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"The inject override '{v}' is not a number ({key}"
                             + (": fractions 0..1 as 0.5/0.7" if key == "layer_fractions"
                                else "") + ").") from None
    if out.get("inject_type", 1) not in (1, 2, 3) or out.get("k", 1) < 1:
        raise ValueError("The inject type must be 1, 2 or 3, and its k 1 or more.")
    return out


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"say on or off, not '{v}'")


def _optional_str(v) -> str | None:
    return str(v).strip() or None


def _slots(v) -> int:
    v = int(v)
    if not 64 <= v <= 65536 or v % 64:
        raise ValueError("Slots must be a multiple of 64 between 64 and 65,536.")
    return v


def _share(v) -> float:
    """A share of the query heads: in (0, 1]."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not 0.0 < x <= 1.0:
        raise ValueError(f"The share of query heads that read memory must be in (0, 1], "
                         f"not {v}.")
    return x


def _span(v) -> tuple[float, float]:
    """'0.5,1' or (0.5, 1.0) -> the default attend layers [from, to) as depth fractions."""
    try:
        parts = (str(v).replace("-", ",").split(",") if isinstance(v, str) else list(v))
        a, b = (float(x) for x in parts)
    except (TypeError, ValueError):
        a = b = math.nan
    if not 0.0 <= a < b <= 1.0:
        raise ValueError(f"The default layer span is two fractions of the depth, "
                         f"0 <= from < to <= 1, like 0.5,1; not '{v}'.")
    return (a, b)


# -- the base of every section ----------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """Base of every settings section: coerces and checks each field when built."""
    key: ClassVar[str] = ""

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name), self.key))

    @classmethod
    def from_dict(cls, d: dict | None) -> "Section":
        """From what the database holds: unknown keys are ignored and a value no longer
        valid falls back to its default (an old project opens; nothing is lost but it)."""
        good = {}
        for f in fields(cls):
            if (d or {}).get(f.name) is None:
                continue
            try:
                good[f.name] = _check(f, d[f.name], cls.key)
            except (TypeError, ValueError):
                pass
        return cls(**good)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def changed(self, **changes) -> "Section":
        """A copy with ``changes`` (None: unchanged), checked; SettingsError names the field."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown {self.key} setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _kind(f) -> str:
    """'bool', 'int', 'float', 'str' or '' (a parser's own) of a field."""
    if isinstance(f.default, bool) or f.type in ("bool", "bool | None"):
        return "bool"
    return f.type.removesuffix(" | None") if f.type.removesuffix(" | None") in (
        "int", "float", "str") else ""


def _range(lo, hi, comma: bool = True) -> str:
    """'1..1,024', '0 or more', 'at most 5' (``comma``: thousands separated)."""
    fmt = (lambda x: f"{x:,}") if comma else (lambda x: f"{x:g}" if isinstance(x, float)
                                               else str(x))
    if lo is not None and hi is not None:
        return f"{fmt(lo)}..{fmt(hi)}"
    return f"{fmt(lo)} or more" if lo is not None else f"at most {fmt(hi)}"


def _check(f, v, section: str = ""):
    m = f.metadata
    if v is None:
        if f.default is None:
            return None
        raise SettingsError(f"The setting '{f.name}' needs a value.")
    kind = _kind(f)
    try:
        if m.get("parse"):
            v = m["parse"](v)
        elif kind == "bool":
            v = _bool(v)
        elif kind == "int":
            v = int(v)
        elif kind == "float":
            v = float(v)
            if not math.isfinite(v):
                raise ValueError
        elif kind == "str":
            v = str(v).strip()
    except (TypeError, ValueError) as e:
        if m.get("parse") and str(e):  # the parser says what it accepts
            raise SettingsError(str(e)) from e
        wants = {"bool": "say on or off, not", "int": "give a whole number, not",
                 "float": "give a finite number, not"}.get(kind, "not")
        raise SettingsError(f"{(m.get('help') or f.name).capitalize()}: {wants} '{v}'.") from e
    if m.get("choices") and v not in m["choices"]:
        raise SettingsError(f"Unknown {section} {f.name} '{v}': use "
                            f"{' or '.join(m['choices'])}.")
    lo, hi = m.get("lo"), m.get("hi")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        verb = "must lie in" if lo is not None and hi is not None else "must be"
        raise SettingsError(f"{(m.get('help') or f.name).capitalize()} {verb} "
                            f"{_range(lo, hi)}, not {v:,}.")
    return v


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
        from .memory.knn_files import FORMAT_VERSION  # the store's format (numpy side)

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


# -- command-line flags from the fields ------------------------------------------------------
def _dest(prefix: str, name: str) -> str:
    return prefix.replace("-", "_") + name


def add_flags(parser, cls: type[Section], only=None, prefix: str = "", names=None,
              defaults: bool = False, note: str = "") -> None:
    """One ``--PREFIXfield-name`` per field of ``cls`` (``only``: these names; ``names``:
    {field: flag name} where the flag says it otherwise), its help the field's (``note``
    appended; ``defaults``: with the default, for flags over a memory's defaults), its
    value None when not given. A bool off by default is a switch (store_true), any other
    takes on/off; choices are argparse's; every other value is checked by the field, so
    the CLI and the page refuse the same things."""
    for f in fields(cls):
        m = f.metadata
        if not m.get("flag", True) or (only is not None and f.name not in only):
            continue
        name = (names or {}).get(f.name) or prefix + f.name.replace("_", "-")
        hlp = m.get("help") or ""
        if m.get("lo") is not None and m.get("hi") is not None:
            hlp += ", " + _range(m.get("lo"), m.get("hi"), comma=False)
        if defaults and f.default not in (None, MISSING, False, ""):
            shown = (",".join(f"{x:g}" for x in f.default) if isinstance(f.default, tuple)
                     else f.default)
            hlp += f" (default {shown})"
        hlp += note
        kw = dict(dest=_dest(prefix, f.name), default=None, help=hlp.replace("%", "%%"))
        if _kind(f) == "bool" and f.default is False:
            kw["action"] = "store_true"
        else:
            kw["type"] = _flag_type(f, cls.key)
            kw["metavar"] = m.get("metavar") or ("on|off" if _kind(f) == "bool" else None)
            if m.get("choices"):
                kw["choices"], kw["metavar"] = m["choices"], None
        parser.add_argument("--" + name, **kw)


def _flag_type(f, section: str):
    """argparse's type for a field: the field's own check; its complaint names the range
    like the CLI's other flags ('must be 1..1024, not 0'). Text that means 'none' (an
    empty adapter or layer list) is kept as given, so the flag still counts as given."""
    import argparse

    def convert(text):
        if f.metadata.get("choices"):
            return str(text).strip()  # argparse names the choices
        try:
            v = _check(f, text, section)
        except SettingsError as e:
            raise argparse.ArgumentTypeError(_flag_message(f, text, e)) from None
        return text if v is None else v
    convert.__name__ = f.name
    return convert


def _flag_message(f, text, error) -> str:
    m, kind = f.metadata, _kind(f)
    if m.get("parse") or kind not in ("int", "float"):
        return str(error)
    try:
        v = int(str(text).strip()) if kind == "int" else float(str(text).strip())
    except ValueError:
        return f"'{text}' is not a {'whole number' if kind == 'int' else 'number'}"
    if not math.isfinite(v) or (m.get("lo") is None and m.get("hi") is None):
        return f"must be a finite number, not {text}"
    return f"must be {_range(m.get('lo'), m.get('hi'), comma=False)}, not {text}"


def changes(args, cls: type[Section], prefix: str = "") -> dict:
    """The flags of ``cls`` given on the command line (``args``, a parsed Namespace or one
    built by hand), checked, as changes for ``changed`` / Settings.set. SettingsError
    names the flag."""
    out = {}
    for f in fields(cls):
        v = getattr(args, _dest(prefix, f.name), None)
        if v is None:
            continue
        try:
            v = _check(f, v, cls.key)
        except SettingsError as e:
            raise SettingsError(f"--{prefix}{f.name.replace('_', '-')}: {e}") from None
        if v is not None:
            out[f.name] = v
    return out


def default(cls: type[Section], name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else None
