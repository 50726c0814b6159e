"""The Novel facade on the tiny model: projects, chapters, writing, history, import."""
from __future__ import annotations

import random

import threading

import pytest

from engine.novel import Library, Novel, NovelError
from engine.store import MAX_CHAPTER_CHARS, ProjectError
from engine.writer import Sampling


def run(gen):
    events = list(gen)
    return events, events[-1]


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "/etc", "x\\y", ".hidden", ""])
def test_bad_project_names_are_refused(library, name):
    before = sorted(p.name for p in library.root.iterdir())
    with pytest.raises(ProjectError):
        library.create("A Title", name=name) if name else library.create("", name="ok")
    assert sorted(p.name for p in library.root.iterdir()) == before
    assert not (library.root.parent / "x").exists()


def test_empty_title_and_duplicates(library):
    with pytest.raises(ProjectError, match="title is empty"):
        library.create("   ")
    name = library.create("Twice")
    with pytest.raises(ProjectError, match="already exists"):
        library.create("Twice")
    assert library.names() == [name]


def test_create_persists_bible_and_reopens(library, slot):
    name = library.create("Grey Eyes", "Elena hides a letter.", "Close third person.")
    again = Novel.open(library.root / name, slot)
    assert again.bible == {"title": "Grey Eyes", "premise": "Elena hides a letter.",
                           "style": "Close third person."}
    # no public way: the journal mode is a setting of the store's sqlite connection, which
    # no store method reports; a PRAGMA read is the only witness
    assert again.store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_chapters_add_rename_move_delete(novel):
    a = novel.chapters.add("One", "alpha beta")
    b = novel.chapters.add("Two")
    c = novel.chapters.add("")
    assert [ch["title"] for ch in novel.chapters.list()] == ["One", "Two", "Chapter 3"]
    novel.chapters.rename(b, "Storm")
    novel.chapters.move(c, -2)
    assert [ch["id"] for ch in novel.chapters.list()] == [c, a, b]
    assert novel.chapters.list()[1]["words"] == 2
    novel.chapters.delete(a)
    assert [ch["title"] for ch in novel.chapters.list()] == ["Chapter 3", "Storm"]
    assert [ch["position"] for ch in novel.chapters.list()] == [1, 2]
    with pytest.raises(ProjectError):
        novel.chapters.rename(b, "  ")


def test_continue_streams_saves_and_logs(novel):
    cid = novel.chapters.add("One", "The keeper climbed the stairs.")
    events, last = run(novel.continue_chapter(cid, Sampling(max_new_tokens=12, seed=3)))
    deltas = "".join(e.delta for e in events)
    assert last.done and last.result.new_tokens == 12 and deltas
    assert last.text == "The keeper climbed the stairs." + deltas
    assert novel.chapters.text(cid) == last.text
    log = novel.store.generation_log.list()
    assert len(log) == 1 and log[0]["status"] == "length" and log[0]["new_tokens"] == 12
    passages = [novel.store.passages.get(i) for i in novel.store.passages.ids()]
    (passage,) = [p for p in passages if p["author"] == "model"]
    assert last.text[passage["start"]:passage["end"]] == deltas


def test_same_seed_same_text_and_prefix_reuse_is_exact(novel, tiny_lm):
    cid = novel.chapters.add("One", "Rain on the glass.")
    _, first = run(novel.continue_chapter(cid, Sampling(max_new_tokens=10, seed=7)))
    novel.chapters.undo(cid)
    _, second = run(novel.continue_chapter(cid, Sampling(max_new_tokens=10, seed=7)))
    assert second.stats["reused_tokens"] > 0  # the unchanged prompt came from the cache
    assert first.text == second.text
    novel.prefix_cache = type(novel.prefix_cache)()  # no cache at all: still the same text
    novel.chapters.undo(cid)
    _, third = run(novel.continue_chapter(cid, Sampling(max_new_tokens=10, seed=7)))
    assert third.stats["reused_tokens"] == 0 and third.text == first.text


