"""Issue 13, the writing side: length limits that agree, one writer per novel across
processes, all-or-nothing import, and database errors said in one line."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from engine import writer
from engine_helpers import fake_stream
from engine.models import ModelSlot
from engine.novel import Novel, NovelError
from engine.pipeline import LIMIT_REACHED
from engine.store import MAX_CHAPTER_CHARS, ProjectError, Store
from engine.writer import Sampling

from conftest import ROOT


def no_model(spec):
    raise AssertionError("the model was loaded")


# -- 4. limits agree -------------------------------------------------------------------
def test_a_full_chapter_is_refused_at_once_before_any_model_loads(novel):
    cid = novel.chapters.add("Full", "")
    novel.chapters.save(cid, "x" * MAX_CHAPTER_CHARS)  # save accepts exactly the limit
    novel.model = ModelSlot(loader=no_model)
    revisions = novel.store.revisions.count(cid)
    t0 = time.perf_counter()
    with pytest.raises(NovelError, match="length limit"):
        next(novel.continue_chapter(cid))
    with pytest.raises(NovelError, match="length limit"):
        next(novel.continue_chapter(cid, prompt="more"))
    assert time.perf_counter() - t0 < 5
    small = novel.chapters.add("Two", "x" * (MAX_CHAPTER_CHARS - 100))
    with pytest.raises(NovelError, match="length limit"):  # no room left for a passage
        next(novel.continue_chapter(small))
    three = novel.chapters.add("Three", "x" * (MAX_CHAPTER_CHARS - 1000))
    with pytest.raises(NovelError, match="with the prompt"):
        next(novel.continue_chapter(three, prompt="y" * 2000))
    # no refusal saved a revision (each new chapter holds just its first one)
    assert [novel.store.revisions.count(c) for c in (cid, small, three)] == [revisions, 1, 1]
    assert novel.store.generation_log.list() == []
    assert not novel.busy and novel.store.lock_writer()  # nothing left locked
    novel.store.unlock_writer()


def test_streamed_text_stops_at_the_chapter_limit(novel, monkeypatch):
    base = "x" * (MAX_CHAPTER_CHARS - 500)
    cid = novel.chapters.add("Nearly full", base)
    novel.thoughts.set_settings(on=False)
    monkeypatch.setattr(writer, "stream", fake_stream([" word" * 40] * 10))
    last = list(novel.continue_chapter(cid))[-1]
    assert len(novel.chapters.text(cid)) == MAX_CHAPTER_CHARS == len(last.text)
    assert last.status == LIMIT_REACHED and last.stats["stop_reason"] == "limit"
    assert [r["status"] for r in novel.store.generation_log.list()] == ["limit"]


# -- 5. one writer per novel ---------------------------------------------------------------
def test_a_second_novel_object_cannot_write_while_the_first_does(novel, slot):
    cid = novel.chapters.add("One", "Opening.")
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=50, seed=1))
    next(gen)
    other = Novel.open(novel.folder, slot)
    revisions = other.store.revisions.count(cid)
    for attempt in (lambda: next(other.continue_chapter(cid)),
                    lambda: next(other.retry(cid)),
                    lambda: other.start(cid)):
        with pytest.raises(NovelError, match="being written by another process"):
            attempt()
    assert other.store.revisions.count(cid) == revisions
    assert other.chapters.text(cid) == novel.chapters.text(cid)  # Retry did not undo anything
    novel.stop()
    list(gen)
    last = list(other.continue_chapter(cid, Sampling(max_new_tokens=3, seed=1)))[-1]
    assert last.done  # the lock went with the first writer's passage
    other.close()


SECOND_WRITER = """
import json, sys
from engine.novel import Novel, NovelError
n = Novel.open(sys.argv[1])
try:
    next(n.continue_chapter(int(sys.argv[2])))
    print(json.dumps("started"))
except NovelError as e:
    print(json.dumps(str(e)))
"""


def test_a_second_process_is_refused_at_once(novel):
    cid = novel.chapters.add("One", "Opening.")
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=50, seed=1))
    next(gen)
    try:
        p = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(novel.folder), str(cid)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        novel.stop()
        list(gen)
    assert json.loads(p.stdout.strip().splitlines()[-1]) == (
        "This novel is being written by another process; wait for it to finish or stop it.")


# -- 8. import is all or nothing ------------------------------------------------------------
IMPORT_KILLED = """
import os, signal, sys
from engine.novel import Novel
n = Novel.open(sys.argv[1])
def progress(items):
    for i, item in enumerate(items):
        if i == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item
