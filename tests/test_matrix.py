"""The memory matrix: write rule, sketch read, files, attention tokens, and a novel's matrix."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.memory.matrix import (MatrixError, MatrixSettings, MemoryMatrix, countsketch,
                                  sketch_matrix)

RNG = np.random.default_rng(3)


def _states(n=20, d=32, shift=0.0):
    return RNG.standard_normal((n, d)).astype(np.float32) + shift


def test_gate_follows_the_rule_and_pinned_rows_never_change():
    s = MatrixSettings(slots=128, gain=0.5, bias=1.0, lr=0.7)
    mm = MemoryMatrix(32, s)
    mm.write(_states(shift=1.0))                       # sets the centre
    mm.set_pinned([0, 5, 77], True)
    before = mm.M.copy()
    st = _states(shift=-0.5)
    twin = copy.deepcopy(mm)
    x = twin.encode(twin.observe(st))          # the centred unit vector write will use
    v = np.sqrt(32) * (before @ x)
    stats = mm.write(st)
    g = 1 / (1 + np.exp(-0.5 * (v - 1.0)))
    g[[0, 5, 77]] = 0
    assert stats["gate_max"] == pytest.approx(float(g.max()), rel=1e-4)
    np.testing.assert_array_equal(mm.M[[0, 5, 77]], before[[0, 5, 77]])
    assert not np.allclose(mm.M[1], before[1])
    np.testing.assert_allclose(np.linalg.norm(mm.M, axis=1), 1.0, rtol=1e-5)  # bounded


def test_many_writes_stay_finite_and_bounded():
    mm = MemoryMatrix(16, MatrixSettings(slots=64, norm="decay", decay=0.05, lr=1.0))
    for i in range(200):
        mm.write(_states(5, 16, shift=float(i % 7)))
    mm.check()
    assert np.abs(mm.M).max() < 50
    assert mm.usage.shape == (200, 64) and mm.chapters.shape == (200,)


def test_countsketch_summary_is_the_dense_sketch():
    s = MatrixSettings(slots=256, rows=8, seed=4)
    mm = MemoryMatrix(24, s)
    for _ in range(3):
        mm.write(_states(10, 24))
    dense = mm.summary(sketch_matrix(256, 8, 4))
    np.testing.assert_allclose(mm.summary(), dense, rtol=1e-5, atol=1e-5)
    h, sign = countsketch(256, 8, 4)
    assert set(np.unique(sign)) == {-1.0, 1.0} and h.max() < 8


def test_files_round_trip_and_refuse_corrupt_foreign_and_nan(tmp_path):
    stamp = {"model": "abc", "layer": 1}
    mm = MemoryMatrix(16, MatrixSettings(slots=64), stamp)
    mm.write(_states(5, 16))
    mm.write(_states(5, 16, 2.0))
    mm.set_pinned([3], True)
    p = tmp_path / "matrix.safetensors"
    mm.save(p)
    back = MemoryMatrix.load(p, stamp)
    np.testing.assert_array_equal(back.M, mm.M)
    assert back.pinned[3] and back.writes == 2 and back.spread == mm.spread
    with pytest.raises(MatrixError, match="another model"):
        MemoryMatrix.load(p, {"model": "xyz", "layer": 1})
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(MatrixError, match="cannot be read"):
        MemoryMatrix.load(p, stamp)
    mm.M[0, 0] = np.nan
    with pytest.raises(MatrixError, match="NaN"):
        mm.save(p)


def test_memory_tokens_are_one_joint_softmax_with_keys_behind_each_query(tiny_lm):
    """_with_tokens for one query equals plain attention over [tokens placed at
    q_pos - distance] + the local keys."""
    from engine.memory.attention import MatrixTokens, _with_tokens, rotary_inv_freq, rotate

    inv = rotary_inv_freq(tiny_lm)
    g = torch.Generator().manual_seed(0)
    H, KV, d, n, r = 4, 2, 16, 7, 3
    q = torch.randn(1, H, 1, d, generator=g)
    k = torch.randn(1, KV, n, d, generator=g)
    v = torch.randn(1, KV, n, d, generator=g)
    km, vm = torch.randn(KV, r, d, generator=g), torch.randn(KV, r, d, generator=g)
    q_pos = torch.tensor([40])
    mask = torch.ones(1, 1, 1, n, dtype=torch.bool)
    tok = MatrixTokens(km, vm, 0.7, distance=9, inv_freq=inv)
    out = _with_tokens(q, k, v, mask, d ** -0.5, q_pos, tok)
    placed = rotate(km, torch.full((KV, r), 40 - 9), inv)
    K = torch.cat([placed, k[0]], 1).repeat_interleave(2, 0)
    V = torch.cat([vm, v[0]], 1).repeat_interleave(2, 0)
    logits = (q[0, :, 0, None] * K).sum(-1) * d ** -0.5
    logits[:, :r] += 0.7
    ref = (torch.softmax(logits, -1)[..., None] * V).sum(1)
    torch.testing.assert_close(out[0, :, 0], ref, rtol=1e-5, atol=1e-5)


def test_closed_read_gate_leaves_the_model_unchanged_and_open_changes_it(tiny_lm):
    from engine.memory.attention import (MatrixTokens, layer_states, matrix_tokens,
                                         project_tokens, rotary_inv_freq)

    ids = tiny_lm.tokenizer("The keeper lights the lamp at dusk.", add_special_tokens=False).input_ids
    layer = 1
    mm = MemoryMatrix(tiny_lm.model.config.hidden_size, MatrixSettings(slots=128, rows=4))
    for a in range(0, len(ids) - 8, 8):
        mm.write(layer_states(tiny_lm, layer, ids[a:a + 8]))
    k, v = project_tokens(tiny_lm, layer, torch.from_numpy(mm.summary()))
    x = torch.tensor([ids])
    with torch.no_grad():
        base = tiny_lm.model(input_ids=x).logits
        with matrix_tokens(tiny_lm, {layer: MatrixTokens(k, v, -1e9, 64, rotary_inv_freq(tiny_lm))}):
            closed = tiny_lm.model(input_ids=x).logits
        with matrix_tokens(tiny_lm, {layer: MatrixTokens(k, v, 2.0, 64, rotary_inv_freq(tiny_lm))}):
            opened = tiny_lm.model(input_ids=x).logits
    torch.testing.assert_close(closed, base, rtol=1e-4, atol=1e-4)
    assert (opened - base).abs().max() > 1e-3


def test_layer_states_are_the_attention_input(tiny_lm):
    from engine.memory.attention import attention_module, layer_states

    ids = tiny_lm.tokenizer("abcdefgh", add_special_tokens=False).input_ids
    grab = {}
    h = attention_module(tiny_lm, 2).register_forward_pre_hook(
        lambda m, a, kw: grab.update(h=kw["hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        tiny_lm.model(input_ids=torch.tensor([ids]))
    h.remove()
    np.testing.assert_allclose(layer_states(tiny_lm, 2, ids), grab["h"][0].numpy(), atol=1e-5)
