"""A novel's memory matrix: kept in step with the manuscript, pins, bad files, Continue."""
from __future__ import annotations

import numpy as np
import pytest

from engine.memory.matrix_project import SEGMENT
from engine.errors import UserError
from engine.novel import Novel, NovelError
from engine.writer import Sampling

PARA = ("The keeper of the northern light kept a ledger of every ship that passed, and "
        "in the margins he drew the faces of the sailors he would never meet again. ")


def _fill(novel, chapters=2, paras=8):
    for i in range(chapters):
        novel.chapters.add(f"Chapter {i + 1}", "\n\n".join(PARA + f"({i}.{j})" for j in range(paras)))


def _segments(novel):
    lm = novel.model.get()
    return sum(len(lm.tokenizer((c["text"] or "").strip(), add_special_tokens=False).input_ids)
               // SEGMENT for c in novel.store.chapters())


def test_matrix_writes_every_full_segment_once_and_follows_growth(novel):
    _fill(novel)
    novel.matrix.set_settings(True)
    usage = novel.matrix.usage()
    info = novel.matrix.info()
    assert info["segments"] == _segments(novel) > 2
    assert usage["chapters"] == [1, 2] and len(usage["usage"]) == 64
    assert (novel.folder / "memory" / "matrix.safetensors").exists()
    cid = novel.chapters.id(2)
    novel.chapters.save(cid, novel.chapters.text(cid) + "\n\n" + PARA * 4)
    novel.matrix.usage()
    assert novel.matrix.info()["segments"] == _segments(novel) > info["segments"]
    assert novel.matrix.info()["notice"] == ""


def test_an_edit_of_older_text_rebuilds_and_says_so(novel):
    _fill(novel)
    novel.matrix.set_settings(True)
    novel.matrix.usage()
    first = novel.chapters.id(1)
    novel.chapters.save(first, "A different opening. " + novel.chapters.text(first))
    novel.matrix.usage()
    assert "rebuilt" in novel.matrix.info()["notice"]
    assert novel.matrix.info()["segments"] == _segments(novel)


@pytest.mark.parametrize("damage", ["truncate", "nan", "foreign"])
def test_untrustworthy_files_are_rebuilt_and_nothing_is_lost(novel, damage):
    _fill(novel)
    novel.matrix.set_settings(True)
    novel.matrix.usage()
    text = novel.chapters.manuscript()
    path = novel.folder / "memory" / "matrix.safetensors"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "nan":
        from engine.memory.matrix import MemoryMatrix
        mm = novel.matrix.matrix()  # in step already: the loaded matrix, as saved
        mm.M[3, 3] = np.nan
        from safetensors.numpy import save_file
        from safetensors import safe_open
        with safe_open(str(path), "np") as f:
            meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        arrays["M"] = mm.M
        save_file(arrays, str(path), metadata=meta)
        assert MemoryMatrix  # the loader, not save(), must catch it
    else:
        novel.matrix.set_settings(True, slots=128)  # another shape: the old file is foreign
    again = Novel.open(novel.folder, novel.model)  # a fresh process's view
    again.matrix.set_settings(True)
    again.matrix.usage()
    info = again.matrix.info()
    assert info["segments"] == _segments(again)
    if damage != "foreign":
        assert "not usable" in info["notice"]
    assert again.chapters.manuscript() == text
    again.matrix.matrix().check()


def test_pinned_memory_holds_its_slots_through_writes_and_reset(novel):
    _fill(novel, chapters=1)
    novel.matrix.set_settings(True)
    novel.matrix.usage()
    mid = novel.memories.add("The lighthouse keeper is afraid of the dark.")
    novel.memories.pin(mid)  # pinning a memory also pins matrix slots while the matrix is on
    slots = novel.matrix.pins()[str(mid)]
    assert len(slots) == 4
    rows = novel.matrix.matrix().M[slots].copy()
    cid = novel.chapters.id(1)
    novel.chapters.save(cid, novel.chapters.text(cid) + "\n\n" + PARA * 6)
    novel.matrix.usage()
    np.testing.assert_array_equal(novel.matrix.matrix().M[slots], rows)
    assert sum(novel.matrix.usage()["pinned"]) == 4
    novel.matrix.reset()
    assert novel.matrix.info()["pinned"] == 4 and str(mid) in novel.matrix.pins()
    novel.memories.unpin(mid)
    assert novel.matrix.pins() == {} and novel.matrix.info()["pinned"] == 0


def test_bad_settings_and_adapters_get_clear_messages(novel, tmp_path):
    with pytest.raises(UserError, match="layer must lie"):
        novel.matrix.set_settings(True, layer=99)
    with pytest.raises(UserError, match="multiple of 64"):
        novel.matrix.set_settings(True, slots=100)
    with pytest.raises(UserError, match="no memory adapter"):
        novel.matrix.set_settings(True, adapter=str(tmp_path / "missing"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot be read"):
        novel.matrix.set_settings(True, adapter=str(bad))
    assert novel.matrix.settings()["adapter"] is None


def test_continue_reads_the_matrix_and_writes_after_accept(novel, monkeypatch):
    import engine.memory.attention as attention

    # no public way: a spy on the attention function's internal seam where the matrix's
    # tokens join each layer call (attention/__init__.py keeps it a module global for
    # this); the public matrix_tokens() is entered once per Continue, not per forward
    calls = []
    real = attention._with_tokens
    monkeypatch.setattr(attention, "_with_tokens",
                        lambda *a: calls.append(a[-1].keys.shape) or real(*a))
    _fill(novel, chapters=1, paras=6)
    novel.matrix.set_settings(True)
    novel.thoughts.set_settings(on=False)
    cid = novel.chapters.id(1)
    events = list(novel.continue_chapter(cid, Sampling(max_new_tokens=100, seed=1)))
    assert any("memory matrix" in e.status for e in events)
    assert events[-1].done and len(novel.chapters.text(cid)) > 0
    kv, rows = novel.model.get().model.config.num_key_value_heads, novel.matrix.settings()["rows"]
    assert len(calls) > 50 and set(calls) == {(kv, rows, 16)}  # every forward read the tokens
    (line,) = events[-1].receipt["inside"]  # the receipt says the matrix was read
    assert line.startswith(f"Memory matrix: {rows} memory tokens at layer"), line
    assert novel.matrix.info()["segments"] == _segments(novel)


def test_matrix_cli_on_pin_usage_and_clear_errors(tmp_path):
    import json

    from test_cli import cli

    proj = tmp_path / "p"
    cli("new", "--project", proj, "--title", "Ledger")
    story = tmp_path / "one.txt"
    story.write_text("Chapter 1\n\n" + "\n\n".join([PARA] * 8))
    cli("import", "--project", proj, story)
    cli("memory", "add", "--project", proj, "The keeper fears the dark.")
    out = cli("matrix", "--project", proj, "on", "--model", "tiny").stdout
    assert "memory matrix on" in out
    out = cli("matrix", "--project", proj, "pin", "1", "--model", "tiny").stdout
    assert "slots" in out and "pinned" in out
    got = json.loads(cli("matrix", "--project", proj, "usage", "--json", "--model", "tiny").stdout)
    assert got["settings"]["on"] and list(got["pins"]) == ["1"]
    assert got["info"]["pinned"] == 4 and got["usage"]["chapters"] == [1]
    bad = cli("matrix", "--project", proj, "pin", "--model", "tiny", check=False)
    assert bad.returncode == 2 and "needs a memory id" in bad.stderr
    bad = cli("matrix", "--project", proj, "set", "--slots", "100", "--model", "tiny", check=False)
    assert bad.returncode == 2 and "multiple of 64" in bad.stderr


def test_a_corrupt_adapter_falls_back_to_the_sketch_and_says_so(novel, tmp_path):
    from engine.train import memory as tm

    lm = novel.model.get()
    corpus = tmp_path / "c.txt"
    corpus.write_text(PARA * 12)
    tm.train(lm, corpus, tmp_path / "a", steps=1, history=1, slots=4096, rows=8,
             progress=False)
    _fill(novel, chapters=1, paras=6)
    novel.thoughts.set_settings(on=False)
    novel.matrix.set_settings(True, rows=8, adapter=str(tmp_path / "a"))
    (tmp_path / "a" / tm.ADAPTER).write_bytes(b"garbage")
    novel.close()
    again = Novel.open(novel.folder, novel.model)  # a restart: the adapter is read afresh
    cid = again.chapters.id(1)
    before = again.chapters.text(cid)
    last = list(again.continue_chapter(cid, Sampling(max_new_tokens=20, seed=2)))[-1]
    assert "CountSketch" in last.status and last.done
    after = again.chapters.text(cid)
    assert after.startswith(before) and len(after) > len(before)
    again.close()
