"""Training the memory matrix's read path (tiny model): it learns, resumes exactly,
and its adapter is checked before use."""
from __future__ import annotations

import pytest
import torch

from engine.memory.matrix import MatrixError
from engine.train import memory as tm

STORY = ("Captain Arvel Dunmore kept the brass key of the tide room. " * 3 +
         "The tide room flooded at the new moon, and only Dunmore knew the way out. " * 3)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("\n\n".join(STORY for _ in range(8)))
    return p


def _train(lm, corpus, out, **kw):
    kw = {"steps": 6, "seed": 1, "history": 1, "slots": 128, "rows": 8,
          "checkpoint_every": 3, "progress": False, **kw}
    return tm.train(lm, corpus, out, **kw)


def test_training_lowers_the_losses_it_optimises(tiny_lm, corpus, tmp_path):
    ids = tm.corpus_ids(tiny_lm, corpus)
    res = _train(tiny_lm, corpus, tmp_path / "a", steps=40, lr=2e-2)
    adapter = tm.load_adapter(tmp_path / "a", tiny_lm)
    fresh = tm.MatrixAdapter(adapter.settings, tiny_lm.model.config.hidden_size,
                             tiny_lm.model.config.num_attention_heads, adapter.layer,
                             tiny_lm.fingerprint)
    fixed = [tm.example(ids, 1000 + i, 7, 1) for i in range(4)]
    with torch.no_grad():
        before = sum(float(tm.losses(tiny_lm, fresh, adapter.layer, e)["total"]) for e in fixed)
        after = sum(float(tm.losses(tiny_lm, adapter, adapter.layer, e)["total"]) for e in fixed)
    assert after < before
    assert len(res["log"]) == 40 and (tmp_path / "a" / tm.ADAPTER).exists()


def test_a_resumed_run_equals_an_uninterrupted_one(tiny_lm, corpus, tmp_path):
    _train(tiny_lm, corpus, tmp_path / "whole")
    _train(tiny_lm, corpus, tmp_path / "split", steps=3)
    res = _train(tiny_lm, corpus, tmp_path / "split")  # picks up the step-3 checkpoint
    assert [r["step"] for r in res["log"]] == [4, 5, 6]
    a = tm.load_adapter(tmp_path / "whole", tiny_lm).state_dict()
    b = tm.load_adapter(tmp_path / "split", tiny_lm).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_adapters_for_another_model_or_corrupt_are_refused(tiny_lm, corpus, tmp_path):
    _train(tiny_lm, corpus, tmp_path / "a", steps=1)

    class Other:
        fingerprint, model = "someone-else", tiny_lm.model
    with pytest.raises(MatrixError, match="another model"):
        tm.load_adapter(tmp_path / "a", Other)
    path = tmp_path / "a" / tm.ADAPTER
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(MatrixError, match="cannot be read"):
        tm.load_adapter(path, tiny_lm)
    with pytest.raises(MatrixError, match="checkpoint"):  # another run's settings
        _train(tiny_lm, corpus, tmp_path / "a", rows=4)


def test_a_novel_reads_through_a_trained_adapter(novel, corpus, tmp_path):
    lm = novel.model.get()
    _train(lm, corpus, tmp_path / "a", steps=2, slots=4096, rows=8)
    novel.chapters.add("One", STORY * 4)
    s = novel.matrix.set_settings(True, rows=8, adapter=str(tmp_path / "a"))
    assert s["adapter"] == str(tmp_path / "a")
    mm = novel.matrix.matrix()
    tokens = novel.matrix.tokens(lm, mm)
    (layer, tok), = tokens.items()
    assert tok.keys.shape[1] == 8 and tuple(tok.bias.shape) == (lm.model.config.num_attention_heads,)
