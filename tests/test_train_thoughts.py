"""Teaching the thought-bubble habit (engine/train): the augmented corpus, a LoRA that
learns and saves safely, the bubble measure, and self-commentary in a novel."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from engine import writer
from engine.errors import UserError
from engine.novel import NovelError
from engine.thoughts import BEGIN, END, escape_prose, inline, split
from engine.train import thoughts as tt
from engine.train.lora import CONFIG, WEIGHTS, AdapterError, LoRA

PARAS = ["The keeper climbed the stairs at dusk and lit the great lamp, as every night.",
         "A ship rounded the point without lights. He counted its masts twice.",
         "In the morning a stranger knocked, wet to the bone, asking for the ⟦keeper⟧.",
         "She said her name was Ada and that the ship had left her on the rocks."]
NOTES = ["The lamp is lit.", "A dark ship: remember the masts.", "A stranger arrives.",
         "Ada was abandoned by the ship."]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; two threads spin-wait badly on a busy
    two-core machine (20 steps: 0.7 s against 22 s measured here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def records(tok, paras=PARAS, notes=NOTES, max_tokens=200):
    return tt.build_records(paras, notes, tok, max_tokens)


def hooks(model) -> int:
    # no public way: torch lists no module's forward hooks but in this attribute
    return sum(len(m._forward_hooks) for m in model.modules())


def test_augmented_jsonl_holds_well_formed_bubbles_and_resumes(tiny_lm, tmp_path):
    cache = tmp_path / "notes.jsonl"
    notes = tt.augment(tiny_lm, PARAS, {"title": "The Lighthouse"}, cache, seed=1, batch=3)
    assert len(notes) == len(PARAS) and len(cache.read_text().splitlines()) == len(PARAS)
    assert all(BEGIN not in n and END not in n for n in notes)  # notes are tidied
    written = notes
    notes = [n or "fallback note" for n in notes]  # a random model may write only spaces
    recs = records(tiny_lm.tokenizer, notes=notes, max_tokens=60)
    tt.write_jsonl(tmp_path / "a.jsonl", recs)
    back = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert back == recs and len(back) > 1  # the token limit splits the run
    assert [i for r in back for i in range(r["first"], r["last"] + 1)] == list(range(4))
    for r in back:
        text = r["text"]
        marks = [c for c in text if c in (BEGIN, END)]
        assert marks == [BEGIN, END] * r["notes"]  # strictly alternating, all closed
        prose, thoughts = split(text)
        want = range(r["first"], r["last"] + 1)
        assert [t.text for t in thoughts] == [notes[i].strip() for i in want]
        assert prose == "".join(escape_prose(PARAS[i]) + "\n\n" for i in want)
        for i in want:  # exactly as the context builder writes a thought
            assert escape_prose(PARAS[i]) + inline(notes[i]) + "\n\n" in text
    assert any("[[keeper]]" in r["text"] for r in back)  # markers in prose are escaped

    kept = cache.read_text()
    assert tt.augment(tiny_lm, PARAS, {}, cache, batch=3) == written
    assert cache.read_text() == kept  # every note came from the cache: none written again


def test_lora_training_lowers_the_loss_and_leaves_the_base_model_alone(tiny_lm):
    recs = records(tiny_lm.tokenizer)
    before = tt.mean_loss(tiny_lm, recs)
    lora, stats = tt.train(tiny_lm, recs, steps=30, seed=0, lr=5e-3)
    after = tt.mean_loss(tiny_lm, recs, lora)
    assert after < before - 0.5, (before, after)
    assert stats["loss_last"] < stats["loss_first"]
    assert tt.mean_loss(tiny_lm, recs) == before  # detached: the shared model is untouched
    assert hooks(tiny_lm.model) == 0
    assert not any(p.requires_grad for p in tiny_lm.model.parameters())


def test_the_weighted_loss_marks_exactly_the_bubble_tokens(tiny_lm):
    recs = records(tiny_lm.tokenizer)
    tok = tiny_lm.tokenizer
    # no public way: the bubble mask and the weighted loss are train()'s internals, and
    # only a direct call shows exactly which tokens weigh more
    for r, inside in zip(recs, tt._bubble_mask(tiny_lm, recs, 384)):
        ids = tok(r["text"], add_special_tokens=False)["input_ids"]
        marked = tok.decode([i for i, m in zip(ids, inside[0].tolist()) if m])
        # each bubble with the blank line that leads back to prose
        assert marked == "".join(inline(NOTES[i]) + "\n\n"
                                 for i in range(r["first"], r["last"] + 1))
    x = torch.tensor([tok(recs[0]["text"], add_special_tokens=False)["input_ids"][-384:]])
    plain = tiny_lm.model(input_ids=x, labels=x).loss
    assert torch.allclose(tt._loss(tiny_lm.model, x, None), plain)
    assert torch.allclose(tt._loss(tiny_lm.model, x, torch.zeros_like(x, dtype=torch.float),
                                   10.0), plain, atol=1e-5)  # no bubble: the plain loss


def test_training_is_reproducible_and_resumes_from_its_checkpoint(tiny_lm, tmp_path):
    recs = records(tiny_lm.tokenizer, max_tokens=60)
    a, _ = tt.train(tiny_lm, recs, steps=6, seed=3, out=tmp_path, save_every=3)
    assert (tmp_path / "checkpoint" / "state.json").is_file()
    b, stats = tt.train(tiny_lm, recs, steps=6, seed=3, out=tmp_path, save_every=3)
    assert stats["resumed_at"] == 3  # picked up at the checkpoint, ended where a did
    c, _ = tt.train(tiny_lm, recs, steps=6, seed=4)
    for x, y, z in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.allclose(x, y, atol=1e-6)
    assert any(not torch.allclose(x, z) for x, z in zip(a.parameters(), c.parameters()))


def test_adapter_round_trips_and_refuses_foreign_or_damaged_files(tiny_lm, tmp_path):
    lora = LoRA.for_model(tiny_lm.model, rank=4, targets="all", seed=1)
    with torch.no_grad():
        for B in lora.B:
            B.normal_()
    folder = lora.save(tmp_path / "ad", tiny_lm, {"kind": "thoughts"})
    cfg = json.loads((folder / CONFIG).read_text())
    assert cfg["base_fingerprint"] == tiny_lm.fingerprint and cfg["rank"] == 4
    assert "model.layers.0.mlp.down_proj" in cfg["modules"]
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = tiny_lm.model(x).logits
        with lora.attached(tiny_lm.model):
            want = tiny_lm.model(x).logits
        back = LoRA.load(folder, tiny_lm)
        with back.attached(tiny_lm.model):
            got = tiny_lm.model(x).logits
            with pytest.raises(AdapterError, match="already attached"):
                with lora.attached(tiny_lm.model):
                    pass
        assert torch.equal(got, want) and not torch.allclose(want, base)
        assert torch.equal(tiny_lm.model(x).logits, base)  # detached again
    assert back.key == lora.key

    other = dataclasses.replace(tiny_lm, name="another", fingerprint="0123456789abcdef")
    with pytest.raises(AdapterError, match="trained for another model"):
        LoRA.load(folder, other)
    with pytest.raises(AdapterError, match="There is no adapter"):
        LoRA.load(tmp_path / "nowhere", tiny_lm)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="corrupt"):
        LoRA.load(folder, tiny_lm)
    (folder / CONFIG).write_text("{not json")
    with pytest.raises(AdapterError, match="unreadable"):
        LoRA.load(folder, tiny_lm)
    (folder / CONFIG).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AdapterError, match="not a Mnemosyne LoRA"):
        LoRA.load(folder, tiny_lm)


def test_bubble_measure_on_crafted_outputs():
    outputs = [f"{BEGIN}She fears the sea.{END}\n\nNext",   # well formed, at once
               f" \n{BEGIN} a {END}",                        # whitespace first is fine
               f"And then she left. {BEGIN}gone{END}",       # well formed, not at once
               f"{BEGIN}{END}", f"{BEGIN}   {END}",            # empty
               f"{BEGIN}never closed",                       # unclosed
               f"{END}{BEGIN}x{END}",                        # a stray END comes first
               f"{BEGIN}a{BEGIN}b{END}",                     # nested
               "plain prose, no bubble", ""]
    assert [tt.bubble(o) for o in outputs[:3]] == [(True, True), (True, True), (True, False)]
    assert not any(tt.bubble(o)[0] for o in outputs[3:])
    assert tt.summarize(outputs) == {"paragraphs": 10, "well_formed": 3, "immediate": 2,
                                     "share": 0.3, "immediate_share": 0.2}


def test_the_measure_sees_a_habit_learned_in_the_training_format(tiny_lm):
    """Train the tiny model hard on three paragraphs, then continue those paragraphs:
    the bubbles it learned show up as well-formed (the training text and the measure
    agree on where a bubble stands), and never before tuning."""
    paras = ["Rain on the glass.", "The lamp went out.", "Ada ran to the cliff."]
    recs = tt.build_records(paras, ["wet", "dark", "fear"], tiny_lm.tokenizer, 20)
    lora, _ = tt.train(tiny_lm, recs, steps=120, seed=0, lr=1e-2, rank=16, targets="all")
    before = tt.evaluate(tiny_lm, paras, None, max_new_tokens=10, batch=3)
    after = tt.evaluate(tiny_lm, paras, lora, max_new_tokens=10, batch=3)
    assert before["well_formed"] == 0
    assert after["immediate"] >= 2, after["samples"]


# -- self-commentary in a novel --------------------------------------------------------
def saved_adapter(lm, folder, **kw):
    lora = LoRA.for_model(lm.model, rank=2, seed=0)
    return lora.save(folder, lm, kw)


def fake_stream(pieces, seen):
    def stream(lm, ids, sampling, cancel=None, prefix=None, prefix_key=None,
               forward_context=None, result=None):
        # no public way: the adapter flags the model it is attached to (adapters.py,
        # _ATTACHED) and exposes no reader of the flag; hooks alone would not name it
        seen.append({"attached": getattr(lm.model, "_mnemosyne_lora", None),
                     "hooks": hooks(lm.model), "ids": list(ids), "key": prefix_key})
        for p in pieces:
            result.text += p
            yield p
        result.stop_reason = "eos"
    return stream


def test_self_mode_routes_inline_bubbles_with_the_adapter_on_only_for_that_novel(
        library, tiny_lm, tmp_path, monkeypatch):
    own = library.open(library.create("Self", "A keeper."))
    other = library.open(library.create("Prompted", "A sailor."))
    folder = saved_adapter(tiny_lm, tmp_path / "ad")
    own.thoughts.set_settings(mode="self", adapter=str(folder))
    assert own.thoughts.settings()["mode"] == "self"
    assert other.thoughts.settings()["mode"] == "prompt"
    seen = []
    monkeypatch.setattr(writer, "stream", fake_stream(
        [" She ran.", f"{BEGIN}she fears", f" the sea{END}", "\n\nThen calm."], seen))
    import engine.pipeline as novel_mod

    def no_prompt(*a, **k):
        raise AssertionError("self mode asks no summarising prompt")
    monkeypatch.setattr(novel_mod, "write_note", no_prompt)
    cid = own.chapters.add("One", "Start.")
    last = list(own.continue_chapter(cid))[-1]
    assert last.text == own.chapters.text(cid) == "Start. She ran.\n\nThen calm."
    notes = own.thoughts.list(cid)
    assert [n["text"] for n in notes] == ["she fears the sea"]
    assert own.chapters.text(cid)[:notes[0]["anchor"]] == "Start. She ran."
    assert seen[0]["attached"] and seen[0]["hooks"] > 0  # applied while it wrote
    assert hooks(tiny_lm.model) == 0  # and gone afterwards

    monkeypatch.setattr(novel_mod, "write_note", lambda *a, **k: "a prompted note")
    monkeypatch.setattr(writer, "stream", fake_stream([" He sailed."], seen))
    cid2 = other.chapters.add("One", "Start.")
    list(other.continue_chapter(cid2))
    assert not seen[1]["attached"] and seen[1]["hooks"] == 0  # never leaks
    assert seen[0]["key"] != seen[1]["key"]  # no key/value cache shared across modes
    assert [n["text"] for n in other.thoughts.list(cid2)] == ["a prompted note"]


def test_self_mode_reads_the_story_as_plain_text_not_in_a_chat(library, tiny_lm, tmp_path,
                                                               monkeypatch):
    """The thought adapter learned its inline notes on plain text: in self mode the
    context is framed raw, whatever the default frame (bench prose chose 'chat')."""
    import engine.pipeline as pipeline

    frames, build = [], pipeline.context.build

    def spy(*a, **k):
        frames.append(k.get("frame"))
        return build(*a, **k)
    monkeypatch.setattr(pipeline.context, "build", spy)
    monkeypatch.setattr(writer, "stream", fake_stream([" She ran."], []))
    monkeypatch.setattr(pipeline, "write_note", lambda *a, **k: "")
    own = library.open(library.create("Self", "A keeper."))
    own.thoughts.set_settings(mode="self", adapter=str(saved_adapter(tiny_lm, tmp_path / "ad")))
    other = library.open(library.create("Prompted", "A sailor."))
    for novel in (own, other):
        list(novel.continue_chapter(novel.chapters.add("One", "Start.")))
    assert frames == ["raw", None]  # None: the default frame


def test_self_mode_plan_first_opens_the_stream_with_a_note(novel, tiny_lm, tmp_path,
                                                            monkeypatch):
    novel.thoughts.set_settings(plan_first=True, mode="self",
                               adapter=str(saved_adapter(tiny_lm, tmp_path / "ad")))
    seen = []
    monkeypatch.setattr(writer, "stream", fake_stream(["she must find Ada", END, " Go."],
                                                      seen))
    cid = novel.chapters.add("One", "Start.")
    list(novel.continue_chapter(cid))
    begin = tiny_lm.tokenizer(BEGIN, add_special_tokens=False)["input_ids"]
    assert seen[0]["ids"][-len(begin):] == begin
    assert novel.chapters.text(cid) == "Start. Go."
    assert [(n["anchor"], n["text"]) for n in novel.thoughts.list(cid)] == [
        (len("Start."), "she must find Ada")]


def test_self_mode_refuses_a_missing_foreign_or_unknown_setting(novel, tiny_lm, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("MNEMOSYNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(NovelError, match="train thoughts"):
        novel.thoughts.set_settings(mode="self")  # no default adapter for this model
    with pytest.raises(NovelError, match="There is no adapter"):
        novel.thoughts.set_settings(mode="self", adapter=str(tmp_path / "nowhere"))
    foreign = dataclasses.replace(tiny_lm, name="another", fingerprint="0123456789abcdef")
    folder = saved_adapter(foreign, tmp_path / "foreign")
    with pytest.raises(NovelError, match="another model"):
        novel.thoughts.set_settings(mode="self", adapter=str(folder))
    with pytest.raises(UserError, match="Unknown thoughts mode"):
        novel.thoughts.set_settings(mode="dream")
    assert novel.thoughts.settings()["mode"] == "prompt"  # nothing was saved
    # the default place is where 'train thoughts' saves: found without a path
    saved_adapter(tiny_lm, tt.default_dir(tiny_lm))
    novel.thoughts.set_settings(mode="self")
    assert novel.thoughts.settings() == {"on": True, "plan_first": False, "mode": "self",
                                        "adapter": "", "every": "paragraph"}


def corpus(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: " + "the keeper watched the sea and counted the "
                       "ships that passed the point, one by one, until the light failed. "
                       * 2 for i in range(8))
    path = tmp_path / "book.txt"
    path.write_text(text)
    return path


def test_cli_trains_measures_and_evaluates_alone(tmp_path, capsys, monkeypatch):
    from engine.__main__ import main

    monkeypatch.setenv("MNEMOSYNE_CACHE", str(tmp_path / "cache"))
    out, book = tmp_path / "ad", corpus(tmp_path)
    args = ["train", "thoughts", "--model", "tiny", "--corpus", str(book), "--eval-tokens",
            "4", "--max-tokens", "200", "--json"]
    assert main(args + ["--paragraphs", "6", "--held-out", "0.34", "--steps", "3",
                        "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["eval"]["held_out"] == 2 and res["train"]["paragraphs"] == 4
    assert {"share", "well_formed"} <= set(res["eval"]["before"]) & set(res["eval"]["after"])
    assert res["train"]["steps"] == 3 and (out / WEIGHTS).is_file()
    lines = (out / tt.JSONL).read_text().splitlines()
    assert all(json.loads(line)["text"].count(BEGIN) == json.loads(line)["notes"]
               for line in lines)
    # --eval-only reuses the adapter's split: the same two held-out paragraphs
    assert main(args + ["--eval-only", "--adapter", str(out)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["eval"]["held_out"] == 2 and "after" in alone["eval"]
    assert main(args + ["--eval-only", "--adapter", str(tmp_path / "none")]) == 2
    assert "There is no adapter" in capsys.readouterr().err


def test_cli_write_self_commentary_without_adapter_says_how_to_get_one(tmp_path, capsys,
                                                                      monkeypatch):
    from engine.__main__ import main

    monkeypatch.setenv("MNEMOSYNE_CACHE", str(tmp_path / "cache"))
    proj = str(tmp_path / "p")
    assert main(["new", "--project", proj, "--title", "T"]) == 0
    assert main(["write", "--project", proj, "--model", "tiny", "--tokens", "3",
                 "--self-commentary"]) == 2
    assert "train thoughts" in capsys.readouterr().err


def test_full_mode_saves_a_tuned_model_that_self_mode_uses_without_adapter(
        tmp_path, capsys, monkeypatch):
    from engine.__main__ import main
    from engine.models import load

    monkeypatch.setenv("MNEMOSYNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "full"
    args = ["train", "thoughts", "--model", "tiny", "--corpus", str(corpus(tmp_path)),
            "--paragraphs", "6", "--held-out", "0.34", "--eval-tokens", "4", "--json"]
    assert main(args + ["--mode", "full", "--steps", "4", "--lr", "1e-3",
                        "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["out"] == str(out / "model") and res["train"]["loss_last"] is not None
    tuned = load(str(out / "model"))
    assert tt.tuned_in(tuned) and tt.adapter_for(tuned) is None
    with pytest.raises(AdapterError, match="train one"):
        tt.adapter_for(load("tiny"))  # the base model still needs one
    assert main(["train", "thoughts", "--model", str(out / "model"), "--corpus",
                 str(corpus(tmp_path)), "--eval-only", "--eval-tokens", "4", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["eval"]) >= {"model"}
