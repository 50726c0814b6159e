"""The kNN store: persistence, distrust of bad files, index kinds, incremental
updates, and the score CLI's JSON."""
import argparse
import json

import numpy as np
import pytest

from engine.memory import attention
from engine.memory.knn import KNNSettings, KNNStore, new_store, store_folder
from engine.memory.knn_index import ensure_store
from engine.store import Store
from engine.models import load_tiny

TEXT = ("The lighthouse keeper Orrin Vale counted ships at dusk. His sister Maelis "
        "mended nets below the cliff and sang about the drowned bells of Kestrow. ") * 3


@pytest.fixture(scope="module")
def lm():
    return load_tiny()


@pytest.fixture
def ids(lm):
    return lm.tokenizer(TEXT, add_special_tokens=False).input_ids


@pytest.fixture
def settings():
    return KNNSettings(layers=(1, 3), k=4, chunk=64, overlap=32)


@pytest.fixture
def project(tmp_path):
    store = Store.create(tmp_path / "novel")
    store.add_chapter("One", TEXT, author="writer", action="import")
    store.close()
    return tmp_path / "novel"


@pytest.fixture
def count_indexing(monkeypatch):
    calls = []
    real = attention.index_tokens

    def spy(lm, store, token_ids, *a, **kw):
        calls.append(len(list(token_ids)))
        return real(lm, store, token_ids, *a, **kw)
    monkeypatch.setattr(attention, "index_tokens", spy)
    return calls


def test_save_load_roundtrip(tmp_path, lm, ids, settings):
    store = new_store(tmp_path / "knn", lm, settings)
    attention.index_tokens(lm, store, ids, progress=False)
    store.build_index()
    store.save()
    again = KNNStore.load(tmp_path / "knn", settings)
    assert len(again) == len(ids) and again.layers == (1, 3)
    np.testing.assert_array_equal(again.positions, np.arange(len(ids)))
    np.testing.assert_array_equal(again.keys[3], store.keys[3])
    q = np.random.default_rng(0).standard_normal((3, store.head_dim)).astype(np.float32)
    np.testing.assert_array_equal(again.search(3, 1, q, 5)[1], store.search(3, 1, q, 5)[1])
    assert not list(tmp_path.glob("knn.tmp-*")) and not (tmp_path / "knn.old").exists()


def test_ensure_builds_then_reuses(project, lm, ids, settings, count_indexing):
    store = ensure_store(project, lm, ids, settings, progress=False)
    assert len(store) == len(ids) and count_indexing == [len(ids)]
    assert (store_folder(project) / "meta.json").exists()
    again = ensure_store(project, lm, ids, settings, progress=False)
    assert count_indexing == [len(ids)]  # nothing re-indexed
    np.testing.assert_array_equal(again.values[1], store.values[1])


@pytest.mark.parametrize("damage", ["corrupt", "missing", "garbage_meta"])
def test_damaged_store_is_rebuilt(project, lm, ids, settings, count_indexing, damage):
    first = ensure_store(project, lm, ids, settings, progress=False)
    folder = store_folder(project)
    if damage == "corrupt":
        path = folder / "values_3.npy"
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "missing":
        (folder / "keys_1.npy").unlink()
    else:
        (folder / "meta.json").write_text("{not json")
    store = ensure_store(project, lm, ids, settings, progress=False)
    assert count_indexing == [len(ids), len(ids)]  # rebuilt from the manuscript
    np.testing.assert_allclose(store.values[3].astype(np.float32),
                               first.values[3].astype(np.float32), atol=1e-3)
    KNNStore.load(folder, settings)  # and saved sound


def test_foreign_store_is_rebuilt(project, lm, ids, settings, count_indexing):
    ensure_store(project, lm, ids, settings, progress=False)
    folder = store_folder(project)
    meta = json.loads((folder / "meta.json").read_text())
    meta["fingerprint"] = "someone-else"
    (folder / "meta.json").write_text(json.dumps(meta))
    store = ensure_store(project, lm, ids, settings, progress=False)
    assert count_indexing == [len(ids), len(ids)] and store.fingerprint == lm.fingerprint
    ensure_store(project, lm, ids, settings.changed(layers=(2,)), progress=False)
    assert count_indexing[-1] == len(ids)  # other layers: rebuilt too
    assert len(count_indexing) == 3


