"""Command-line flags made from the settings' fields (``add_flags``) and read back as
changes (``changes``), so the CLI and the page refuse the same values the same way."""
from __future__ import annotations

import math

from dataclasses import MISSING, field, fields, replace

from .fields import (Section, SettingsError, _check, _kind, _range, like)
from .sections import Settings


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
