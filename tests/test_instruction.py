"""The writer's instruction for one Continue: read by the model (it is in the prompt and
the receipt), never saved as a note or into the chapter, and refused when oversized."""
from __future__ import annotations

import pytest

from engine import writer
from engine.errors import UserError
from engine.writer import Sampling

from engine_helpers import fake_stream


def _recording(pieces, seen):
    """fake_stream that also keeps the prompt ids of each call."""
    inner = fake_stream(pieces)

    def stream(lm, ids, *a, **k):
        seen.append({"ids": list(ids)})
        yield from inner(lm, ids, *a, **k)
    return stream


def test_an_instruction_reaches_the_prompt_of_that_continue_only(novel, monkeypatch):
    seen = []
    monkeypatch.setattr(writer, "stream", _recording([" The lamp went out."], seen))
    novel.thoughts.set_settings(on=False)
    cid = novel.chapters.add("One", "The keeper climbed the stairs.")
    last = list(novel.continue_chapter(cid, Sampling(seed=1),
                                       instruction="Let the lamp go out."))[-1]
    tok = novel.model.get().tokenizer
    assert "Let the lamp go out." in tok.decode(seen[0]["ids"])
    assert any("Let the lamp go out." in (b.get("text") or "") for b in last.receipt["blocks"])
    assert novel.chapters.text(cid) == "The keeper climbed the stairs. The lamp went out."
    assert novel.thoughts.list(cid) == []  # never a note
    list(novel.continue_chapter(cid, Sampling(seed=2)))
    assert "Let the lamp go out." not in tok.decode(seen[1]["ids"])  # this Continue only


def test_an_oversized_instruction_is_refused_and_changes_nothing(novel):
    cid = novel.chapters.add("One", "Start.")
    head = novel.chapters.head(cid)
    with pytest.raises(UserError, match="instruction"):
        list(novel.continue_chapter(cid, instruction="x" * 6000))
    assert novel.chapters.head(cid) == head and novel.chapters.text(cid) == "Start."
