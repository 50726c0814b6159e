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


PARAS = ["The keeper climbed the stairs and counted every one of them twice, as his father "
         "had, and his father before him, because a lighthouse that is not counted is a "
         "lighthouse that forgets.",
         "\"Nothing,\" he said.",
         "At the top the lamp was cold, and the glass was cracked from edge to edge, and "
         "through the crack came the smell of the sea and of something older than the sea, "
         "which he had no name for.",
         "Below, the sea went on."]


def test_note_points_after_each_passage_or_paragraph():
    text = "\n\n".join(PARAS) + "\n"
    assert th.note_points(text, "passage") == [len(text)]
    points = th.note_points(text, "paragraph")
    # the line of dialogue joins the next paragraph; the short last one joins the note
    # before it
    assert [text[:p].rstrip()[-6:] for p in points] == ["rgets.", "nt on."]
    assert points[0] == len(PARAS[0]) and points[-1] == len(text)
    assert th.note_points("  \n", "paragraph") == []
    lines = PARAS[0] + "\n" + PARAS[2]  # a line break starts a paragraph too
    assert th.note_points(lines, "paragraph") == [len(PARAS[0]), len(lines)]


def test_note_points_every_n_tokens_cut_at_sentence_ends(tiny_lm):
    text = " ".join(PARAS)
    points = th.note_points(text, 40, tiny_lm.tokenizer)  # byte tokenizer: 40 characters
    assert points[-1] == len(text) and len(points) >= 2
    for p in points[:-1]:
        assert text[p - 1] == "." and p >= 40  # a whole sentence, at least N tokens in
    assert th.note_points(text, 4000, tiny_lm.tokenizer) == [len(text)]


def test_parse_every_accepts_only_what_it_can_use():
    assert th.parse_every("Paragraph") == "paragraph" and th.parse_every("120") == 120
    for bad in ("sometimes", "8", "-5", "1e3", ""):
        try:
            th.parse_every(bad)
        except ValueError as e:
            assert "every N tokens" in str(e)
        else:
            raise AssertionError(bad)
