"""The LoRA adapter ``train thoughts`` trains; it lives in engine/adapters.py, beside
what applies it at run time (nothing at run time imports engine/train)."""
from __future__ import annotations

from ..adapters import (ALL_LINEAR, CONFIG, FORMAT, QV, WEIGHTS, AdapterError,  # noqa: F401
                        LoRA, read_config, targets_of)
