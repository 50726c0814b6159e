"""Perplexity of later chapters: window only vs window + kNN / memory matrix / both.

Pride and Prejudice with invented names; the past is chapters 1..K (indexed into
the kNN store), chapters K+1..K+M are scored with window W (engine.score blocks),
each chapter after the previous ones (which stay readable through memory). With
--matrix, chapters 1..K are also written into a fresh memory matrix (CountSketch read,
or --matrix-adapter) and scored with its memory tokens alone and with kNN ("all"), and,
as a control, with a matrix written from as many tokens of chapters 40 on.
"""
from __future__ import annotations

import json
import math
import time


def add_arguments(p) -> None:
    from ..score import add_knn_arguments, add_matrix_arguments

    p.add_argument("--k-chapters", type=int, default=3, help="chapters in the past")
    p.add_argument("--chapters", type=int, default=1, help="later chapters scored")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--matrix", action="store_true", help="also matrix and kNN + matrix")
    p.add_argument("--json", action="store_true")
    add_knn_arguments(p)
    add_matrix_arguments(p)


def run(args) -> int:
    from ..memory.attention import index_tokens
    from ..memory.knn import new_store
    from ..models import load
    from ..score import matrix_tokens_for, score_tokens, settings_from_args
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
    extra = {}
    if args.matrix:
        tokens = matrix_tokens_for(lm, past, args)
        t = time.perf_counter()
        extra["perplexity_matrix"] = round(ppl(score_tokens(lm, past, scored, W, None,
                                                            settings, tokens=tokens)), 3)
        extra["seconds_matrix"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        extra["perplexity_all"] = round(ppl(score_tokens(lm, past, scored, W,
                                                         store.clone(len(past), settings),
                                                         settings, tokens=tokens)), 3)
        extra["seconds_all"] = round(time.perf_counter() - t, 1)
        # control: a matrix of as many tokens from far later in the book (chapters 40 on):
        # a gain that survives it comes from the extra tokens, not from remembering
        other = [t for c in encode_chapters(lm, [t for t, _ in renamed_chapters()[39:]])
                 for t in c][:len(past)]
        tokens = matrix_tokens_for(lm, other, args)
        extra["perplexity_matrix_control"] = round(ppl(score_tokens(
            lm, past, scored, W, None, settings, tokens=tokens)), 3)
        extra["matrix_adapter"] = getattr(args, "matrix_adapter", None)
    out = {"model": lm.name, "past_tokens": len(past), "scored_tokens": len(scored),
           "window": W, "perplexity_window": round(ppl(none), 3),
           "perplexity_knn": round(ppl(knn), 3), "seconds_window": round(t_none, 1),
           "seconds_knn": round(t_knn, 1), "settings": settings.to_dict(),
           **extra, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"chapters {K + 1}..{K + M} ({len(scored)} tokens) after {K} chapters "
              f"({len(past)} tokens), W={W}: perplexity window {out['perplexity_window']}"
              f"  window+kNN {out['perplexity_knn']}  ({t_none:.1f}s / {t_knn:.1f}s)"
              + (f"  window+matrix {extra['perplexity_matrix']}  window+kNN+matrix "
                 f"{extra['perplexity_all']}  window+matrix of other chapters (control) "
                 f"{extra['perplexity_matrix_control']}" if extra else ""))
    return 0
