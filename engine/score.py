"""Score a text as the continuation of a novel: per-token log-probabilities with a
local window of W tokens and an optional memory.

``python -m engine score --project DIR --text-file F --window W --memory none|knn|all``

The project's manuscript is the past. F is scored in blocks of ``--block`` tokens
(default W): one forward pass over [block start - W, block end) with ordinary causal
attention, so every token is predicted from at least W and fewer than W + block
tokens before it, and nothing before (block start - W) reaches it except through
memory. (A sliding-window mask would not give that cut-off: stacked layers pass
information back layers x W tokens.) Cost: (W + block) / block token-passes per token.

For ``matrix`` the manuscript is written into a fresh memory matrix (default settings,
the ``--matrix-*`` flags, or a trained adapter's), whose memory tokens every block may
read; ``all`` is kNN + matrix.

For ``knn`` the manuscript's store is loaded (or built), and F's own keys/values are
added to an in-memory overlay (never saved) before scoring: a block reads every
entry behind its context, so earlier parts of F are remembered as while writing.

Its timings: docs/measurements.md (Scoring time).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from . import context
from .settings import (KNNSettings, Matrix, MatrixSettings, SettingsError, add_flags, changes,
                       parse_inject, parse_layers)

__all__ = ["MEMORIES", "add_arguments", "add_knn_arguments", "add_matrix_arguments",
           "float_in", "int_in", "matrix_tokens_for", "parse_inject", "read_manuscript",
           "run", "score_tokens", "settings_from_args"]

MEMORIES = ("none", "knn", "matrix", "all")


def int_in(lo: int, hi: int | None = None, hi_text: str | None = None):
    """An argparse type: a whole number in lo..hi, refused with the range named."""
    def parse(text):
        try:
            v = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if v < lo or (hi is not None and v > hi):
            span = f"{lo}..{hi_text or hi}" if hi is not None else f"{lo} or more"
            raise argparse.ArgumentTypeError(f"must be {span}, not {v}")
        return v
    parse.__name__ = "whole number"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with lo_open)."""
    def parse(text):
        try:
            v = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        low_ok = lo is None or (v > lo if lo_open else v >= lo)
        if not (math.isfinite(v) and low_ok and (hi is None or v <= hi)):
            if lo is None and hi is None:
                span = "a finite number"
            else:
                span = (f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi is not None
                        else f"{'over' if lo_open else 'at least'} {lo:g}")
            raise argparse.ArgumentTypeError(f"must be {span}, not {text}")
        return v
    parse.__name__ = "number"
    return parse


def add_arguments(p) -> None:
    p.add_argument("--project", required=True, help="project folder (holds novel.db)")
    p.add_argument("--text-file", required=True, help="the text to score as continuation")
    p.add_argument("--window", type=int_in(1), default=256, help="local window W in tokens")
    p.add_argument("--memory", choices=MEMORIES, default="none")
    p.add_argument("--json", action="store_true")
    p.add_argument("--block", type=int_in(1), default=None,
                   help="tokens scored per forward pass (default: W)")
    add_knn_arguments(p)
    add_matrix_arguments(p)
    if not any("--model" in a.option_strings for a in p._actions):
        p.add_argument("--model", default=None)


def add_knn_arguments(p) -> None:
    """The --knn-* flags, one per KNNSettings field (shared by the score CLI and the
    benchmarks); not given, a field keeps its default."""
    add_flags(p, KNNSettings, prefix="knn-", defaults=True)
    p.add_argument("--no-progress", action="store_true")


def add_matrix_arguments(p) -> None:
    """The --matrix-* flags: a trained adapter, or a fresh matrix's MatrixSettings."""
    add_flags(p, Matrix, only=("adapter",), prefix="matrix-")
    add_flags(p, MatrixSettings, prefix="matrix-", defaults=True,
              note="; without --matrix-adapter")


def matrix_tokens_for(lm, past_ids, args):
    """Memory tokens of a fresh matrix holding ``past_ids`` (the --matrix-* flags)."""
    from .memory.matrix_model import matrix_of, read_tokens

    adapter = None
    if getattr(args, "matrix_adapter", None):
        from .memory.matrix_adapter import load_adapter
        adapter = load_adapter(args.matrix_adapter, lm)
        settings = adapter.settings
    else:
        settings = MatrixSettings().changed(**changes(args, MatrixSettings, "matrix-"))
    mm = matrix_of(lm, past_ids, settings)
    return read_tokens(lm, mm, adapter) if mm.writes else None


def settings_from_args(args, base=None, depth: int = 0) -> KNNSettings:
    """KNNSettings from the --knn-* flags (a parsed Namespace or one built by hand): each
    checked by its field, SettingsError naming the flag; with ``depth`` (the model's
    layers) the layers are checked against the model. A gate file turns the gate on."""
    kw = changes(args, KNNSettings, "knn-")
    if kw.get("gate_file"):
        kw["gate"] = True
    if kw.get("layers") and depth:
        try:
            parse_layers(kw["layers"], depth)
        except ValueError as e:
            raise SettingsError(f"--knn-layers: {e}.") from None
    return (base or KNNSettings()).changed(**kw)