def test_stop_halts_within_one_token(novel, tiny_lm):
    from engine.writer import Result, stream

    cancel, result, at_stop = threading.Event(), Result(), None
    ids = tiny_lm.tokenizer("Opening.")["input_ids"]
    for _ in stream(tiny_lm, ids, Sampling(max_new_tokens=500, seed=1), cancel, result=result):
        if at_stop is None and result.new_tokens >= 3:
            at_stop = result.new_tokens
            cancel.set()
    assert result.stop_reason == "cancelled" and result.new_tokens == at_stop
    # Through the facade: Stop ends the passage, and what was written is kept.
    cid = novel.chapters.add("One", "Opening.")
    for ev in novel.continue_chapter(cid, Sampling(max_new_tokens=500, seed=1)):
        if ev.delta:
            novel.stop()
    assert ev.done and ev.status == "Stopped." and ev.result.new_tokens < 10
    assert novel.chapters.text(cid) == ev.text


def test_streamed_text_is_on_disk_before_the_end(novel, slot):
    cid = novel.chapters.add("One", "Opening.")
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=400, seed=1))
    import engine.pipeline as nv

    old, nv.AUTOSAVE_S = nv.AUTOSAVE_S, 0.0
    try:
        for i, ev in enumerate(gen):
            if i == 20:
                # Another process opening the project now sees the partial passage.
                other = Novel.open(novel.folder, slot)
                assert other.chapters.text(cid).startswith("Opening.")
                assert len(other.chapters.text(cid)) > len("Opening.")
                novel.stop()
    finally:
        nv.AUTOSAVE_S = old


def test_retry_replaces_last_passage_and_keeps_history(novel):
    cid = novel.chapters.add("One", "Opening.")
    _, first = run(novel.continue_chapter(cid, Sampling(max_new_tokens=8, seed=1)))
    _, again = run(novel.retry(cid, Sampling(max_new_tokens=8, seed=2)))
    assert again.text.startswith("Opening.") and again.text != first.text
    assert novel.chapters.undo(cid) == "Opening."
    assert novel.chapters.redo(cid) == again.text
    # The replaced passage is still in the history (nothing is ever lost): a version
    # beside the retried one.
    texts = [novel.chapters.revision(v["id"])["text"] for v in novel.chapters.versions(cid)]
    assert first.text in texts and again.text in texts
    novel.chapters.save(cid, "Writer's own words.")
    with pytest.raises(NovelError, match="not written by the model"):
        list(novel.retry(cid))


def test_undo_redo_walk_history_and_typing_coalesces(novel):
    cid = novel.chapters.add("One", "")
    novel.chapters.save(cid, "a")
    novel.chapters.save(cid, "ab")
    novel.chapters.save(cid, "abc")  # rapid typing: one undo step
    assert novel.chapters.undo(cid) == ""
    assert novel.chapters.redo(cid) == "abc"
    assert novel.chapters.can_undo_redo(cid) == (True, False)


def test_huge_paste_is_refused_and_loses_nothing(novel):
    cid = novel.chapters.add("One", "Precious words.")
    with pytest.raises(ProjectError, match="too long"):
        novel.chapters.save(cid, "x" * (10 * 1024 * 1024))
    assert novel.chapters.text(cid) == "Precious words."
    assert novel.store.revisions.count(cid) == 1
    assert MAX_CHAPTER_CHARS < 10 * 1024 * 1024


def test_busy_novel_refuses_a_second_continue_and_edits(novel):
    cid = novel.chapters.add("One", "Opening.")
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=50, seed=1))
    next(gen)
    with pytest.raises(NovelError, match="already writing"):
        next(novel.continue_chapter(cid))
    with pytest.raises(NovelError, match="press Stop"):
        novel.chapters.save(cid, "edit while writing")
    novel.stop()
    list(gen)
    novel.chapters.save(cid, "now it works")


def test_model_that_emits_nothing_says_so(novel, tiny_lm):
    cid = novel.chapters.add("One", "Opening.")

    class Mute(type(tiny_lm)):
        @property
        def eos_ids(self):  # every token ends the passage at once
            return set(range(self.model.config.vocab_size))

    from engine.models import ModelSlot

    novel.model = ModelSlot.ready(Mute.wrap(tiny_lm.model, tiny_lm.tokenizer, "mute"))
    _, last = run(novel.continue_chapter(cid, Sampling(max_new_tokens=5, seed=1)))
    assert "no text" in last.status
    assert novel.chapters.text(cid) == "Opening."
    assert novel.chapters.can_undo_redo(cid) == (False, False)  # no empty undo step left behind


