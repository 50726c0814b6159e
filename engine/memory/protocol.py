"""The one shape every long-term memory of a novel has (semantic recall and pins, the kNN
memory, the memory matrix, and any new one). ``Novel.memory`` lists them; the Continue
pipeline and the UI loop over that list instead of naming each memory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Protocol


@dataclass
class Reader:
    """How a memory takes part in one Continue: ``context`` (a factory of the context
    manager the model's forward passes run under, reading the memory inside attention,
    or None), ``key`` (what the prefix cache must match: a cached prefix computed under
    another memory state is not reused) and ``warnings`` for the receipt."""
    context: Callable | None = None
    key: Hashable = None
    warnings: list[str] = field(default_factory=list)


class Memory(Protocol):
    name: str  # "semantic", "knn", "matrix"

    def info(self) -> dict:
        """What it holds, for the page and the CLI; builds nothing."""

    def settings(self) -> dict:
        """The writer's choices, defaults resolved."""

    def set_settings(self, **changes) -> dict:
        """Check and save ``changes`` (SettingsError/NovelError, nothing saved); the new
        settings."""

    def preparing(self) -> str | None:
        """What the page shows while ``reader`` brings the memory up to date (None: it
        has nothing to do)."""

    def reader(self, lm, chapter_id: int, prompt_ids: list[int], receipt: dict) -> Reader | None:
        """Its part in a Continue with this prompt (None: it reads nothing now)."""

    def after_accept(self, chapter_id: int, passage_id: int) -> None:
        """A passage was accepted into the book: write it into the memory."""

    def rebuild(self, progress=None) -> dict:
        """Forget the derived data and build it again from the book; ``info()``."""
