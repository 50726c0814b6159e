"""``novel.thoughts``: the margin notes as the writer reads and edits them, and how the
model writes them (a summarising prompt, or a model tuned to write them inline). The
notes' storage, anchoring and inline form are engine/thoughts.py's ThoughtBook."""
from __future__ import annotations

from contextlib import nullcontext

from .jobs import NovelError


class Thoughts:
    def __init__(self, book, desk, settings, model, chapters):
        self._book, self._desk, self._settings = book, desk, settings
        self._model, self._chapters = model, chapters

    def list(self, chapter_id: int | None = None) -> list[dict]:
        """The notes shown now (of one chapter, or of every chapter in the book)."""
        return self._book.list(chapter_id)

    def get(self, thought_id: int) -> dict:
        return self._book.get(thought_id)

    def history(self, thought_id: int) -> list[dict]:
        return self._book.history(thought_id)

    def add(self, chapter_id: int, text: str, anchor: int | None = None) -> int:
        """The writer's own note, at ``anchor`` (default: the end of the chapter)."""
        self._desk.idle_or_fail()
        anchor = len(self._chapters.text(chapter_id)) if anchor is None else anchor
        return self._book.add(chapter_id, anchor, text)

    def edit(self, thought_id: int, text: str) -> None:
        self._desk.idle_or_fail()
        self._book.edit(thought_id, text)

    def delete(self, thought_id: int) -> None:
        self._desk.idle_or_fail()
        self._book.delete(thought_id)

    # -- settings ------------------------------------------------------------------------
    def settings(self) -> dict:
        """{on, plan_first, mode, adapter, every} (see engine/settings.py Thoughts)."""
        return self._settings.get("thoughts").to_dict()

    def set_settings(self, **changes) -> dict:
        """Checked in full before saving: in 'self' mode a missing or foreign adapter is
        refused now, not in the middle of a Continue."""
        new = self._settings.get("thoughts").changed(**changes)
        if new.mode == "self":
            lm = self._model.peek()
            if lm is not None:
                self.self_commentary(lm, {**new.to_dict(), "on": True})
            elif new.adapter:  # the model is still loading: check what can be checked
                from .adapters import AdapterError, read_config
                try:
                    read_config(new.adapter)
                except AdapterError as e:
                    raise NovelError(str(e)) from e
        return self._settings.put(new).to_dict()

    def self_commentary(self, lm, settings: dict):
        """(context factory applying the thought adapter, its cache key) in self mode;
        (nullcontext, None) otherwise. A model tuned whole needs no adapter."""
        if not (settings["on"] and settings.get("mode") == "self"):
            return nullcontext, None
        from .adapters import AdapterError, adapter_for
        try:
            lora = adapter_for(lm, settings.get("adapter") or None)
        except AdapterError as e:
            raise NovelError(str(e)) from e
        if lora is None:
            return nullcontext, "tuned"
        return (lambda: lora.attached(lm.model)), lora.key
