"""The base of every settings section: ``opt`` fields, their parsers and checks, and
``Section`` (a frozen dataclass checked when built)."""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from ..errors import UserError


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
