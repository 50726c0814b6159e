"""Semantic memory: pins, recall by similarity, association tiers, and the receipt
checked against the real prompt ids. Uses the bundled MiniLM (loaded once)."""
from __future__ import annotations

import json

import pytest

from engine.memory import semantic
from engine.novel import NovelError

FACT = "Elena's eyes are grey as slate, and she never learned to swim."
FILLER = ("The market was loud with traders selling copper pots and bolts of cloth. "
          "Carts rattled over the cobbles while the bell of the town hall rang noon. ")


def _book(novel, cue="At the shore Elena hesitated; she had never learned to swim and the "
                     "water frightened her."):
    """An old chapter holding the fact amid filler, and a new chapter whose end needs it."""
    novel.store.add_chapter("Old days", FILLER * 3 + FACT + " " + FILLER * 3, action="import")
    cid = novel.chapters.add("The crossing", "")
    novel.chapters.save(cid, FILLER * 2 + cue)
    return cid


def _tok(novel):
    return novel.model.get().tokenizer


def _encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chunks_cover_the_text_in_bounded_pieces():
    text = ("One. Two is longer here! " * 40) + "x" * 900 + " tail without a stop"
    spans = semantic.chunks(text, 200)
    assert all(0 < e - s <= 200 for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    covered = "".join(text[s:e] for s, e in spans)
    assert covered.replace(" ", "") == text.replace(" ", "")


def test_recall_brings_back_a_fact_far_outside_the_window(novel):
    cid = _book(novel)
    ids, receipt = novel.build_context(cid, budget=1500)
    prompt = _tok(novel).decode(ids)
    recalled = [b for b in receipt["blocks"] if b["kind"] == "recalled"]
    assert recalled, receipt
    assert "grey as slate" in prompt
    top = max(recalled, key=lambda b: b["score"])
    assert FACT in top["text"] and top["key"].startswith("passage:")
    assert top["score"] > 0.3 and "similar" in top["why"]
    # The same prompt with recall switched off has no trace of it.
    novel.memories.set_settings(enabled=False)
    ids, receipt = novel.build_context(cid, budget=1500)
    assert "grey as slate" not in _tok(novel).decode(ids)
    assert not [b for b in receipt["blocks"] if b["kind"] in ("recalled", "associated")]


def test_text_edited_out_of_the_book_is_not_recalled(novel):
    cid = _book(novel)
    old = novel.chapters.id(1)
    assert any(FACT in h.text for h in novel.memories.semantic.recall(novel.chapters.text(cid)))
    novel.chapters.save(old, novel.chapters.text(old).replace(FACT, "She liked the sea."))
    assert not any(FACT in h.text for h in novel.memories.semantic.recall(novel.chapters.text(cid)))


def test_receipt_lists_exactly_the_prompt_ids(novel):
    cid = novel.chapters.add("The crossing", "")
    novel.memories.set_settings(k=1)  # one similar hit; its link comes in as tier 1
    pin = novel.memories.add("The lighthouse lamp is green.", pin=True)
    a = novel.memories.add("Elena keeps a slate-grey stone from the swimming lesson she fled.")
    b = novel.memories.add("The stone came from her brother Tomas.")
    novel.memories.link(a, b)
    novel.chapters.save(cid, FILLER * 8 + "At the shore Elena hesitated, afraid of the water.")
    tok = _tok(novel)
    ids, receipt = novel.build_context(cid, budget=1000)
    kinds = [bl["kind"] for bl in receipt["blocks"]]
    assert kinds[0] == "bible" and kinds[1] == "pinned" and kinds[-1] == "tail"
    assert "associated" in kinds and "recalled" in kinds
    pos = 0
    for bl in receipt["blocks"]:
        assert bl["start"] == pos
        piece = ids[pos:pos + bl["tokens"]]
        if bl["kind"] == "tail":
            assert tok.decode(piece) == bl["text"]
        else:
            assert piece == _encode(tok, bl["text"]), bl["label"]
        pos += bl["tokens"]
    assert pos == len(ids) == receipt["total_tokens"] <= 1000
    assert any(d["kind"] == "tail" for d in receipt["dropped"])  # the tail was cut
    # A pin is labelled by the start of its text, as the writer wrote it.
    assert "“The lighthouse lamp is green.”" in [bl["label"] for bl in receipt["blocks"]]
    assoc = [bl for bl in receipt["blocks"] if bl["kind"] == "associated"]
    pair = {f"memory:{a}", f"memory:{b}"}
    assert any(bl["key"] in pair and bl["via"] in pair - {bl["key"]} and bl["tier"] == 1
               for bl in assoc), \
        [(bl["kind"], bl["label"], bl["why"]) for bl in receipt["blocks"]]


def test_overflow_drops_lowest_priority_never_pins(novel):
    cid = _book(novel)
    pins = [novel.memories.add(f"Pinned fact number {i}: the tower has {i} windows.", pin=True)
            for i in range(3)]
    for i in range(12):
        novel.memories.add(f"Elena was afraid of the deep water, memory {i}, near the shore.")
    tok = _tok(novel)
    pin_tokens = sum(len(_encode(tok, f"[Remember: {novel.memories.get(p)['text']}]\n"))
                     for p in pins)
    ids, receipt = novel.build_context(cid, budget=pin_tokens + 120)
    labels = [bl["label"] for bl in receipt["blocks"]]
    assert all(f"“{novel.memories.get(p)['text']}”" in labels for p in pins)
    assert not [d for d in receipt["dropped"] if d["kind"] == "pinned"]
    assert any(d["kind"] in ("recalled", "associated", "tail", "bible")
               for d in receipt["dropped"])
    assert len(ids) <= pin_tokens + 120
    # Pins alone over budget: some pins go, and the writer is told.
    ids, receipt = novel.build_context(cid, budget=pin_tokens - 5)
    assert [d for d in receipt["dropped"] if d["kind"] == "pinned"]
    assert any("Pinned memories alone exceed" in w for w in receipt["warnings"])
    assert len(ids) <= pin_tokens - 5


def test_association_tiers_follow_links_to_the_configured_depth(novel):
    cid = novel.chapters.add("Now", "")
    novel.chapters.save(cid, "Captain Harrow stood on the deck of his ship in the storm.")
    root = novel.memories.add("Captain Harrow commands the ship called the Morning Gull.")
    tier1 = [novel.memories.add(f"Quartermaster note {i}: rope, tar and biscuits.")
             for i in range(12)]
    tier2 = [novel.memories.add(f"Ledger line {i}: paid in silver.") for i in range(5)]
    for m in tier1:
        novel.memories.link(root, m)
    for m in tier2:
        novel.memories.link(tier1[0], m)
    novel.memories.set_settings(k=1, depth=2, min_score=0.3)
    hits = novel.memories.semantic.recall("Captain Harrow stood on the deck of his ship.",
                                 novel.settings.get("recall"))
    by_tier = {t: [h for h in hits if h.tier == t] for t in (0, 1, 2)}
    assert [h.key for h in by_tier[0]] == [f"memory:{root}"]
    assert len(by_tier[1]) == 10 and all(h.via == f"memory:{root}" for h in by_tier[1])
    assert all(h.link == "link" and "writer's link" in h.why for h in by_tier[1])
    assert 1 <= len(by_tier[2]) <= 3 * 10
    assert all(h.via in {x.key for x in by_tier[1]} for h in by_tier[2])
    assert len([h for h in by_tier[2] if h.via == f"memory:{tier1[0]}"]) <= 3
    novel.memories.set_settings(depth=1)
    hits = novel.memories.semantic.recall("Captain Harrow stood on the deck of his ship.",
                                 novel.settings.get("recall"))
    assert max(h.tier for h in hits) == 1


def test_cooccurrence_links_items_that_share_names(novel):
    novel.store.add_chapter("One", "Mirela walked to the mill with Oskar. The mill wheel "
                                   "turned slowly in the brown river.", action="import")
    m = novel.memories.add("Oskar is Mirela's cousin.")
    novel.memories.semantic.sync()
    near = {k for k, how, _ in novel.memories.semantic.neighbours(f"memory:{m}", 10)}
    assert "passage:1#0" in near


def test_incremental_updates_edits_and_rebuild(novel, tmp_path):
    mem = novel.memories.semantic
    a = novel.memories.add("The bell tower leans to the east.")
    assert mem.sync()["embedded"] == 1
    assert mem.sync()["changed"] == 0  # nothing new: no embedding at all
    novel.memories.edit(a, "The bell tower was struck by lightning in spring.")
    assert mem.sync()["embedded"] == 1
    assert mem.search("lightning storm hit the tower", 1)[0][0] == f"memory:{a}"
    b = novel.memories.add("Bread is baked at dawn.")
    novel.memories.delete(b)
    mem.sync()
    assert mem.size == 1
    # A damaged index file is rebuilt from the database on the next open.
    (mem.dir / "index.faiss").write_bytes(b"garbage")
    fresh = semantic.SemanticMemory(novel.store)
    stats = fresh.sync()
    assert "rebuilding" in stats["rebuilt"] and fresh.size == 1
    # An index stamped by another embedder is stale.
    meta = json.loads((mem.dir / "meta.json").read_text())
    meta["embedder"] = "another-model"
    (mem.dir / "meta.json").write_text(json.dumps(meta))
    stats = semantic.SemanticMemory(novel.store).sync()
    assert "another embedder" in stats["rebuilt"]
    assert novel.memories.rebuild()["items"] == 1


def test_a_big_backlog_is_embedded_in_batches_in_the_background(novel):
    import time

    mem = novel.memories.semantic
    for i in range(7):
        novel.memories.add(f"Backlog fact {i}: the mill has {i} sails.")
    stats = mem.sync(limit=2)
    assert stats["embedded"] == 2 and stats["pending"] == 5
    assert mem.sync(limit=2)["pending"] == 3  # resumes where it stopped
    mem.sync_limit = 1
    mem.search("sails of the mill")  # starts the background catch-up
    deadline = time.time() + 60
    while mem.pending and time.time() < deadline:  # each of its syncs updates last_sync
        time.sleep(0.1)
    again = mem.sync()
    assert again["pending"] == 0 and again["changed"] == 0  # the thread embedded them all
    assert mem.size == 7


def test_pin_sentence_unpin_and_delete(novel):
    cid = novel.chapters.add("One", "")
    novel.chapters.save(cid, "The door was red. Nobody had opened it in years.")
    mid = novel.memories.pin_sentence("The door was red.", chapter_id=cid)
    row = novel.memories.get(mid)
    assert row["pinned"] == 1 and row["kind"] == "manuscript" and row["source"] == f"chapter:{cid}"
    with pytest.raises(NovelError):
        novel.memories.pin_sentence("The door was blue.", chapter_id=cid)
    assert novel.memories.pin_sentence("The door was red.", chapter_id=cid) == mid
    novel.memories.unpin(mid)
    assert novel.memories.get(mid)["pinned"] == 0
    other = novel.memories.add("A second fact.")
    novel.memories.link(mid, other)
    assert novel.store.associations.neighbours(f"memory:{other}", 10) != []
    novel.memories.delete(mid)
    for key in (f"memory:{mid}", f"memory:{other}"):
        assert novel.store.associations.neighbours(key, 10) == []
    with pytest.raises(NovelError):
        novel.memories.pin(mid)
    with pytest.raises(NovelError):
        novel.memories.link(other, 999)


def test_accepted_passage_goes_into_semantic_memory(novel):
    from engine.writer import Sampling

    cid = novel.chapters.add("One", "")
    novel.chapters.save(cid, "The keeper lit the lamp.")
    before = novel.memories.semantic.size
    for _ in novel.continue_chapter(cid, Sampling(max_new_tokens=12, seed=1)):
        pass
    pid = max(novel.store.passages.ids())
    assert novel.memories.semantic.last_sync.get("embedded", 0) >= 1  # the hook ran, not a lazy sync
    assert novel.memories.semantic.size > before
    assert novel.memories.semantic.text_of(f"passage:{pid}#0")


def test_schema_migrates_from_version_1(tmp_path):
    from engine.store import SCHEMA_VERSION, Store

    st = Store.create(tmp_path / "p")
    # no public way: the store is taken back to schema 1 (and its version read) on its
    # sqlite connection; no store method drops a table or reports the schema version
    st.db.execute("DROP TABLE associations")
    st.db.execute("PRAGMA user_version=1")
    st.close()
    st = Store.open(tmp_path / "p")
    assert st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "associations" in st.db.table_names()


def test_continuity_bench_smoke(capsys):
    from engine.__main__ import main

    rc = main(["bench", "continuity", "--model", "tiny", "--facts", "2", "--filler-chapters",
               "1", "--sizes", "300", "--queries", "2", "--gen-tokens", "2", "--budget",
               "2000", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cond = report["continuity"]["conditions"]
    assert cond["none"]["fact_in_prompt"] == "0/2"       # far outside the window
    assert cond["pins"]["fact_in_prompt"] == "2/2"
    assert cond["recall"]["fact_in_prompt"] != "0/2"     # found in the first chapter
    assert report["continuity"]["book_tokens"] > 2000
    lat = report["latency"]["300"]
    assert lat["recall_ms_median"] > 0 and lat["recalled_items_mean"] > 1
