"""The chat framing of the context, the margin-note check, and bench prose end to end
on the tiny model."""
from __future__ import annotations

import argparse
import json

import pytest

from engine import context, thoughts
from engine.tiny import byte_tokenizer

# SmolLM2's template (the bundled model's), so the tiny tokenizer frames like it
TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != "
            "'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}"
            "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|im_start|>assistant\n' }}{% endif %}")
BIBLE = {"title": "Grey Eyes", "premise": "Elena hides a letter.", "style": "Spare."}


@pytest.fixture
def chat_tok():
    tok = byte_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_chat_frame_puts_the_story_in_the_open_assistant_turn(chat_tok):
    tail = ("She folded the letter twice." + thoughts.inline("She must not be seen.")
            + thoughts.inline("Next: Tomas rows out to the lighthouse."))
    ids, r = context.build(chat_tok, 4096, BIBLE, tail, "Chapter 2",
                           pins=[("memory 1", "Elena's eyes are grey.")],
                           recalled=[("passage 4", "The letter was from Paris.", "similar")],
                           frame="chat")
    text = chat_tok.decode(ids)
    kinds = [b["kind"] for b in r.blocks]
    assert kinds == ["frame_user", "bible", "pinned", "recalled", "thought", "thought",
                     "frame_story", "tail"]
    assert text.startswith("<|im_start|>system\n")
    story = text.split("<|im_start|>assistant\n", 1)[1]
    assert story == "Chapter 2\n\nShe folded the letter twice."  # left open, no markers
    user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
    assert "[Note: She must not be seen.]" in user
    assert user.rstrip().endswith("What happens next: Tomas rows out to the lighthouse.")
    assert sum(b["tokens"] for b in r.blocks) == len(ids) == r.total_tokens
    for b in r.blocks[:-1]:  # each block is exactly its text
        assert context.encode(chat_tok, b["text"]) == ids[b["start"]:b["start"] + b["tokens"]]


def test_raw_frame_and_a_tokenizer_without_a_template_are_plain_text(chat_tok):
    tail = "She folded the letter." + thoughts.inline("Next: Tomas comes.")
    ids, r = context.build(chat_tok, 4096, BIBLE, tail, frame="raw")
    assert [b["kind"] for b in r.blocks] == ["bible", "tail"]
    assert chat_tok.decode(ids).endswith(thoughts.inline("Next: Tomas comes."))
    ids2, r2 = context.build(byte_tokenizer(), 4096, BIBLE, tail, frame="chat")
    assert ids2 == ids  # no template: raw
    with pytest.raises(ValueError):
        context.build(chat_tok, 4096, BIBLE, tail, frame="prose")


def test_chat_frame_keeps_inside_the_budget(chat_tok):
    ids, r = context.build(chat_tok, 700, BIBLE, "word " * 400, frame="chat")
    assert len(ids) <= 700 and r.blocks[-1]["kind"] == "tail"
    assert any(d["kind"] == "tail" for d in r.dropped)


PARA = ("The storm came in at dusk. Elena lit the great lamp by hand, because the "
        "clockwork had seized again, and left her father's letter unopened on the table.")


@pytest.mark.parametrize("note, problem", [
    ("Elena lights the lamp by hand and leaves the letter unopened.", None),
    ("The author has skillfully woven a tale of loss.", "assistant"),
    ("This scene has been replayed multiple times before.", "assistant"),
    ("I'm ready when you're ready! Here's the rewritten version.", "assistant"),
    ("Tomas sails to the capital with his new wife.", "not about its paragraph"),
    ("", "empty"),
    ("Elena lit the great lamp by hand, because the clockwork had seized again.",
     "copied from the paragraph"),
])
def test_the_note_check(note, problem):
    assert thoughts.note_problem(note, PARA) == problem


def test_note_names_prefer_people_and_keep_titles():
    assert thoughts.note_names(PARA)[0] == "Elena"
    names = thoughts.note_names("Mr. Bennet waited on Mr. Bingley. He went in Greyhollow. "
                                "Mr. Bennet laughed.")
    assert names[:2] == ["Mr. Bennet", "Mr. Bingley"]


def test_a_note_turned_down_is_asked_for_again(tiny_lm, monkeypatch):
    from engine import writer

    replies = iter(["has skillfully woven a tale, the author says.",
                    "sails to the capital with his new wife.",
                    "hides the letter and lights the lamp by hand."])
    asked = []

    def fake(lm, ids, sampling, cancel=None, prefix=None, prefix_key=None,
             forward_context=None, result=None):
        asked.append(sampling.seed)
        result.text = " " + next(replies)
        result.stop_reason = "eos"
        yield result.text

    monkeypatch.setattr(writer, "stream", fake)
    note = thoughts.write_note(tiny_lm, PARA, BIBLE, seed=5)
    assert note == "Elena hides the letter and lights the lamp by hand."
    assert len(asked) == 3 and len(set(asked)) == 3  # a new seed each time
    replies = iter(["The author has skillfully woven it."] * 5)
    assert thoughts.write_note(tiny_lm, PARA, BIBLE, seed=5, tries=2) == ""
    # after the tries, a note that only missed its paragraph is kept; a reviewer's never
    replies = iter(["has skillfully woven a tale, the author says.",
                    "sails to the capital with his new wife."])
    assert thoughts.write_note(tiny_lm, PARA, BIBLE, seed=5, tries=2) == \
        "Elena sails to the capital with his new wife."
    replies = iter(["sails to the capital with his new wife.",
                    "has skillfully woven a tale, the author says."])
    assert thoughts.write_note(tiny_lm, PARA, BIBLE, seed=5, tries=2) == ""


