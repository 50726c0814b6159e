"""Issue 13, derived memory files: damage is detected and rebuilt with a notice, never
read as a wrong answer; interrupted saves leave nothing that misleads the next run."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from engine.memory.semantic import SemanticMemory
from engine.novel import Novel

PARA = ("The keeper of the northern light kept a ledger of every ship that passed, and "
        "in the margins he drew the faces of the sailors he would never meet again. ")


class HashEmbedder:
    """Deterministic unit vectors from word hashes: enough to rank, no model to load."""
    name, dim = "test-hash", 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True).clip(1e-6)
        return out


EMB = HashEmbedder()
FACTS = ["the lamp burns whale oil", "the keeper fears the dark", "ships pass at noon",
         "gulls nest on the rocks", "the ledger has a red cover", "storms come in autumn",
         "the stair has ninety steps", "bread arrives each friday", "the bell is cracked",
         "a cat sleeps by the stove"]


def _semantic(novel):
    for f in FACTS:
        novel.memories.add(f)
    sem = SemanticMemory(novel.store, embed=lambda: EMB)
    sem.sync()
    return sem


# -- 19: the semantic index carries digests ---------------------------------------------
def test_flipped_bytes_in_the_semantic_index_are_caught_and_rebuilt(novel, caplog):
    sem = _semantic(novel)
    want = sem.search("the keeper fears the dark", 3)
    assert want[0][0] == "memory:2" and want[0][1] == pytest.approx(1.0, abs=1e-5)
    path = sem.dir / "index.faiss"
    data = bytearray(path.read_bytes())
    at = len(data) // 3
    data[at:at + 200] = bytes(b ^ 0x5A for b in data[at:at + 200])  # inside the vectors
    path.write_bytes(bytes(data))

    fresh = SemanticMemory(novel.store, embed=lambda: EMB)  # the next run's view
    with caplog.at_level(logging.WARNING):
        stats = fresh.sync()
    assert "digest" in stats["rebuilt"] and "digest" in caplog.text
    got = fresh.search("the keeper fears the dark", 3)
    assert [k for k, _ in got] == [k for k, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    assert json.loads((sem.dir / "meta.json").read_text())["files"]["index.faiss"]
    assert not SemanticMemory(novel.store, embed=lambda: EMB).sync().get("rebuilt")  # clean


def test_a_file_where_the_semantic_folder_belongs_is_moved_aside(novel, caplog):
    for f in FACTS[:3]:
        novel.memories.add(f)
    folder = novel.store.memory_dir / "semantic"
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    sem = SemanticMemory(novel.store, embed=lambda: EMB)
    with caplog.at_level(logging.WARNING):
        stats = sem.sync()
    assert "moved it aside" in stats["rebuilt"] and "semantic.broken-" in caplog.text
    assert folder.is_dir() and (folder / "meta.json").is_file() and stats["items"] == 3
    (aside,) = folder.parent.glob("semantic.broken-*")
    assert aside.read_text() == "not a folder"
    assert sem.search("the keeper fears the dark", 1)[0][0] == "memory:2"


# -- 19: the memory matrix is one file --------------------------------------------------------
def _fill(novel, chapters=2, paras=8):
    for i in range(chapters):
        novel.chapters.add(f"Chapter {i + 1}",
                          "\n\n".join(PARA + f"({i}.{j})" for j in range(paras)))


def test_the_matrix_and_its_segment_list_are_one_file(novel):
    _fill(novel)
    novel.matrix.set_settings(True)
    novel.matrix.usage()
    n = novel.matrix.info()["segments"]
    memory = novel.folder / "memory"
    assert n > 5 and (memory / "matrix.safetensors").is_file()
    assert not (memory / "matrix.json").exists()
    again = Novel.open(novel.folder, novel.model)
    again.matrix.usage()
    assert again.matrix.info()["segments"] == n and again.matrix.info()["notice"] == ""


def _resave(path, segments=None):
    """Rewrite the matrix file with its segment list replaced (None: the old layout,
    without one)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), "np") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("extra")
    if segments is not None:
        meta["extra"] = json.dumps({"segments": segments})
    save_file(arrays, str(path), metadata=meta)


@pytest.mark.parametrize("layout", ["two files", "one file"])
def test_a_matrix_behind_or_ahead_of_its_record_is_rebuilt_with_a_notice(novel, layout):
    """The old layout: a crash between matrix.safetensors and matrix.json left the
    matrix 5 writes behind its list, and the missing segments were never written."""
    _fill(novel)
    novel.matrix.set_settings(True)
    novel.matrix.usage()
    n = novel.matrix.info()["segments"]
    path = novel.folder / "memory" / "matrix.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        segments = json.loads(f.metadata()["extra"])["segments"]
    if layout == "two files":
        _resave(path)
        (path.with_suffix(".json")).write_text(json.dumps({"segments": segments[:-5]}))
    else:
        _resave(path, segments[:-5])
    again = Novel.open(novel.folder, novel.model)
    again.matrix.usage()
    info = again.matrix.info()
    assert "not usable" in info["notice"] and "interrupted save" in info["notice"]
    assert info["segments"] == n
    # each segment written once: the in-step matrix holds n chapter writes (pins write
    # with chapter -1)
    assert int((again.matrix.matrix().chapters >= 0).sum()) == n


def test_the_old_two_file_layout_is_read_and_converted(novel):
    _fill(novel)
    novel.matrix.set_settings(True)
    novel.matrix.usage()
    n = novel.matrix.info()["segments"]
    path = novel.folder / "memory" / "matrix.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        segments = json.loads(f.metadata()["extra"])["segments"]
    _resave(path)
    path.with_suffix(".json").write_text(json.dumps({"segments": segments}))
    again = Novel.open(novel.folder, novel.model)
    again.matrix.usage()
    assert again.matrix.info()["notice"] == "" and again.matrix.info()["segments"] == n
    assert not path.with_suffix(".json").exists()


# -- 22: a kill during the kNN save --------------------------------------------------------------
def test_stale_knn_temp_folders_are_cleaned_when_the_store_opens(novel):
    _fill(novel, chapters=1, paras=3)
    novel.knn.set_settings(True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    memory = novel.folder / "memory"
    stale = memory / f"knn.tmp-{dead.pid}"
    live = memory / f"knn.tmp-{os.getppid()}"  # a save under way in a running process
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "keys_2.npy").write_bytes(b"half")
    novel.knn.store()
    assert not stale.exists() and live.exists()
    assert (memory / "knn" / "meta.json").is_file()


def test_a_store_left_as_knn_old_by_a_crash_mid_swap_is_put_back(novel):
    from engine.memory.knn import clean_stale

    _fill(novel, chapters=1, paras=3)
    novel.knn.set_settings(True)
    store = novel.knn.store()
    memory = novel.folder / "memory"
    (memory / "knn").rename(memory / "knn.old")  # killed between the save's two renames
    assert clean_stale(memory / "knn") == []
    assert (memory / "knn" / "meta.json").is_file() and not (memory / "knn.old").exists()
    again = Novel.open(novel.folder, novel.model)
    assert len(again.knn.store()) == len(store)