def test_append_and_edit_reindex_only_what_changed(project, lm, ids, settings,
                                                   count_indexing):
    base = ensure_store(project, lm, ids, settings, progress=False)
    more = ids + lm.tokenizer(" Then the bells rang.", add_special_tokens=False).input_ids
    grown = ensure_store(project, lm, more, settings, progress=False)
    assert count_indexing == [len(ids), len(more) - len(ids)]
    assert len(grown) == len(more)
    np.testing.assert_array_equal(grown.keys[1][:, :len(ids)], base.keys[1])
    edited = list(more)
    edited[50] = (edited[50] + 1) % 250 + 3
    edited = edited[:120]
    store = ensure_store(project, lm, edited, settings, progress=False)
    assert count_indexing[-1] == 70 and len(store) == 120
    np.testing.assert_array_equal(store.tokens, np.array(edited))
    np.testing.assert_array_equal(store.keys[3][:, :50], base.keys[3][:, :50])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_threshold_switches_to_approximate(kind, tmp_path):
    rng = np.random.default_rng(0)
    n, d = 3000, 16
    s = KNNSettings(layers=(0,), approx_threshold=1000, approx=kind, nprobe=64,
                    ef_search=128)
    store = KNNStore(tmp_path / "knn", (0,), 1, d, "fp", s)
    x = rng.standard_normal((1, n, d)).astype(np.float16)
    store.add({0: x[:, :500]}, {0: x[:, :500]}, np.arange(500))
    store.build_index()
    assert store.kind == "flat"
    store.add({0: x[:, 500:]}, {0: x[:, 500:]}, np.arange(500, n))
    q = x[0, :50].astype(np.float32)
    _, ids = store.search(0, 0, q, 10)
    assert store.kind == kind
    exact = np.argsort(-(q @ x[0].astype(np.float32).T), axis=1)[:, :10]
    hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert hits > 0.8, hits
    _, ids = store.search(0, 0, q, 10, limit=700)  # only the first 700 entries
    assert ids.max() < 700
    store.save()
    again = KNNStore.load(tmp_path / "knn", s)
    assert again.kind == kind and len(again) == n


def _score_args(project, text_file, memory, **kw):
    ns = argparse.ArgumentParser()
    from engine import score
    score.add_arguments(ns)
    args = ns.parse_args(["--project", str(project), "--text-file", str(text_file),
                          "--window", "32", "--memory", memory, "--json", "--model", "tiny",
                          "--block", "40", "--knn-layers", "1,3", "--knn-k", "4"])
    return args


@pytest.mark.parametrize("memory", ["none", "knn", "matrix", "all"])
def test_score_cli_json(project, tmp_path, capsys, memory):
    from engine import score
    text = "Orrin Vale climbed the stair. Maelis waited by the bells of Kestrow, é!"
    f = tmp_path / "cont.txt"
    f.write_text(text, encoding="utf-8")
    assert score.run(_score_args(project, f, memory)) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"tokens", "offsets", "logprobs", "window", "memory", "seconds"}
    assert out["window"] == 32 and out["memory"] == memory and out["seconds"] >= 0
    n = len(out["tokens"])
    assert n > 10 and len(out["offsets"]) == n and len(out["logprobs"]) == n
    assert all(isinstance(x, float) and x <= 0 for x in out["logprobs"])
    assert out["offsets"][0][0] == 0 and out["offsets"][-1][1] == len(text)
    assert all(a <= b for a, b in out["offsets"])


def test_score_blocks_match_one_token_at_a_time(lm, ids, settings):
    """Block scoring: the context of each token starts W tokens before its block."""
    import torch

    from engine.score import score_tokens
    past, cont = ids[:100], ids[100:160]
    got = score_tokens(lm, past, cont, 24, None, settings, block=17)
    allids = past + cont
    for i in (0, 5, 16, 17, 33, 59):
        t = 100 + i
        start = 100 + (i // 17) * 17 - 24
        x = torch.tensor([allids[start:t]])
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(x).logits[0, -1], -1)[allids[t]].item()
        assert abs(lp - got[i]) < 1e-4
    store = new_store(None, lm, settings)
    attention.index_tokens(lm, store, past, progress=False)
    with_mem = score_tokens(lm, past, cont, 24, store, settings, block=17)
    assert len(with_mem) == len(cont) and max(abs(a - b) for a, b in zip(got, with_mem)) > 1e-4


