"""Sentiment steering through memory (the seed's experiment): the kNN memory, not the
prompt, holds a positive (or negative) view of a subject; a neutral opening about
the subject is continued over N seeds; VADER compound of each continuation is
reported as median and IQR for no memory, positive memory and negative memory, and,
for reference, for the memory's text placed in the prompt before the opening.

The figures, with the commands, date and machine: docs/measurements.md (Sentiment
steering).
"""
from __future__ import annotations

import json
import time

import numpy as np

SUBJECT = "Aunt Venna"
MEMORY = {
    "positive": (
        "Aunt Venna was the kindest, warmest and most wonderful person in the whole valley. "
        "Everyone loved her dearly. Her laughter was a joy, her cooking was delicious, and "
        "her garden was beautiful and full of happy children. Visiting Aunt Venna was always "
        "a delight: she was generous, gentle, cheerful and wise, and her love made every day "
        "bright. I adored Aunt Venna, and I was always glad and grateful to see her."),
    "negative": (
        "Aunt Venna was the cruelest, coldest and most hateful person in the whole valley. "
        "Everyone feared and despised her. Her laughter was bitter, her cooking was awful, "
        "and her garden was ugly, dead and full of rot. Visiting Aunt Venna was always "
        "miserable: she was mean, angry, spiteful and stupid, and her hatred made every day "
        "dark. I hated Aunt Venna, and I was always sad and afraid to see her."),
}
OPENING = "That afternoon I walked up the hill to visit Aunt Venna. I thought about her, and"


def add_arguments(p) -> None:
    from ..score import add_knn_arguments

    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first..first+N-1 (other seeds than a setting was chosen on)")
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--modes", default="inject",
                   help="kNN read modes: inject (preset from --knn-preset, default steer), attend")
    p.add_argument("--json", action="store_true")
    add_knn_arguments(p)


def sample(lm, prompt_ids, n, seed, temperature=0.8, top_p=0.95, context=None):
    """Top-p sampling with a DynamicCache; ``context`` wraps every forward pass."""
    import contextlib

    import torch
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(seed)
    cache = DynamicCache(config=lm.model.config)
    dev = lm.model.device
    x, out = torch.tensor([prompt_ids], device=dev), []
    eos = lm.eos_ids
    ctx = context or contextlib.nullcontext
    with torch.no_grad(), ctx():
        for _ in range(n):
            # sampled on the host with a CPU generator: the same draws on any device
            logits = lm.model(x, past_key_values=cache, use_cache=True).logits[0, -1].float().cpu()
            probs = torch.softmax(logits / temperature, -1)
            sp, si = probs.sort(descending=True)
            keep = sp.cumsum(0) - sp < top_p
            sp = sp * keep
            tok = int(si[torch.multinomial(sp / sp.sum(), 1, generator=gen)])
            if tok in eos:
                break
            out.append(tok)
            x = torch.tensor([[tok]], device=dev)
    return out


def run(args) -> int:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from ..context import encode
    from ..memory.attention import index_tokens, knn_memory
    from ..memory.knn import KNNStore
    from ..models import load
    from ..score import settings_from_args

    t0 = time.perf_counter()
    lm = load(getattr(args, "model", None))
    vader = SentimentIntensityAnalyzer()
    base = settings_from_args(args)
    if getattr(args, "knn_preset", None) is None:
        base = base.changed(preset="steer")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    depth, kv, hd = lm.shape
    layers = sorted({l for m in modes for l in base.changed(mode=m).read_layers(depth)})
    stores = {}
    for view, text in MEMORY.items():
        store = KNNStore(None, layers, kv, hd, lm.fingerprint, base, depth)
        index_tokens(lm, store, encode(lm.tokenizer, text), progress=False)
        stores[view] = store
    prompt = encode(lm.tokenizer, OPENING)
    conditions = [("none", None, None)] + [("prompt:" + v, "prompt", v) for v in MEMORY] + \
        [(f"{m}:{v}", m, v) for m in modes for v in MEMORY]
    results, examples = {}, {}
    for name, mode, view in conditions:
        scores = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            ctx, ids_in = None, prompt
            if mode == "prompt":  # reference: the memory's text read as context
                ids_in = encode(lm.tokenizer, MEMORY[view] + "\n\n" + OPENING)
            elif mode is not None:
                s = base.changed(mode=mode)
                ctx = (lambda s=s, v=view: knn_memory(lm, stores[v], s))
            ids = sample(lm, ids_in, args.new_tokens, seed, args.temperature, args.top_p, ctx)
            text = lm.tokenizer.decode(ids)
            scores.append(vader.polarity_scores(text)["compound"])
            if seed == args.first_seed:
                examples[name] = text
        q1, med, q3 = np.percentile(scores, [25, 50, 75])
        results[name] = {"median": round(float(med), 3), "iqr": round(float(q3 - q1), 3),
                         "mean": round(float(np.mean(scores)), 3)}
        if not args.json:
            print(f"{name:<18} median {med:+.3f}  IQR {q3 - q1:.3f}  "
                  f"(seed {args.first_seed}: {examples[name][:70]!r})", flush=True)
    out = {"model": lm.name, "seeds": args.seeds, "first_seed": args.first_seed,
           "new_tokens": args.new_tokens,
           "layers": layers, "settings": base.to_dict(), "results": results,
           "examples": examples, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"total {out['seconds']}s; layers {layers}; preset {base.preset}")
    return 0
