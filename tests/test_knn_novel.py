"""kNN memory inside the Novel: settings per novel, Continue reads the store, the
store follows accepted passages, untrustworthy files are rebuilt on open."""
import re
from contextlib import contextmanager

import numpy as np
import pytest

from engine.context import Receipt
from engine.memory import attention
from engine.memory.knn import KNNStore, store_folder
from engine.errors import UserError
from engine.novel import Library, NovelError
from engine.writer import Sampling

OPENING = ("The lighthouse keeper Orrin Vale counted ships at dusk. His sister Maelis "
           "mended nets below the cliff and sang about the drowned bells of Kestrow. ") * 4


@pytest.fixture
def book(novel):
    cid = novel.chapters.add("One", OPENING)
    novel.knn.set_settings(True, "1,3", 4)
    return novel, cid


@pytest.fixture
def reads(monkeypatch):
    """Every knn_memory block a Continue enters: the read state (searches made)."""
    states = []
    real = attention.knn_memory

    @contextmanager
    def spy(*a, **kw):
        with real(*a, **kw) as st:
            states.append(st)
            yield st
    monkeypatch.setattr(attention, "knn_memory", spy)
    return states


def _manuscript_tokens(novel):
    """Tokens the store must hold: the prose with its margin notes inline."""
    return len(novel.model.get().tokenizer(novel.chapters.memory_book(),
                                           add_special_tokens=False).input_ids)


def test_settings_roundtrip_and_validation(novel):
    s = novel.knn.settings()
    assert s["on"] is False and s["layers"] and s["k"] >= 1
    s = novel.knn.set_settings(True, "1-2", 8)
    assert s == {"on": True, "layers": [1, 2], "k": 8, "depth": 4}
    assert novel.knn.settings()["layers"] == [1, 2]
    with pytest.raises(UserError, match="0..3"):
        novel.knn.set_settings(True, "7", 8)  # the tiny model has 4 layers
    with pytest.raises(UserError, match="not a layer"):
        novel.knn.set_settings(True, "two", 8)
    with pytest.raises(UserError, match="must lie in 1..1,024"):
        novel.knn.set_settings(True, k=5000)
    assert novel.knn.settings()["layers"] == [1, 2]  # nothing of a refused change saved
    assert novel.knn.set_settings(False, "", 8)["layers"] != [1, 2]  # '' -> defaults


def test_continue_with_memory_reads_and_writes_through(book, reads):
    novel, cid = book
    stored_before = _manuscript_tokens(novel)
    events = list(novel.continue_chapter(cid, Sampling(max_new_tokens=12, seed=1),
                                         budget=96))
    done = events[-1]
    assert done.done and novel.chapters.text(cid) == done.text and len(done.text) > len(OPENING)
    assert reads and sum(st.stats["searches"] for st in reads) > 0
    # the receipt says what attention read besides the prompt: the older part of the book
    (line,) = done.receipt["inside"]
    m = re.fullmatch(r"Long memory \(kNN\): ([\d,]+) of ([\d,]+) stored tokens readable "
                     r"\(the rest is in the prompt already\) · layers 1, 3 · k 4", line)
    assert m, line
    readable, stored = (int(x.replace(",", "")) for x in m.groups())
    assert stored == stored_before and 0 < readable < stored  # budget 96 keeps only a tail
    assert line in Receipt(**done.receipt).markdown()
    # the passage went into the store after it was accepted
    info = novel.knn.info()
    assert info["tokens"] == _manuscript_tokens(novel) and info["bytes"] > 0
    assert info["layers"] == [1, 3]


def test_memory_off_reads_nothing(book, reads):
    novel, cid = book
    novel.knn.set_settings(False)
    list(novel.continue_chapter(cid, Sampling(max_new_tokens=4, seed=1), budget=96))
    assert reads == [] and novel.knn.info()["tokens"] == 0


def test_memory_updates_after_each_passage(book):
    novel, cid = book
    first = novel.knn.store()
    n0 = len(first)
    assert n0 == _manuscript_tokens(novel)
    list(novel.continue_chapter(cid, Sampling(max_new_tokens=8, seed=2), budget=96))
    n1 = novel.knn.info()["tokens"]
    assert n1 == _manuscript_tokens(novel) > n0
    # the new tokens were indexed incrementally: the old entries are the same arrays
    st = novel.knn.store()
    np.testing.assert_array_equal(st.keys[1][:, :n0 - 8], first.keys[1][:, :n0 - 8])


def test_prefix_key_follows_memory(book):
    novel, cid = book
    lm = novel.model.get()
    ids, receipt = novel.build_context(cid, 96)
    k1 = novel.knn.reader(lm, cid, ids, receipt).key
    k2 = novel.knn.reader(lm, cid, ids, receipt).key
    assert k1 == k2
    novel.knn.set_settings(True, "1,3", 6)
    k3 = novel.knn.reader(lm, cid, ids, receipt).key
    assert k3 != k1
    novel.knn.set_settings(False)
    assert novel.knn.reader(lm, cid, ids, receipt) is None  # off: no part in a Continue


def test_corrupt_store_rebuilt_on_open(book, library):
    novel, cid = book
    n = len(novel.knn.store())
    folder = store_folder(novel.folder)
    path = folder / "keys_1.npy"
    data = bytearray(path.read_bytes())
    data[-10:] = b"\x00" * 10
    path.write_bytes(data)
    name = novel.folder.name
    novel.close()
    again = Library(library.root, library.model).open(name)  # a fresh process's library
    st = again.knn.store()
    assert len(st) == n
    KNNStore.load(folder)  # the files on disk verify again
    progress = []
    info = again.knn.rebuild(lambda done, total: progress.append((done, total)))
    assert info["tokens"] == n and progress and progress[-1] == (n, n)


def test_margin_notes_enter_the_store_inline_and_follow_edits(book):
    from engine.thoughts import BEGIN, END

    novel, cid = book
    novel.thoughts.set_settings(on=False)
    n0 = len(novel.knn.store())
    tid = novel.thoughts.add(cid, "Orrin hides the bell rope.", anchor=40)
    book_text = novel.chapters.memory_book()
    assert f"{BEGIN}Orrin hides the bell rope.{END}" in book_text
    assert BEGIN not in novel.chapters.manuscript()  # the book itself never holds a note
    st = novel.knn.store()
    tok = novel.model.get().tokenizer
    assert len(st) == _manuscript_tokens(novel) > n0
    assert st.tokens.tolist() == tok(book_text, add_special_tokens=False).input_ids
    novel.thoughts.edit(tid, "Orrin burns the bell rope.")
    assert "burns" in tok.decode(novel.knn.store().tokens.tolist())
