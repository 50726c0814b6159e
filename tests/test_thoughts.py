"""Thought bubbles: parsing, stripping, escaping and anchoring round-trips."""
from __future__ import annotations

from engine import thoughts as th
from engine.thoughts import BEGIN, END


def test_split_and_strip_round_trip():
    text = f"She ran.{BEGIN}She is afraid of the sea.{END} The tide rose.{BEGIN}Next: the boat.{END}"
    prose, notes = th.split(text)
    assert prose == "She ran. The tide rose."
    assert [(n.anchor, n.text) for n in notes] == [(8, "She is afraid of the sea."),
                                                     (23, "Next: the boat.")]
    assert th.strip(text) == prose
    assert th.with_thoughts(prose, notes) == text  # and back again


def test_streaming_router_matches_whole_split_for_any_chunking():
    text = f"A{BEGIN}note one{END}B C{BEGIN}two{END}D"
    for size in (1, 2, 3, 5, 100):
        r = th.Router()
        shown = "".join(r.feed(text[i:i + size]) for i in range(0, len(text), size))
        r.finish()
        assert shown == "AB CD" == r.prose
        assert [t.text for t in r.thoughts] == ["note one", "two"]


def test_unbalanced_markers_from_the_model():
    prose, notes = th.split(f"Start{END} middle{BEGIN}never closed")
    assert prose == "Start middle"  # a stray END is dropped, never shown
    assert [n.text for n in notes] == ["never closed"]  # closed at the end of generation
    prose, notes = th.split(f"x{BEGIN}a{BEGIN}b{END}y")
    assert prose == "xy" and [n.text for n in notes] == ["ab"]
    r = th.Router()
    r.feed(f"text{BEGIN}half")
    assert r.thinking and r.prose == "text"


def test_markers_typed_by_the_writer_are_escaped():
    prose = f"The sign read {BEGIN}KEEP OUT{END}."
    safe = th.escape_prose(prose)
    assert BEGIN not in safe and END not in safe and "KEEP OUT" in safe
    context = th.with_thoughts(prose, [th.Thought(len(prose), "real note")])
    again, notes = th.split(context)
    assert [n.text for n in notes] == ["real note"]  # the typed markers opened nothing
    assert "KEEP OUT" in again
    assert th.inline(f"a {END} b").count(END) == 1


def test_anchor_survives_edits_of_nearby_text():
    old = "First paragraph ends here.\n\nSecond paragraph."
    anchor = old.index("\n\n")
    # an edit before the anchor shifts it
    new = "The first paragraph, rewritten, ends here.\n\nSecond paragraph."
    assert new[th.reanchor(old, new, anchor):].startswith("\n\nSecond")
    # an edit after it does not move it
    new2 = "First paragraph ends here.\n\nSecond paragraph, longer now."
    assert th.reanchor(old, new2, anchor) == anchor
    # text typed right at the anchor goes after the note
    new3 = old[:anchor] + " More." + old[anchor:]
    assert th.reanchor(old, new3, anchor) == anchor
    # a deleted stretch around it lands the note at the end of the replacement
    new4 = "Second paragraph."
    assert 0 <= th.reanchor(old, new4, anchor) <= len(new4)
    assert th.reanchor(old, old + " tail", len(old)) == len(old)


def test_note_prompt_has_the_passage_and_the_ask():
    msgs = th.note_messages("Elena hid the letter.", {"title": "Grey Eyes"})
    assert "Elena hid the letter." in msgs[-1]["content"] and "Grey Eyes" in msgs[0]["content"]
    assert "plan" in th.note_messages("x", {}, plan=True)[-1]["content"]
