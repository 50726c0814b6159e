"""The context builder: the receipt is exactly the prompt, and the budget is honest."""
from __future__ import annotations

from engine import context

BIBLE = {"title": "Grey Eyes", "premise": "Elena hides a letter.", "style": "Spare."}


def concat_receipt(tok, receipt):
    ids = []
    for b in receipt.blocks:
        ids += tok(b["text"], add_special_tokens=False)["input_ids"]
    return ids


def test_receipt_lists_exactly_the_prompt(tiny_lm):
    tok = tiny_lm.tokenizer
    ids, r = context.build(tok, 4096, BIBLE, "She folded the letter twice.", "Chapter 2",
                           pins=[("memory 1", "Elena's eyes are grey.")],
                           recalled=[("passage 4", "The letter was from Paris.", "similar 0.81")],
                           thoughts=[("thought 2", "She must not be seen.")])
    assert [b["kind"] for b in r.blocks] == ["bible", "pinned", "recalled", "thought", "tail"]
    assert sum(b["tokens"] for b in r.blocks) == len(ids) == r.total_tokens
    assert concat_receipt(tok, r) == ids  # each block's text re-encodes to its ids
    assert tok.decode(ids).endswith("She folded the letter twice.")
    assert r.dropped == []


def test_over_budget_drops_lowest_priority_and_says_so(tiny_lm):
    tok = tiny_lm.tokenizer
    tail = "word " * 400
    ids, r = context.build(tok, 600, BIBLE, tail, pins=[("memory 1", "Never forget this.")],
                           recalled=[("passage 9", "x " * 300, "similar 0.5")])
    assert len(ids) <= 600
    kinds = [b["kind"] for b in r.blocks]
    assert "pinned" in kinds and "bible" in kinds and "recalled" not in kinds
    dropped = {d["kind"]: d for d in r.dropped}
    assert "recalled" in dropped and "tail" in dropped  # older text is cut, and said so
    assert dropped["tail"]["tokens"] + r.blocks[-1]["tokens"] == len(tok(tail)["input_ids"])
    assert concat_receipt(tok, r) == ids


def test_pins_survive_unless_they_alone_exceed_the_budget(tiny_lm):
    tok = tiny_lm.tokenizer
    pins = [(f"memory {i}", f"Fact number {i} matters.") for i in range(3)]
    ids, r = context.build(tok, 200, BIBLE, "tail " * 500, pins=pins)
    assert [b["label"] for b in r.blocks if b["kind"] == "pinned"] == [p[0] for p in pins]
    assert not r.warnings
    big = [(f"memory {i}", "long fact " * 30) for i in range(3)]
    ids, r = context.build(tok, 700, BIBLE, "tail", pins=big)
    assert any(d["kind"] == "pinned" for d in r.dropped)
    assert r.warnings and "Pinned memories alone exceed" in r.warnings[0]
    assert len(ids) <= 700


def test_empty_chapter_still_builds(tiny_lm):
    ids, r = context.build(tiny_lm.tokenizer, 512, BIBLE, "", "Chapter 1")
    assert ids and r.blocks[-1]["kind"] == "tail"
    assert "Chapter 1" in r.blocks[-1]["text"]


def test_encode_reads_a_long_text_once_and_hands_out_copies(tiny_lm):
    from engine.context import _encode_long, encode

    tok = tiny_lm.tokenizer
    book = "The keeper counted ships. " * 1000  # a whole book is re-read every Continue
    direct = list(tok(book, add_special_tokens=False)["input_ids"])
    first = encode(tok, book)
    hits = _encode_long.cache_info().hits
    first.append(-1)  # a caller's change must not reach the cache
    assert encode(tok, book) == direct and _encode_long.cache_info().hits == hits + 1
    assert encode(tok, "short") == list(tok("short", add_special_tokens=False)["input_ids"])
    assert encode(tok, "") == []
