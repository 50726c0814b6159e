"""train knn: the kNN memory's read gate learned on a corpus, saved, read back by the
attention (gate mode), and refused when it does not fit the model."""
import pytest
import torch

from engine.__main__ import main
from engine.memory.attention import index_tokens, knn_memory
from engine.memory.knn import KNNSettings, new_store
from engine.models import load_tiny
from engine.train.knn import GateError, load_gates, train

TEXT = ("Orrin Vale kept the lighthouse at Kestrow. His sister Maelis mended nets and "
        "sang of the drowned bells. ") * 60


@pytest.fixture(scope="module")
def lm():
    return load_tiny()


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT)
    out = folder / "gate.safetensors"
    # three layers searching each: queries after the first memory layer depend on the
    # gate (their search must not try to follow the gradient)
    res = train(lm, corpus, out, steps=6, lr=0.5, window=32, segment=32, init=-2.0,
                progress=False, settings=KNNSettings(layers=(1, 2, 3), search_every=1))
    return res, out


def test_training_moves_the_gate_and_saves_it(lm, trained):
    res, out = trained
    assert out.is_file() and len(res["loss"]) == 6
    gates = load_gates(out, lm, res["layers"])
    assert set(gates) == set(res["layers"])
    bias = torch.stack([gates[l] for l in res["layers"]])
    assert bias.shape[1] == lm.model.config.num_attention_heads
    assert (bias - -2.0).abs().max() > 0.1  # six Adam steps of lr 0.5 moved it


@torch.no_grad()
def test_the_gate_file_changes_what_the_model_reads(lm, trained):
    res, out = trained
    ids = lm.tokenizer(TEXT, add_special_tokens=False).input_ids[:160]
    s = KNNSettings(gate=True, layers=tuple(res["layers"]))
    store = new_store(None, lm, s)
    index_tokens(lm, store, ids[:96], progress=False)
    x = torch.tensor([ids[96:160]])
    with knn_memory(lm, store, s, horizon=96):
        fixed = lm.model(x).logits
    with knn_memory(lm, store, s.changed(gate_file=str(out)), horizon=96) as st:
        learned = lm.model(x).logits
    assert st.gates is not None
    assert (fixed - learned).abs().max() > 1e-5


def test_bad_gate_files_are_refused(lm, trained, tmp_path):
    res, out = trained
    with pytest.raises(GateError, match="memory layers"):
        load_gates(out, lm, [0])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(GateError, match="corrupt"):
        load_gates(bad, lm, res["layers"])
    with pytest.raises(GateError, match="no gate file"):
        load_gates(tmp_path / "missing.safetensors", lm, res["layers"])


def test_cli_trains_and_reports(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "g.safetensors"
    assert main(["train", "knn", "--model", "tiny", "--corpus", str(corpus), "--steps", "2",
                 "--window", "32", "--segment", "32", "--out", str(out),
                 "--no-progress"]) == 0
    assert "gate file" in capsys.readouterr().out and out.is_file()
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    assert main(["train", "knn", "--model", "tiny", "--corpus", str(short),
                 "--no-progress"]) == 2
    assert "too short" in capsys.readouterr().err
