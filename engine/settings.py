"""What a novel keeps as its settings: one typed, frozen dataclass per section, checked
when built, loaded and saved one way (``Settings`` over the novel's settings table), and
command-line flags made from the same fields (``add_flags`` / ``changes``).

Light on purpose (stdlib only): the CLI reads it without torch. Checks that need the
loaded model (a layer against its depth, an adapter against its shape) stay with the
memory that owns the setting.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import ClassVar

from .errors import UserError

EVERY = ("passage", "paragraph")  # where prompted margin notes go, besides every N tokens


class SettingsError(UserError, ValueError):
    """A setting out of range: shown to the writer as is."""


def opt(default, help: str, lo=None, hi=None, choices=None, parse=None, flag=True):
    """A settings field: its default, its one-line help (also the CLI flag's), its
    range or choices, and ``parse`` (text or stored value -> value, raising ValueError)."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi,
                                            "choices": choices, "parse": parse,
                                            "flag": flag})


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


def _check(f, v, section: str = ""):
    m = f.metadata
    if v is None:
        if f.default is None:
            return None
        raise SettingsError(f"The setting '{f.name}' needs a value.")
    try:
        if m.get("parse"):
            v = m["parse"](v)
        elif isinstance(f.default, bool) or f.type in ("bool", "bool | None"):
            v = _bool(v)
        elif f.type in ("int", "int | None"):
            v = int(v)
        elif f.type in ("float", "float | None"):
            v = float(v)
            if not math.isfinite(v):
                raise ValueError
        elif f.type in ("str", "str | None"):
            v = str(v).strip()
    except (TypeError, ValueError) as e:
        if m.get("parse") and str(e):  # the parser says what it accepts
            raise SettingsError(str(e)) from e
        raise SettingsError(f"{(m.get('help') or f.name).capitalize()}: not '{v}'.") from e
    if m.get("choices") and v not in m["choices"]:
        raise SettingsError(f"Unknown {section} {f.name} '{v}': use "
                            f"{' or '.join(m['choices'])}.")
    lo, hi = m.get("lo"), m.get("hi")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SettingsError(f"{(m.get('help') or f.name).capitalize()} must lie in "
                            f"{lo:,}..{hi:,}, not {v:,}.")
    return v


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
    mode: str = opt("prompt", "who writes the notes", choices=("prompt", "self"))
    adapter: str = opt("", "the thought adapter's folder ('' = the model's default)")
    every: str | int = opt("paragraph", "a note after each 'passage', each 'paragraph', "
                           "or every N tokens", parse=parse_every)


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


@dataclass(frozen=True)
class KNN(Section):
    """The kNN memory, as the writer chooses it (the rest: KNNSettings' defaults)."""
    key: ClassVar[str] = "knn"
    on: bool = opt(False, "kNN memory on")
    layers: tuple | None = opt(None, "layers read, like 14-29 or 22,25 ('' = default)",
                               parse=parse_layers)
    k: int = opt(32, "neighbours per query head", lo=1, hi=1024)


@dataclass(frozen=True)
class Matrix(Section):
    """The memory matrix, as the writer chooses it (the rest: MatrixSettings' defaults)."""
    key: ClassVar[str] = "matrix"
    on: bool = opt(False, "memory matrix on")
    layer: int | None = opt(None, "the layer that reads the matrix", lo=0, hi=1023)
    slots: int = opt(4096, "slots, a multiple of 64, 64..65536", parse=_slots)
    rows: int = opt(64, "memory tokens read per layer", lo=1, hi=1024)
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
def add_flags(parser, cls: type[Section], only=None) -> None:
    """One ``--field-name`` per field (``only``: these names), default None (unchanged);
    bools take on/off. Values are checked by the dataclass, so the CLI and the page
    refuse the same things with the same message."""
    for f in fields(cls):
        if not f.metadata.get("flag", True) or (only and f.name not in only):
            continue
        m = f.metadata
        kind = ("on|off" if isinstance(f.default, bool) else
                "|".join(m["choices"]) if m.get("choices") else None)
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            metavar=kind, help=m.get("help"))


def changes(args, cls: type[Section]) -> dict:
    """The flags of ``cls`` given on the command line, as changes for Settings.set."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if getattr(args, f.name, None) is not None}


def default(cls: type[Section], name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else None
