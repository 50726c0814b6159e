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

from .fields import (EVERY, PRESETS, Section, SettingsError, layers_text, like, opt, parse_every,
                     parse_inject, parse_layers)  # noqa: F401
from .sections import (KNN, KNNSettings, Matrix, MatrixSettings, Recall, SECTIONS, Settings,
                       Thoughts, Writing)  # noqa: F401
from .flags import (add_flags, changes, default)  # noqa: F401