def test_tidy_note_puts_the_lead_back_and_keeps_one_paragraph():
    assert thoughts.tidy_note(" lights the lamp.\nNote: more", lead="Elena") == \
        "Elena lights the lamp."
    assert thoughts.tidy_note("Note: Elena waits.") == "Elena waits."


def test_bench_prose_runs_end_to_end_on_the_tiny_model(tmp_path, capsys):
    from engine.evals import prose

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    prose.add_arguments(ap)
    out = tmp_path / "prose.json"
    args = ap.parse_args(["--settings", "today,default:temperature=0.7", "--split", "tuning",
                          "--openings", "2", "--seeds", "1", "--new-tokens", "12",
                          "--out", str(out)])
    assert prose.run(args) == 0
    printed = capsys.readouterr().out
    assert "tuning split" in printed and "split: tuning" in printed
    data = json.loads(out.read_text())
    assert data["split"] == "tuning" and len(data["openings"]) == 2
    for spec in ("today", "default:temperature=0.7"):
        r = data["results"][spec]
        assert r["passages"] == 2
        for key in ("leak_pct", "meta_pct", "rep4_pct", "distinct2", "fluency",
                    "notes_about_pct", "notes_assistant_pct", "steer_pct"):
            assert key in r
    args = ap.parse_args(["--rescore", str(out), "--split", "tuning"])
    assert prose.run(args) == 0
    assert "default:temperature=0.7" in capsys.readouterr().out


def test_bench_measures_on_crafted_text():
    from engine.evals import prose

    assert prose.is_meta("She ran.\nChapter 4\nThe storm.")
    assert prose.is_meta("A: [writing down]") and prose.is_meta("1. First\n2. Second")
    assert prose.is_meta("Sure! Here's the rewritten version:")
    assert not prose.is_meta("She read the chapter twice. Part of her wanted to stay.")
    lines = ["Title: Grey Eyes", "Premise: Elena hides a letter from her brother Tomas."]
    assert prose.leaks("Premise: Elena hides a letter.", lines)
    assert prose.leaks("and elena hides a letter from her brother tomas", lines)
    assert not prose.leaks("Elena hid the letter.", lines)
    rep, dist = prose.repetition("the cat sat on the mat the cat sat on the mat")
    assert rep > 0.3 and dist < 1
    assert prose.follows("Tomas rowed out.", ["Tomas"], ["row"])
    op = {"text": "She was tired too.", "person": [], "action": [], "title": "T",
          "premise": "", "style": "", "pin": "", "recalled": "", "next": ""}
    assert prose.measure({"text": "Then she left."}, op)["glued"]
    assert not prose.measure({"text": " Then she left. He stayed."}, op)["glued"]
    assert prose.measure({"text": " She left.He stayed."}, op)["glued"]
    assert prose.is_meta("She ran.\n[Sounds like an old man talking.]")
    assert not prose.follows("Tomas slept.", ["Tomas"], ["row"])


def test_the_openings_split_in_two(tmp_path):
    from engine.evals.prose_openings import openings

    split = openings()
    assert len(split["tuning"]) + len(split["report"]) >= 12
    names = [o["name"] for o in split["tuning"]]
    assert not set(names) & {o["name"] for o in split["report"]}
    assert any(n.startswith("pride") for n in names) and any(
        not n.startswith("pride") for n in names)
    with pytest.raises(SystemExit, match="missing"):
        openings(tmp_path / "none.txt")


def test_open_with_plan_starts_the_passage_with_the_notes_person(chat_tok):
    tail = "She slept too." + thoughts.inline("Next: Tomas rows out to the lighthouse.")
    ids, r = context.build(chat_tok, 4096, BIBLE, tail, frame="chat", open_with_plan=True)
    assert r.opening == "\n\nTomas" and chat_tok.decode(ids).endswith("She slept too.\n\nTomas")
    assert r.blocks[-1]["kind"] == "opening"
    tail2 = "She slept." + thoughts.inline("Next: Selka pays Amos with a silver ring.")
    assert context.build(chat_tok, 4096, BIBLE, tail2, frame="chat",
                         open_with_plan=True)[1].opening == "\n\nSelka"  # the subject
    # not by default, not mid-sentence, not without a plan
    assert context.build(chat_tok, 4096, BIBLE, tail, frame="chat")[1].opening == ""
    mid = "She slept" + thoughts.inline("Next: Tomas rows out.")
    assert context.build(chat_tok, 4096, BIBLE, mid, frame="chat",
                         open_with_plan=True)[1].opening == ""
    assert context.build(chat_tok, 4096, BIBLE, "She slept.", frame="chat",
                         open_with_plan=True)[1].opening == ""