def test_inject_overrides_from_the_command_line():
    from engine.score import parse_inject, settings_from_args

    args = argparse.Namespace(knn_mode="inject", knn_preset="steer",
                              knn_inject="r=0.1, k=12,layer_fractions=0.5/0.75")
    s = settings_from_args(args)
    p = s.preset_params()
    assert (p["r"], p["k"], p["ts"]) == (0.1, 12, 0.01)  # ts still the steer preset's
    assert s.read_layers(30) == (15, 22)
    for bad, why in (("zz=1", "not KEY=VALUE"), ("r=high", "not a number"), ("k", "KEY=")):
        with pytest.raises(ValueError, match=why):
            parse_inject(bad)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_grows_without_a_rebuild_until_the_store_doubles(kind):
    rng = np.random.default_rng(1)
    d = 16
    x = rng.standard_normal((1, 5000, d)).astype(np.float16)
    s = KNNSettings(layers=(0,), approx_threshold=500, approx=kind, nprobe=64,
                    ef_search=128)
    store = KNNStore(None, (0,), 1, d, "fp", s)
    store.add({0: x[:, :2000]}, {0: x[:, :2000]}, np.arange(2000))
    store.build_index()
    built = store.index(0, 0)
    store.add({0: x[:, 2000:3000]}, {0: x[:, 2000:3000]}, np.arange(2000, 3000))
    assert store.index(0, 0) is built and built.ntotal == 3000  # grown, not rebuilt
    q = rng.standard_normal((20, d)).astype(np.float32)  # the new entries are searched too
    _, ids = store.search(0, 0, q, 10)
    exact = np.argsort(-(q @ x[0, :3000].astype(np.float32).T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]) > 0.8
    assert (ids >= 2000).any()
    store.add({0: x[:, 3000:]}, {0: x[:, 3000:]}, np.arange(3000, 5000))
    assert store.index(0, 0) is None  # past twice its trained size: rebuilt on the next search
    store.search(0, 0, q, 1)
    assert store.index(0, 0) is not built and store.index(0, 0).ntotal == 5000


@pytest.mark.parametrize("every,searching_layers", [(1, 4), (2, 2), (4, 1)])
def test_retrieval_bench_plays_every_memory_layer(lm, every, searching_layers):
    """bench speed's retrieval figure is per token over all memory layers: with
    search_every N only every N-th of them searches the index."""
    from engine.evals.knn_speed import retrieval_speed

    s = KNNSettings(layers=(0, 1, 2, 3), search_every=every, approx_threshold=200)
    rows = retrieval_speed(lm, s, sizes=(150, 400), tokens=4)
    kv = lm.model.config.num_key_value_heads
    assert [r["index"] for r in rows] == ["flat", "ivf"]
    for r in rows:
        assert r["memory_layers"] == 4
        assert r["searches_per_token"] == searching_layers * kv
        assert r["ms_per_token"] > 0


def test_sentiment_bench_conditions(capsys, monkeypatch):
    """bench sentiment reports every condition; the memory reaches the model through
    attention (the same seed samples something else) and the reference through the
    prompt (the memory's text before the opening, no memory read)."""
    import json

    import engine.evals.sentiment as bench
    from engine.__main__ import main

    calls, real = [], bench.sample
    monkeypatch.setattr(bench, "sample", lambda lm, ids, *a: calls.append(
        (len(ids), a[-1] is None)) or real(lm, ids, *a))
    rc = main(["bench", "sentiment", "--model", "tiny", "--seeds", "2", "--new-tokens", "12",
               "--modes", "attend", "--knn-layers", "0-3", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(report["results"]) == ["none", "prompt:positive", "prompt:negative",
                                       "attend:positive", "attend:negative"]
    assert all(-1 <= r["median"] <= 1 and r["iqr"] >= 0 for r in report["results"].values())
    ex = report["examples"]
    assert ex["attend:positive"] != ex["none"] and ex["attend:positive"] != ex["attend:negative"]
    (opening,) = {n for n, plain in calls[:2]}
    assert all(plain and n > opening + 50 for n, plain in calls[2:6])  # text in the prompt
    assert all(not plain and n == opening for n, plain in calls[6:])   # memory in attention
