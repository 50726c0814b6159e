"""Memory-aware attention on tiny random models: exactness, decoding, read modes.

MNEMOSYNE_TEST_DEVICE=cuda runs them on a GPU (the models there, the store and its
search on the host, as in use)."""
import os

import pytest
import torch

from engine.memory.attention import index_tokens, install, knn_memory, rotate, rotary_inv_freq
from engine.memory.knn import KNNSettings, new_store
from engine.models import LoadedModel
from engine.tiny import tiny_model

N, W = 80, 16
DEVICE = os.environ.get("MNEMOSYNE_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def lm():
    model, tok = tiny_model()
    lm = LoadedModel.wrap(model.to(DEVICE), tok, "tiny")
    install(lm)
    return lm


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 250, (1, N), generator=g).to(DEVICE)


def _full_store(lm, ids, **kw):
    depth = lm.model.config.num_hidden_layers
    s = KNNSettings(layers=tuple(range(depth)), k=ids.shape[1], position="exact", **kw)
    store = new_store(None, lm, s)
    # one chunk: every stored key/value was computed with the whole past in view
    index_tokens(lm, store, ids[0].tolist(), chunk=ids.shape[1], overlap=0, progress=False)
    return s, store


@torch.no_grad()
def test_exact_positions_reproduce_full_attention(lm, ids):
    full = lm.model(ids).logits
    s, store = _full_store(lm, ids)
    assert len(store) == N
    with knn_memory(lm, store, s, offset=0, window=W) as st:
        got = lm.model(ids).logits
    assert st.stats["searches"] > 0
    torch.testing.assert_close(got, full, atol=2e-4, rtol=1e-4)
    with knn_memory(lm, None, s, offset=0, window=W):
        window_only = lm.model(ids).logits
    # the window alone is far off (a random tiny model barely uses old context, so
    # compare with the memory's own error rather than an absolute figure)
    err = (got - full).abs().max()
    assert (window_only - full).abs().max() > max(1e-3, 20 * err)