def test_background_job_finishes_and_saves_without_a_watcher(novel):
    cid = novel.chapters.add("One", "Opening.")
    job = novel.start(cid, Sampling(max_new_tokens=15, seed=4))
    assert job.done.wait(60)  # nobody iterates: it still runs to the end (a closed tab)
    assert job.latest.done and novel.chapters.text(cid) == job.latest.text
    assert len(novel.chapters.text(cid)) > len("Opening.")
    assert not novel.busy


def test_import_splits_chapters_and_unwraps(novel, tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("Title page\n\nChapter 1\n\n" + "\n".join(["word " * 12] * 30) +
                 "\n\nChapter 2\n\nSecond chapter text.\n", encoding="utf-8")
    ids = novel.chapters.import_files([f])
    chapters = novel.chapters.list()
    assert [c["title"] for c in chapters] == ["Chapter 1", "Chapter 2"] and len(ids) == 2
    assert "\n" not in novel.chapters.text(ids[0]).strip()  # hard-wrapped lines were joined
    assert novel.chapters.text(ids[1]) == "Second chapter text."


@pytest.mark.parametrize("content,message", [
    # (Windows-1252 prose such as b"caf\xe9" now imports: test_hardening_cli)
    (bytes(random.Random(0).randrange(128, 256) for _ in range(400)), "not UTF-8"),
    (b"\x00\x01\x02binary" * 50, "binary"),
])
def test_bad_imports_change_nothing(novel, tmp_path, content, message):
    good = tmp_path / "good.txt"
    good.write_text("Chapter 1\n\nFine.\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(ProjectError, match=message):
        novel.chapters.import_files([good, bad])
    assert novel.chapters.list() == []


def test_import_refuses_other_file_types(novel, tmp_path):
    f = tmp_path / "book.pdf"
    f.write_bytes(b"%PDF-1.4")
    with pytest.raises(ProjectError, match="only .txt and .md"):
        novel.chapters.import_files([f])


def test_export_markdown_and_text(novel):
    novel.chapters.add("One", "First words.")
    novel.chapters.add("Two", "Second words.")
    md = novel.chapters.export("md")
    assert md.startswith("# The Lighthouse") and "## Two\n\nSecond words." in md
    txt = novel.chapters.export("txt")
    assert "The Lighthouse\n==============" in txt and "#" not in txt
    with pytest.raises(ValueError):
        novel.chapters.export("pdf")


def test_library_shares_one_novel_between_callers(library):
    name = library.create("Shared")
    assert library.open(name) is library.open(name)
    stop_seen = threading.Event()
    library.open(name).stop = lambda: stop_seen.set()
    library.open(name).stop()
    assert stop_seen.is_set()


def test_a_crash_mid_transaction_leaves_a_project_that_opens(novel, slot):
    cid = novel.chapters.add("One", "Safe text.")
    with pytest.raises(RuntimeError):
        with novel.store.tx() as db:
            db["chapters"].update(cid, {"title": "half-written"})
            raise RuntimeError("power cut")
    again = Novel.open(novel.folder, slot)
    assert again.chapters.list()[0]["title"] == "One" and again.chapters.text(cid) == "Safe text."


def test_library_lists_only_novels(library, tmp_path):
    (library.root / "stray-folder").mkdir()
    name = library.create("Real")
    assert library.names() == [name]
    with pytest.raises(ProjectError, match="No novel"):
        Library(library.root, library.model).open("stray-folder")


def test_import_replaces_only_an_untouched_blank_first_chapter(library, novel, tmp_path):
    """A new novel opens with an empty "Chapter 1": importing a book should not leave it
    standing before the book's own chapter 1. A chapter that ever held text stays."""
    f = tmp_path / "book.txt"
    f.write_text("Chapter 1\n\nFirst.\n\nChapter 2\n\nSecond.\n", encoding="utf-8")
    novel.chapters.add("Chapter 1")
    ids = novel.chapters.import_files([f])
    assert [c["id"] for c in novel.chapters.list()] == ids
    assert [novel.chapters.text(i) for i in ids] == ["First.", "Second."]

    other = library.open(library.create("Other", "", ""))
    cid = other.chapters.add("Chapter 1")
    other.chapters.save(cid, "A draft.")
    other.chapters.undo(cid)  # blank again, but the draft is one Redo away
    other.chapters.import_files([f])
    assert [other.chapters.text(c["id"]) for c in other.chapters.list()] == ["", "First.", "Second."]
