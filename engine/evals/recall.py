"""Recall of names from far back: window only vs window + kNN vs full context.

Pride and Prejudice with invented names (engine/evals/_book.py). For each K, the
past is chapters 1..K; chapter K+1 is scored with window W (engine.score blocks:
each token sees W..2W-1 tokens). Reported: mean log-probability of the tokens of
name mentions whose previous mention lies before the token's context (so only
memory, or a longer context, can supply it), for window only, window + kNN in each
read mode, and the full-context ceiling (one pass over as much past as the model's
context holds, capped by --full-context). Gap closed = (kNN - window)/(full - window).
"""
from __future__ import annotations

import json
import time

import numpy as np


def add_arguments(p) -> None:
    from ..score import add_knn_arguments, add_matrix_arguments

    p.add_argument("--k-chapters", default="3,5", help="comma-separated K values")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--modes", default="attend,inject",
                   help="kNN read modes to compare: attend, inject (preset recall)")
    p.add_argument("--full-context", type=int, default=8192,
                   help="cap on the full-context ceiling's tokens (model limit applies)")
    p.add_argument("--matrix", default="",
                   help="also score with the memory matrix: 'matrix', 'all' (kNN attend + "
                        "matrix) or 'matrix,all'; --matrix-adapter for a trained read path")
    p.add_argument("--json", action="store_true")
    add_knn_arguments(p)
    add_matrix_arguments(p)


def _mentions(lm, texts_spans, offset_tokens):
    """Per chapter: token ids, offsets, and mentions [(first token, last token+1, name)]."""
    out = []
    for text, spans in texts_spans:
        enc = lm.tokenizer(text + "\n\n", add_special_tokens=False,
                           return_offsets_mapping=True)
        offs = np.array(enc.offset_mapping)
        ment = []
        for a, b, name in spans:
            toks = np.nonzero((offs[:, 0] < b) & (offs[:, 1] > a))[0]
            if toks.size:
                ment.append((int(toks[0]), int(toks[-1]) + 1, name))
        out.append((list(enc.input_ids), ment))
    return out


def full_context_logprobs(lm, past, ids, limit):
    """Log-probs of ids with one causal pass over the last ``limit`` tokens of the book."""
    import torch

    allids = list(past) + list(ids)
    limit = min(limit, lm.context_length)
    start = max(0, len(allids) - limit)
    assert len(ids) < limit, "the scored chapter alone exceeds the full context"
    x = torch.tensor([allids[start:]], device=lm.model.device)
    with torch.no_grad():
        hidden = lm.model.base_model(input_ids=x, use_cache=False).last_hidden_state[0]
        head = lm.model.get_output_embeddings()
        first = len(allids) - len(ids) - start - 1
        out = []
        for c in range(first, len(allids) - start - 1, 512):
            rows = hidden[c:min(c + 512, len(allids) - start - 1)]
            lp = torch.log_softmax(head(rows).float(), -1)
            tgt = torch.tensor(allids[start + c + 1: start + c + 1 + rows.shape[0]], device=x.device)
            out.extend(lp.gather(1, tgt[:, None])[:, 0].tolist())
    return out, len(allids) - start