@torch.no_grad()
def test_exact_with_shifted_local_positions(lm, ids):
    """Local positions need not be book positions: offset maps one to the other."""
    full = lm.model(ids).logits
    s, store = _full_store(lm, ids)
    c = 40  # feed only tokens 40.. with local positions 0..; the rest is memory
    with knn_memory(lm, store, s, offset=c, window=W):
        got = lm.model(ids[:, c:], position_ids=torch.arange(N - c, device=DEVICE)[None]).logits
    torch.testing.assert_close(got, full[:, c:], atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_shared_search_with_everything_retrievable_is_exact(lm, ids):
    """search_every: later layers take their top-k from the searching layer's hits by
    their own keys; with every key a hit that is still full attention, at half the
    index searches (of the tiny model's 4 layers, 0 and 3 search)."""
    full = lm.model(ids).logits
    s, store = _full_store(lm, ids)
    with knn_memory(lm, store, s.changed(search_every=1), offset=0, window=W) as every_layer:
        lm.model(ids)
    with knn_memory(lm, store, s.changed(search_every=3), offset=0, window=W) as st:
        got = lm.model(ids).logits
    torch.testing.assert_close(got, full, atol=2e-4, rtol=1e-4)
    assert 0 < st.stats["searches"] * 2 <= every_layer.stats["searches"]


def test_rerank_is_top_k_of_the_pool():
    import numpy as np

    from engine.memory.attention.knn_search import rerank, unique_rows

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((50, 8)).astype(np.float16)
    vecs = torch.from_numpy(rng.standard_normal((4, 2, 8)).astype(np.float32))
    pool = unique_rows(rng.integers(-1, 50, (4, 12)))
    scores, ids = rerank(keys, vecs, pool, 3)
    assert ids.shape == scores.shape == (4, 2, 3)
    for i in range(4):
        rows = [r for r in pool[i] if r >= 0]
        assert len(rows) == len(set(rows))  # duplicates dropped
        for h in range(2):  # both vectors of row i choose from row i's pool
            v = vecs[i, h].numpy()
            best = sorted(rows, key=lambda r: -float(keys[r].astype(np.float32) @ v))
            assert ids[i, h].tolist() == best[:3]
    _, few = rerank(keys, vecs, np.full((4, 2), -1), 3)
    assert (few == -1).all()  # nothing in the pool: no hit


@torch.no_grad()
def test_too_few_neighbours_is_not_exact(lm, ids):
    full = lm.model(ids).logits
    s, store = _full_store(lm, ids)
    with knn_memory(lm, store, s.changed(k=2), offset=0, window=W):
        got = lm.model(ids).logits
    assert (got - full).abs().max() > 1e-4


@torch.no_grad()
def test_incremental_decoding_matches_one_pass(lm, ids):
    s = KNNSettings(layers=(1, 3), k=8)
    store = new_store(None, lm, s)
    index_tokens(lm, store, ids[0, :48].tolist(), progress=False)
    prompt = ids[:, 48:64]
    cont = ids[:, 64:72]
    with knn_memory(lm, store, s, horizon=48):
        # logits at positions 63..70: the ones decoding produces step by step
        one = lm.model(torch.cat([prompt, cont], 1)).logits[:, 15:23]
        steps = _decode_logits(lm, prompt, cont)
    torch.testing.assert_close(steps, one, atol=2e-4, rtol=1e-4)
    with knn_memory(lm, None, s):
        plain = lm.model(torch.cat([prompt, cont], 1)).logits[:, 15:23]
    assert (plain - one).abs().max() > 1e-4  # memory was read


@torch.no_grad()
@pytest.mark.parametrize("kw,read", [
    (dict(position="exact"), dict(offset=48)),
    (dict(heads=0.5), dict(horizon=48)),
    (dict(k=100), dict(horizon=40)),                      # fewer entries than k
    (dict(gap=5), dict(horizon=48, window=6)),            # sliding window: placement moves
    (dict(approx_threshold=16, nprobe=64), dict(horizon=48)),    # IVF: scores recomputed
    (dict(approx_threshold=16, approx="hnsw"), dict(horizon=48)),
    (dict(search_every=2), dict(horizon=48)),             # layer 2 re-ranks layer 0's hits
    (dict(search_every=2, heads=0.5, position="exact"), dict(offset=48)),
])
def test_decode_step_matches_one_pass_variants(lm, ids, kw, read):
    """The single-query decode path (_attend_one) gives what the general path gives."""
    s = KNNSettings(**{"layers": (0, 2, 3), "k": 8, **kw})
    store = new_store(None, lm, s)
    index_tokens(lm, store, ids[0, :48].tolist(), progress=False)
    store.build_index()
    prompt, cont = ids[:, 48:64], ids[:, 64:72]
    with knn_memory(lm, store, s, **read) as st:
        one = lm.model(torch.cat([prompt, cont], 1)).logits[:, 15:23]
        searches = st.stats["searches"]
        steps = _decode_logits(lm, prompt, cont)
    assert st.stats["searches"] > 2 * searches
    torch.testing.assert_close(steps, one, atol=2e-4, rtol=1e-4)


def _decode_logits(lm, prompt, cont):
    """Logits of the last prompt position and of cont[:-1], decoded one token at a time
    with a cache (what a one-pass forward gives at those positions)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    out = lm.model(prompt, past_key_values=cache, use_cache=True)
    steps = [out.logits[:, -1:]]
    for t in range(cont.shape[1] - 1):
        out = lm.model(cont[:, t:t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    return torch.cat(steps, 1)


@torch.no_grad()
def test_behind_placement_search_is_exact(lm):
    """(R(-p') q) . u equals q . R(p') u: the search score is the attention logit."""
    inv = rotary_inv_freq(lm)
    g = torch.Generator().manual_seed(0)
    q, u = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    p = torch.tensor([3.0, -7.0, 100.0, 0.0, 4000.0])
    lhs = (rotate(q, -p, inv) * u).sum(-1)
    rhs = (q * rotate(u, p, inv)).sum(-1)
    torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_gate_mode(lm, ids):
    s = KNNSettings(layers=(2,), k=8, gate=True, gate_bias=-30.0)
    store = new_store(None, lm, s)
    index_tokens(lm, store, ids[0, :48].tolist(), progress=False)
    x = ids[:, 48:]
    with knn_memory(lm, None, s):
        plain = lm.model(x).logits
    with knn_memory(lm, store, s, horizon=48):
        closed = lm.model(x).logits
    with knn_memory(lm, store, s.changed(gate_bias=30.0), horizon=48):
        opened = lm.model(x).logits
    torch.testing.assert_close(closed, plain, atol=1e-4, rtol=1e-4)
    assert (opened - plain).abs().max() > 1e-3


def test_heads_fraction(lm):
    with knn_memory(lm, None, KNNSettings(heads=0.34)) as st:
        assert st.heads(9) == [0, 4, 8]
    with knn_memory(lm, None, KNNSettings(heads=1.0)) as st:
        assert st.heads(4) == [0, 1, 2, 3]


def test_presets_scale_with_depth():
    assert KNNSettings(mode="inject", preset="recall").read_layers(30) == (25,)
    assert KNNSettings(mode="inject", preset="steer").read_layers(30) == (18, 20, 22)
    assert KNNSettings(mode="inject", preset="recall").read_layers(12) == (10,)
    assert KNNSettings(mode="inject", preset="steer").read_layers(12) == (7, 8, 9)
    assert KNNSettings().read_layers(30) == tuple(range(15, 30))  # measured default
    assert KNNSettings().read_layers(4) == (2, 3)


@torch.no_grad()
@pytest.mark.parametrize("itype,r,changes", [(2, 1.0, False), (2, 0.1, True),
                                             (3, 0.33, True), (1, 0.5, True)])
def test_inject_types(lm, ids, itype, r, changes):
    s = KNNSettings(mode="inject", preset="steer",
                    inject=dict(inject_type=itype, r=r, mf=5.0, bf=0.0, k=3))
    store = new_store(None, lm, s)
    index_tokens(lm, store, ids[0, :48].tolist(), progress=False)
    x = ids[:, 48:]
    with knn_memory(lm, None, s):
        plain = lm.model(x).logits
    with knn_memory(lm, store, s, horizon=48) as st:
        got = lm.model(x).logits
    assert st.stats["searches"] > 0
    diff = (got - plain).abs().max().item()
    assert (diff > 1e-4) == changes, diff
    with knn_memory(lm, store, s, horizon=0):  # nothing readable: no surgery
        none = lm.model(x).logits
    torch.testing.assert_close(none, plain, atol=1e-5, rtol=1e-5)


def _other_model(kind):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from engine.tiny import byte_tokenizer
    tok = byte_tokenizer()
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                          max_position_embeddings=256)
        model = Qwen2ForCausalLM(cfg)
    model.set_attn_implementation("sdpa")
    return LoadedModel.wrap(model.to(DEVICE), tok, kind)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_other_decoders_exact(kind, ids):
    lm = _other_model(kind)
    x = ids[:, :48]
    full = lm.model(x).logits
    s, store = _full_store(lm, x)
    with knn_memory(lm, store, s, offset=0, window=8):
        got = lm.model(x).logits
    torch.testing.assert_close(got, full, atol=2e-4, rtol=1e-4)
