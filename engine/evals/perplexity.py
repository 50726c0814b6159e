"""Perplexity of later chapters: window only vs window + kNN memory.

Pride and Prejudice with invented names; the past is chapters 1..K (indexed into
the kNN store), chapters K+1..K+M are scored with window W (engine.score blocks),
each chapter after the previous ones (which stay readable through memory).
"""
from __future__ import annotations

import json
import math
import time


def add_arguments(p) -> None:
    from ..score import add_knn_arguments

    p.add_argument("--k-chapters", type=int, default=3, help="chapters in the past")
    p.add_argument("--chapters", type=int, default=1, help="later chapters scored")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--json", action="store_true")
    add_knn_arguments(p)


def run(args) -> int:
    from ..memory.attention import index_tokens
    from ..memory.knn import new_store
    from ..models import load
    from ..score import score_tokens, settings_from_args
    from ._book import encode_chapters, renamed_chapters

    t0 = time.perf_counter()
    lm = load(getattr(args, "model", None))
    progress = not getattr(args, "no_progress", False)
    K, M, W = args.k_chapters, args.chapters, args.window
    chapters = encode_chapters(lm, [t for t, _ in renamed_chapters()[:K + M]])
    settings = settings_from_args(args)
    past = [t for c in chapters[:K] for t in c]
    scored = [t for c in chapters[K:K + M] for t in c]
    store = new_store(None, lm, settings)
    index_tokens(lm, store, past, positions=range(len(past)), progress=progress)
    t = time.perf_counter()
    none = score_tokens(lm, past, scored, W, None, settings)
    t_none = time.perf_counter() - t
    t = time.perf_counter()
    knn = score_tokens(lm, past, scored, W, store, settings, progress=progress)
    t_knn = time.perf_counter() - t
    ppl = lambda lp: math.exp(-sum(lp) / len(lp))  # noqa: E731
    out = {"model": lm.name, "past_tokens": len(past), "scored_tokens": len(scored),
           "window": W, "perplexity_window": round(ppl(none), 3),
           "perplexity_knn": round(ppl(knn), 3), "seconds_window": round(t_none, 1),
           "seconds_knn": round(t_knn, 1), "settings": settings.to_dict(),
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"chapters {K + 1}..{K + M} ({len(scored)} tokens) after {K} chapters "
              f"({len(past)} tokens), W={W}: perplexity window {out['perplexity_window']}"
              f"  window+kNN {out['perplexity_knn']}  ({t_none:.1f}s / {t_knn:.1f}s)")
    return 0