n.chapters.import_files([sys.argv[2]], progress=progress)
"""


def book(tmp_path, n=4):
    f = tmp_path / "book.txt"
    f.write_text("".join(f"Chapter {i}\n\nText of chapter {i}.\n\n" for i in range(1, n + 1)),
                 encoding="utf-8")
    return f


def test_a_kill_mid_import_leaves_nothing(novel, tmp_path):
    keep = novel.chapters.add("Mine", "My own chapter.")
    p = subprocess.run([sys.executable, "-c", IMPORT_KILLED, str(novel.folder),
                        str(book(tmp_path))], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -9, p.stderr
    again = Novel.open(novel.folder, novel.model)
    assert [c["id"] for c in again.chapters.list()] == [keep]
    again.close()


def test_a_failed_import_adds_nothing_and_keeps_the_blank_chapter(novel, tmp_path):
    blank = novel.chapters.add("Chapter 1")

    def progress(items):
        for i, item in enumerate(items):
            if i == 2:
                raise KeyboardInterrupt  # the writer closed the page mid-import
            yield item

    with pytest.raises(KeyboardInterrupt):
        novel.chapters.import_files([book(tmp_path)], progress=progress)
    assert [c["id"] for c in novel.chapters.list()] == [blank]
    ids = novel.chapters.import_files([book(tmp_path)])
    assert [c["id"] for c in novel.chapters.list()] == ids and len(ids) == 4


# -- 9. store hygiene -----------------------------------------------------------------------
def test_a_read_only_database_says_so_in_one_line(novel, tmp_path):
    cid = novel.chapters.add("One", "Safe.")
    # no public way: a fault injected under the store (what a read-only file does to
    # writes), so a raw PRAGMA on its connection
    novel.store.db.execute("PRAGMA query_only=ON")
    try:
        for write in (lambda: novel.chapters.save(cid, "Safe. More."),
                      lambda: novel.memories.add("A fact."),
                      lambda: novel.chapters.import_files([book(tmp_path)]),
                      lambda: novel.chapters.delete(cid)):
            with pytest.raises(ProjectError, match="read-only") as err:
                write()
            assert "Nothing was saved" in str(err.value) and "\n" not in str(err.value)
    finally:
        novel.store.db.execute("PRAGMA query_only=OFF")
    assert novel.chapters.text(cid) == "Safe." and len(novel.chapters.list()) == 1
    novel.chapters.save(cid, "Safe. Now writable.")  # and the store still works


def test_a_full_disk_says_so_and_keeps_the_novel_whole(novel, tmp_path):
    cid = novel.chapters.add("One", "Safe.")
    # no public way: a full disk is simulated under the store, by capping the database
    # file's pages on its connection
    db = novel.store.db
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0] + 2}")
    big = tmp_path / "big.txt"
    big.write_text("Chapter 1\n\n" + "A long sentence of the book. " * 20000, encoding="utf-8")
    with pytest.raises(ProjectError, match="disk is full"):
        novel.chapters.import_files([big])
    with pytest.raises(ProjectError, match="disk is full"):
        novel.chapters.save(cid, "Safe. " + "More words. " * 20000)
    db.execute("PRAGMA max_page_count=1073741823")
    assert [c["id"] for c in novel.chapters.list()] == [cid] and novel.chapters.text(cid) == "Safe."


def test_rows_left_running_by_a_killed_process_are_marked_interrupted(novel, slot):
    cid = novel.chapters.add("One", "Opening.")
    log = novel.store.log_generation(chapter_id=cid, revision_id=novel.chapters.head(cid),
                                     model="m", params={}, receipt={}, prompt_tokens=0,
                                     new_tokens=0, seconds=0.0, status="running")
    assert novel.store.lock_writer()  # a live writer elsewhere: its row is left alone
    Store.open(novel.folder).close()
    assert [r["status"] for r in novel.store.generation_log.list()] == ["running"]
    novel.store.unlock_writer()  # the writer died
    Store.open(novel.folder).close()
    rows = novel.store.generation_log.list()
    assert [(r["id"], r["status"]) for r in rows] == [(log, "interrupted")]