def read_manuscript(project) -> str:
    """The book as its kNN memory holds it: the chapters' current text in order, margin
    notes inline (Novel.memory_book), so the project's store is reused as it is."""
    project = Path(project)
    try:
        from .novel import Novel
        novel = Novel.open(project)
        try:
            return novel.chapters.memory_book()
        finally:
            novel.close()
    except ImportError:
        from .store import head_texts
        return "\n\n".join((t or "").strip() for t in head_texts(project))


def score_tokens(lm, past_ids, ids, window: int, store=None, settings=None,
                 block: int | None = None, progress: bool = False,
                 tokens: dict | None = None) -> list[float | None]:
    """Log-probability of each of ``ids`` given the W..W+block-1 tokens before it (in
    past_ids + ids) and, if ``store`` is given, the kNN memory of everything before
    that. ``store`` must hold exactly past_ids (positions 0..len-1); F's entries are
    appended to it in memory. ``tokens``: memory-matrix tokens every block may read.
    None for a first token with nothing before it."""
    from contextlib import nullcontext
    import torch

    from .memory.attention import index_tokens, knn_memory, matrix_tokens

    settings = settings or KNNSettings()
    past_ids, ids = list(past_ids), list(ids)
    base, allids = len(past_ids), past_ids + ids
    if store is not None:
        if len(store) != base or (base and int(store.positions[-1]) != base - 1):
            raise ValueError("the kNN store does not hold exactly the manuscript")
        index_tokens(lm, store, ids, positions=range(base, len(allids)),
                     progress=progress, prefix=past_ids[-settings.overlap:])
        store.build_index()
    device = next(lm.model.parameters()).device
    block = max(1, int(block or window or 1))
    out: list[float | None] = []
    with torch.no_grad():
        for s in range(base, len(allids), block):
            e = min(s + block, len(allids))
            c = max(0, s - window)
            inp = torch.tensor([allids[c:e]], device=device)
            pos = torch.arange(e - c, device=device)[None]
            keep = e - s + (1 if s > c else 0)
            mx = matrix_tokens(lm, tokens) if tokens else nullcontext()
            with knn_memory(lm, store, settings, offset=c), mx:
                logits = lm.model(input_ids=inp, position_ids=pos, use_cache=False,
                                  logits_to_keep=keep).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            if s == c:  # the very first token of the book: nothing to predict from
                out.append(None)
                rows, targets = lp[:-1], allids[s + 1:e]
            else:
                rows, targets = lp[:-1], allids[s:e]
            t = torch.tensor(targets, device=lp.device)
            out.extend(lp[: len(targets)].gather(1, t[:, None])[:, 0].tolist()
                       if len(targets) else [])
            del rows
    return out


def run(args) -> int:
    from .importing import decode_text, read_bytes
    from .memory.knn_index import ensure_store
    from .models import load

    t0 = time.perf_counter()
    if args.window < 1 or (args.block is not None and args.block < 1):
        raise ValueError("--window and --block must be 1 or more tokens.")
    path = Path(args.text_file)
    text, _ = decode_text(read_bytes(path), path.name)
    if not text.strip():
        raise ValueError(f"{path.name} holds no text to score.")
    manuscript = read_manuscript(args.project)
    lm = load(getattr(args, "model", None))
    depth = lm.shape[0]
    settings = settings_from_args(args, depth=depth)  # bad layers: refused before any work
    if args.memory in ("matrix", "all") and getattr(args, "matrix_layer", None) is not None \
            and not 0 <= args.matrix_layer < depth:
        raise ValueError(f"--matrix-layer must lie in 0..{depth - 1} for this model.")
    progress = not getattr(args, "no_progress", False) and not args.json
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc.input_ids), [list(map(int, o)) for o in enc.offset_mapping]
    past = context.encode(lm.tokenizer, manuscript)
    if not ids or (not past and len(ids) < 2):
        raise ValueError(f"{path.name} is too short to score: with an empty novel the "
                         "first token has nothing before it; give at least two tokens.")
    store = None
    if args.memory in ("knn", "all") and past:
        store = ensure_store(args.project, lm, past, settings, progress=progress)
    tokens = matrix_tokens_for(lm, past, args) if args.memory in ("matrix", "all") else None
    t1 = time.perf_counter()
    logprobs = score_tokens(lm, past, ids, args.window, store, settings,
                            block=args.block, progress=progress, tokens=tokens)
    seconds = time.perf_counter() - t1
    result = {"tokens": [lm.tokenizer.decode([i]) for i in ids], "offsets": offsets,
              "logprobs": logprobs, "window": args.window, "memory": args.memory,
              "seconds": round(seconds, 3)}
    if args.json:
        print(json.dumps(result))
    else:
        vals = [x for x in logprobs if x is not None]
        mean = sum(vals) / max(1, len(vals))
        print(f"tokens {len(ids)}  mean logprob {mean:.4f}  perplexity "
              f"{__import__('math').exp(-mean):.2f}  window {args.window}  memory "
              f"{args.memory}  scoring {seconds:.1f}s  (total {time.perf_counter() - t0:.1f}s)",
              file=sys.stdout)
    return 0