def run(args) -> int:
    from ..memory.attention import index_tokens
    from ..memory.knn import KNNStore
    from ..models import load
    from ..score import matrix_tokens_for, score_tokens, settings_from_args
    from ._book import renamed_chapters

    t0 = time.perf_counter()
    lm = load(getattr(args, "model", None))
    progress = not getattr(args, "no_progress", False)
    ks = sorted(int(k) for k in str(args.k_chapters).split(","))
    W = args.window
    chapters = _mentions(lm, renamed_chapters()[: max(ks) + 1], None)
    base = settings_from_args(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    settings = {m: base.changed(mode=m) for m in modes}
    extra = [m.strip() for m in args.matrix.split(",") if m.strip()]
    depth, kv, hd = lm.shape
    layers = sorted({l for s in settings.values() for l in s.read_layers(depth)})
    past_all = [t for ids, _ in chapters[:max(ks)] for t in ids]
    store_all = KNNStore(None, layers, kv, hd, lm.fingerprint, base, depth)
    index_tokens(lm, store_all, past_all, positions=range(len(past_all)), progress=progress)
    rows = []
    for K in ks:
        past = [t for ids, _ in chapters[:K] for t in ids]
        ids, ment = chapters[K]
        # previous mention (book position of its first token) per name, in order
        last = {}
        pos = 0
        for cids, cment in chapters[:K]:
            for a, _, name in cment:
                last[name] = pos + a
            pos += len(cids)
        targets = []  # token indices in chapter K+1 to average over
        for a, b, name in ment:
            block_start = (a // W) * W if W else 0
            ctx_start = len(past) + block_start - W
            prev = last.get(name)
            if prev is not None and prev < ctx_start:
                targets.extend(range(a, b))
            last[name] = len(past) + a
        res = {"K": K, "past_tokens": len(past), "scored_tokens": len(ids),
               "name_tokens": len(targets)}
        t = time.perf_counter()
        none = score_tokens(lm, past, ids, W, None, base)
        res["window_s"] = round(time.perf_counter() - t, 1)
        res["window"] = float(np.mean([none[i] for i in targets])) if targets else None
        res["window_all"] = float(np.mean(none))
        for m, s in settings.items():
            t = time.perf_counter()
            lp = score_tokens(lm, past, ids, W, store_all.clone(len(past), s), s)
            res[f"knn_{m}_s"] = round(time.perf_counter() - t, 1)
            res[f"knn_{m}"] = float(np.mean([lp[i] for i in targets])) if targets else None
            res[f"knn_{m}_all"] = float(np.mean(lp))
        tokens = matrix_tokens_for(lm, past, args) if extra else None
        for m in extra:  # the memory matrix alone, and with kNN (attend)
            t = time.perf_counter()
            s = base.changed(mode="attend")
            store = store_all.clone(len(past), s) if m == "all" else None
            lp = score_tokens(lm, past, ids, W, store, s, tokens=tokens)
            res[f"knn_{m}_s"] = round(time.perf_counter() - t, 1)
            res[f"knn_{m}"] = float(np.mean([lp[i] for i in targets])) if targets else None
            res[f"knn_{m}_all"] = float(np.mean(lp))
        t = time.perf_counter()
        full, n_ctx = full_context_logprobs(lm, past, ids, args.full_context)
        res["full_s"] = round(time.perf_counter() - t, 1)
        res["full_context_tokens"] = n_ctx
        res["full"] = float(np.mean([full[i] for i in targets])) if targets else None
        res["full_all"] = float(np.mean(full))
        for m in [*settings, *extra]:
            gap = (res["full"] - res["window"]) if targets else 0.0
            res[f"gap_closed_{m}"] = ((res[f"knn_{m}"] - res["window"]) / gap
                                      if targets and abs(gap) > 1e-9 else None)
        rows.append(res)
        if not args.json:
            _print(res, modes + extra)
    out = {"model": lm.name, "window": W, "modes": modes + extra,
           "matrix_adapter": getattr(args, "matrix_adapter", None), "layers": layers,
           "settings": base.to_dict(), "results": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"total {out['seconds']}s; kNN layers {layers}, k {base.k}, position "
              f"{base.position}")
    return 0


def _print(r, modes):
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"K={r['K']}: past {r['past_tokens']} tok, chapter {r['scored_tokens']} tok, "
          f"{r['name_tokens']} far name tokens")
    print(f"  name-token mean logprob: window {f(r['window'])}  full {f(r['full'])} "
          f"(ctx {r['full_context_tokens']})")
    for m in modes:
        label = {"matrix": "matrix", "all": "kNN+matrix"}.get(m, f"kNN {m}")
        print(f"  {label:<11} {f(r[f'knn_{m}'])}  gap closed {f(r[f'gap_closed_{m}'])}  "
              f"(all tokens {r[f'knn_{m}_all']:.3f} vs window {r['window_all']:.3f}, "
              f"full {r['full_all']:.3f}; {r[f'knn_{m}_s']}s)")
