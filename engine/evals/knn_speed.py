"""kNN memory speed: decode tokens/s with memory on vs off (same run), and retrieval
time per token as the store grows to 1M vectors.

Decode: one prompt, greedy tokens, memory on and off interleaved, best of
``--knn-repeats``; the store holds real keys/values of book text. Retrieval: the
memory work of one decoded token over all memory layers (index searches, re-ranks
when ``search_every`` > 1, value gathers), on stores of synthetic Gaussian keys of
the model's head shape, exact (flat) below the approximate threshold and IVF-SQ8 (or
HNSW) above it; the build time of each index is reported too.
"""
from __future__ import annotations

import time

import numpy as np


def add_arguments(p) -> None:
    from ..score import add_knn_arguments

    add_speed_arguments(p)
    p.add_argument("--json", action="store_true")
    add_knn_arguments(p)


def add_speed_arguments(p) -> None:
    p.add_argument("--knn-store-tokens", type=int, default=2048,
                   help="book tokens in the store for the decode comparison")
    p.add_argument("--knn-sizes", default="10000,100000,1000000",
                   help="store sizes (vectors per KV head) for retrieval timing")
    p.add_argument("--knn-repeats", type=int, default=2)
    p.add_argument("--knn-decode-tokens", type=int, default=48)


def _decode_rate(lm, prompt, n, context=None):
    import contextlib

    import torch
    from transformers import DynamicCache

    ctx = context or contextlib.nullcontext
    cache = DynamicCache(config=lm.model.config)
    with torch.no_grad(), ctx():
        out = lm.model(torch.tensor([prompt], device=lm.model.device), past_key_values=cache,
                       use_cache=True)
        tok = out.logits[0, -1].argmax()
        t = time.perf_counter()
        for _ in range(n):
            out = lm.model(tok.view(1, 1), past_key_values=cache, use_cache=True)
            tok = out.logits[0, -1].argmax()
        if tok.is_cuda:  # the loop queues GPU work without waiting for it
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t)


def decode_speed(lm, settings, store_tokens=2048, new_tokens=48, repeats=2,
                 prompt_tokens=256) -> dict:
    from ..memory.attention import index_tokens, knn_memory
    from ..memory.knn import new_store
    from ._book import encode_chapters, renamed_chapters

    ids = []
    for text, _ in renamed_chapters():  # as many chapters as the store and prompt need
        ids += encode_chapters(lm, [text])[0]
        if len(ids) >= store_tokens + prompt_tokens:
            break
    if len(ids) < store_tokens + prompt_tokens:
        raise ValueError(f"the book has {len(ids)} tokens: too few for a store of "
                         f"{store_tokens} and a prompt of {prompt_tokens}")
    past, prompt = ids[:store_tokens], ids[store_tokens:store_tokens + prompt_tokens]
    store = new_store(None, lm, settings)
    index_tokens(lm, store, past, progress=False)
    store.build_index()
    on, off = [], []
    for _ in range(repeats):
        off.append(_decode_rate(lm, prompt, new_tokens))
        on.append(_decode_rate(lm, prompt, new_tokens,
                               lambda: knn_memory(lm, store, settings)))
    return {"decode_off_tokens_per_s": round(max(off), 2),
            "decode_on_tokens_per_s": round(max(on), 2),
            "on_off_ratio": round(max(on) / max(off), 3), "store_tokens": len(store),
            "layers": list(settings.read_layers(lm.model.config.num_hidden_layers)),
            "mode": settings.mode, "k": settings.k}


def retrieval_speed(lm, settings, sizes=(10_000, 100_000, 1_000_000), tokens=200) -> list:
    """Per decoded token, what memory reading costs outside the model: at each memory
    layer either an index search of every KV head (``search_every``) or a re-rank of
    the searching layer's hits, then the gather of the values. Every layer is played
    on one stored layer of ``n`` synthetic keys (the same size and access pattern as
    the real layers; storing 15 real layers of 1M tokens would take 11 GB)."""
    import torch

    from ..memory.attention.knn_search import Pool, rerank_heads, searching_layers, unique_rows
    from ..memory.knn import KNNStore

    depth, kv, hd = lm.shape
    heads = lm.model.config.num_attention_heads
    groups = heads // kv
    layers = settings.read_layers(depth) if settings.mode == "attend" else (0,)
    every = max(1, settings.search_every) if settings.mode == "attend" else 1
    searching = searching_layers(layers, every)
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        store = KNNStore(None, (0,), kv, hd, "bench", settings, depth)
        keys = rng.standard_normal((kv, n, hd), dtype=np.float32).astype(np.float16)
        store.add({0: keys}, {0: keys}, np.arange(n))
        del keys
        t = time.perf_counter()
        store.build_index()
        build = time.perf_counter() - t
        q = torch.from_numpy(rng.standard_normal((tokens, kv, groups, hd), dtype=np.float32))
        values = torch.from_numpy(store.values[0]).reshape(kv * n, hd)
        offsets = torch.arange(0, kv * n, n).view(kv, 1, 1)

        def token(i):
            searches = 0
            for layer in layers:
                if layer in searching:
                    _, ids, _ = store.search_layer(0, q[i], settings.k)
                    searches += kv
                    pool = Pool(unique_rows(ids.reshape(1, -1).numpy()), kv, n)
                else:
                    ids = rerank_heads(store.keys[0], q[i][:, None], pool,
                                       settings.k)[1].view(kv, groups, -1)
                flat = (ids.clamp_min(0) + offsets).view(-1)
                values.index_select(0, flat).float()
            return searches

        token(0)  # warm up
        t = time.perf_counter()
        searches = sum(token(i) for i in range(tokens))
        ms = (time.perf_counter() - t) / tokens * 1000
        rows.append({"vectors": n, "index": store.kind, "ms_per_token": round(ms, 3),
                     "memory_layers": len(layers), "search_every": every,
                     "searches_per_token": searches // tokens,
                     "ms_per_layer": round(ms / len(layers), 3),
                     "build_s": round(build, 1), "query_heads": heads, "kv_heads": kv})
        del store
    return rows


def knn_speed(lm, args) -> dict:
    """What engine/evals/speed.py reports under "knn" (flags from add_speed_arguments)."""
    from ..score import settings_from_args

    settings = settings_from_args(args)
    out = decode_speed(lm, settings, getattr(args, "knn_store_tokens", 2048),
                       getattr(args, "knn_decode_tokens", 48),
                       getattr(args, "knn_repeats", 2))
    sizes = [int(x) for x in str(getattr(args, "knn_sizes", "10000,100000,1000000")).split(",")]
    out["retrieval"] = retrieval_speed(lm, settings, sizes)
    return out

