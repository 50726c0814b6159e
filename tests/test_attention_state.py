"""The per-call memory state (engine/memory/attention/state.py): one MemoryCall per
thread, set by the context managers and restored on exit, however they nest."""
import threading

import pytest
import torch

from engine.memory.attention import (MatrixTokens, current_call, index_tokens, knn_memory,
                                     matrix_tokens, rotary_inv_freq)
from engine.memory.knn import KNNSettings, new_store

SETTINGS = KNNSettings(layers=(1, 3), k=8)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(5)
    return torch.randint(3, 250, (1, 96), generator=g)


@pytest.fixture(scope="module")
def store(tiny_lm, ids):
    store = new_store(None, tiny_lm, SETTINGS)
    index_tokens(tiny_lm, store, ids[0, :64].tolist(), progress=False)
    return store


def _tokens(lm, layer, rows=3):
    _, kv, hd = lm.shape
    g = torch.Generator().manual_seed(layer)
    return {layer: MatrixTokens(torch.randn(kv, rows, hd, generator=g),
                                torch.randn(kv, rows, hd, generator=g),
                                inv_freq=rotary_inv_freq(lm))}


def test_nesting_restores_the_outer_state(tiny_lm, store, ids):
    outer, inner = _tokens(tiny_lm, 1), _tokens(tiny_lm, 2)
    assert current_call().empty
    with matrix_tokens(tiny_lm, outer):
        with knn_memory(tiny_lm, store, SETTINGS) as st:
            with matrix_tokens(tiny_lm, inner):
                assert current_call().read is st
                assert current_call().tokens == {**outer, **inner}
            assert current_call().tokens == outer and current_call().read is st
            # indexing inside a read neither reads nor loses it
            extra = new_store(None, tiny_lm, SETTINGS)
            index_tokens(tiny_lm, extra, ids[0, 64:80].tolist(), progress=False)
            assert current_call().read is st and current_call().capture is None
            assert st.stats["searches"] == 0
        assert current_call().read is None and current_call().tokens == outer
    assert current_call().empty


def test_an_error_inside_a_block_restores_the_state(tiny_lm, store):
    with pytest.raises(RuntimeError):
        with knn_memory(tiny_lm, store, SETTINGS):
            with matrix_tokens(tiny_lm, _tokens(tiny_lm, 1)):
                raise RuntimeError("boom")
    assert current_call().empty


@torch.no_grad()
def test_threads_do_not_see_each_others_memory(tiny_lm, store, ids):
    """A forward pass in thread B, run while thread A is inside knn_memory and
    matrix_tokens, reads no memory; A's own pass, inside its block, reads both."""
    model, x = tiny_lm.model, ids[:, 64:]
    plain = model(x).logits
    tokens = _tokens(tiny_lm, 2)
    with knn_memory(tiny_lm, store, SETTINGS, horizon=64), matrix_tokens(tiny_lm, tokens):
        with_memory = model(x).logits
    assert (with_memory - plain).abs().max() > 1e-3
    got, errors = {}, []
    a_inside, b_done = threading.Event(), threading.Event()

    def a():
        try:
            with knn_memory(tiny_lm, store, SETTINGS, horizon=64) as st, \
                    matrix_tokens(tiny_lm, tokens):
                a_inside.set()
                assert b_done.wait(60)
                got["a"], got["a_searches"] = model(x).logits, st.stats["searches"]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            a_inside.set()

    def b():
        try:
            assert a_inside.wait(60)
            got["b_empty"] = current_call().empty
            got["b"] = model(x).logits
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            b_done.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert got["b_empty"]
    torch.testing.assert_close(got["b"], plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["a"], with_memory, rtol=0, atol=1e-6)
    assert got["a_searches"] > 0
    assert current_call().empty  # the main thread never saw either
