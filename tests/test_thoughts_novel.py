"""Thought bubbles through the Novel facade and the CLI: hidden from the book,
anchored, editable, and read by the model."""
from __future__ import annotations

import json
import subprocess
import sys

from engine import writer
from engine.errors import UserError
from engine.thoughts import BEGIN, END
from engine.writer import Sampling

from conftest import ROOT


def write(novel, cid, max_new_tokens=10):
    return list(novel.continue_chapter(cid, Sampling(max_new_tokens=max_new_tokens,
                                                     seed=2)))[-1]


def test_a_note_follows_each_passage_and_stays_out_of_the_book(novel):
    cid = novel.chapters.add("One", "The keeper climbed the stairs.")
    last = write(novel, cid)
    notes = novel.thoughts.list(cid)
    assert len(notes) == 1 and notes[0]["anchor"] == len(last.text)
    assert notes[0]["text"] and notes[0]["text"] not in novel.chapters.text(cid)
    for fmt in ("md", "txt"):
        assert notes[0]["text"] not in novel.chapters.export(fmt)
    with_notes = novel.chapters.export("notes")
    assert "Margin note:" in with_notes and notes[0]["text"] in with_notes
    novel.thoughts.set_settings(on=False)
    write(novel, cid)
    assert len(novel.thoughts.list(cid)) == 1  # the setting turns them off


def test_inline_thoughts_from_the_model_go_to_the_margin(novel, monkeypatch):
    cid = novel.chapters.add("One", "Start.")
    novel.thoughts.set_settings(on=False)
    pieces = [" She ran", f" {BEGIN}she fears", f" the sea{END} to", " the boat.", f"{END}"]

    def fake_stream(lm, ids, sampling, cancel=None, prefix=None, prefix_key=None,
                    forward_context=None, result=None):
        for p in pieces:
            result.text += p
            yield p
        result.stop_reason = "eos"

    monkeypatch.setattr(writer, "stream", fake_stream)
    last = list(novel.continue_chapter(cid))[-1]
    assert last.text == "Start. She ran  to the boat." == novel.chapters.text(cid)
    assert BEGIN not in novel.chapters.text(cid) and END not in novel.chapters.text(cid)
    notes = novel.thoughts.list(cid)
    assert [n["text"] for n in notes] == ["she fears the sea"]
    assert novel.chapters.text(cid)[:notes[0]["anchor"]] == "Start. She ran "


def test_edited_note_changes_what_the_model_writes_next(novel, tiny_lm):
    import torch

    cid = novel.chapters.add("One", "The keeper climbed the stairs.")
    novel.thoughts.set_settings(on=False)
    tid = novel.thoughts.add(cid, "The lamp must be lit before dark.")
    ids1, _ = novel.build_context(cid)
    novel.thoughts.edit(tid, "A stranger waits on the rocks below, soaked and silent.")
    ids2, receipt2 = novel.build_context(cid)
    tail = receipt2["blocks"][-1]["text"]
    assert f"{BEGIN}A stranger waits" in tail and "lamp" not in tail
    with torch.no_grad():
        p1, p2 = (tiny_lm.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
                  for ids in (ids1, ids2))
    # The next word is drawn from a different distribution once the note is edited.
    assert (p1 - p2).abs().max() > 1e-3
    hist = novel.thoughts.history(tid)
    assert [h["text"] for h in hist] == ["The lamp must be lit before dark.",
                                         "A stranger waits on the rocks below, soaked and silent."]


def test_anchor_follows_the_writers_edits(novel):
    cid = novel.chapters.add("One", "First paragraph.\n\nSecond paragraph.")
    novel.thoughts.set_settings(on=False)
    tid = novel.thoughts.add(cid, "after the first", anchor=len("First paragraph."))
    novel.chapters.save(cid, "A much longer first paragraph now.\n\nSecond paragraph.")
    anchor = novel.thoughts.get(tid)["anchor"]
    assert novel.chapters.text(cid)[:anchor] == "A much longer first paragraph now."


def test_plan_first_puts_the_note_before_the_passage(novel):
    cid = novel.chapters.add("One", "Opening line.")
    novel.thoughts.set_settings(on=True, plan_first=True)
    last = write(novel, cid)
    notes = novel.thoughts.list(cid)
    assert len(notes) == 1 and notes[0]["anchor"] == len("Opening line.")
    tail = last.receipt["blocks"][-1]["text"]
    assert f"{BEGIN}{notes[0]['text'][:10]}" in tail  # the model read its plan


def test_typed_markers_cannot_open_a_thought(novel):
    cid = novel.chapters.add("One", f"A sign: {BEGIN}KEEP OUT{END}.")
    novel.thoughts.set_settings(on=False)
    _, receipt = novel.build_context(cid)
    assert BEGIN not in receipt["blocks"][-1]["text"]
    assert "KEEP OUT" in receipt["blocks"][-1]["text"]


def test_thoughts_cli_round_trip(novel):
    cid = novel.chapters.add("One", "Text.")
    folder = str(novel.folder)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine", "thoughts", "--project",
                               folder, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    assert cli("add", "Remember the key.").returncode == 0
    rows = json.loads(cli("list", "--json").stdout)
    assert rows[0]["text"] == "Remember the key." and rows[0]["chapter_id"] == cid
    assert cli("edit", "The key is brass.", "--id", str(rows[0]["id"])).returncode == 0
    assert json.loads(cli("list", "--json").stdout)[0]["text"] == "The key is brass."
    bad = cli("edit", "x", "--id", "999")
    assert bad.returncode == 2 and "no thought 999" in bad.stderr
    assert cli("delete", "--id", str(rows[0]["id"])).returncode == 0
    assert json.loads(cli("list", "--json").stdout) == []


def test_a_note_after_each_paragraph_anchored_at_its_end(novel, monkeypatch):
    import engine.pipeline as novel_mod

    cid = novel.chapters.add("One", "Start.")
    paras = ["The keeper climbed the stairs and counted every one of them twice, as his "
             "father had, because a lighthouse that is not counted is a lighthouse that "
             "forgets what it is for.",
             "At the top the lamp was cold, and the glass was cracked from edge to edge, and "
             "through the crack came the smell of something older than the sea itself."]
    written = "\n\n" + "\n\n".join(paras)

    def fake_stream(lm, ids, sampling, cancel=None, prefix=None, prefix_key=None,
                    forward_context=None, result=None):
        result.text, result.stop_reason = written, "eos"
        yield written

    seen = []

    def fake_note(lm, passage, bible, plan=False, seed=0, cancel=None):
        seen.append(passage)
        return f"note {len(seen)}"

    monkeypatch.setattr(writer, "stream", fake_stream)
    monkeypatch.setattr(novel_mod, "write_note", fake_note)
    novel.thoughts.set_settings(every="paragraph")
    list(novel.continue_chapter(cid))
    text = novel.chapters.text(cid)
    notes = novel.thoughts.list(cid)
    assert [n["text"] for n in notes] == ["note 1", "note 2"]
    assert [p.strip() for p in seen] == paras  # each note is about its own paragraph
    assert [text[:n["anchor"]].rstrip()[-7:] for n in notes] == ["is for.", "itself."]
    try:
        novel.thoughts.set_settings(every="often")
    except Exception as e:  # noqa: BLE001 - the facade's own error, with the reason
        assert isinstance(e, UserError) and "every N tokens" in str(e)
    else:
        raise AssertionError("a bad cadence was accepted")
    assert novel.thoughts.settings()["every"] == "paragraph"
