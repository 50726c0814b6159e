"""Memory-matrix write rule: does M recognise what was written, and does it collapse?

Segments of the renamed Pride and Prejudice (engine/evals/_book.py) are read up to the
memory layer once; the first ``--written`` are written into M, the next ``--unseen``
are not. Reported per setting (gain, bias, lr): recognition AUC (score of a segment =
mean of its top-8 slot scores v; written vs unseen; the lr 0 row is the no-write
control, whose AUC is chance for this split), the mean
|cosine| between rows (1 = collapsed onto one direction), gate mass per write, and
the write time per segment. Used to choose MatrixSettings' defaults.
"""
from __future__ import annotations

import itertools
import json
import time

import numpy as np

from ..settings import MatrixSettings, add_flags, changes


def add_arguments(p) -> None:
    p.add_argument("--segment", type=int, default=128, help="tokens per written segment")
    p.add_argument("--written", type=int, default=120)
    p.add_argument("--unseen", type=int, default=60)
    add_flags(p, MatrixSettings, only=("layer", "slots"), defaults=True)  # what the grid does not sweep
    p.add_argument("--gains", default="0.5,2")
    p.add_argument("--biases", default="0,3,6")
    p.add_argument("--lrs", default="0.5,1")
    p.add_argument("--json", action="store_true")


def auc(pos, neg) -> float:
    """P(score of a written segment > score of an unseen one), ties half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def evaluate(states, n_written, settings) -> dict:
    from ..memory.matrix import MemoryMatrix

    mm = MemoryMatrix(states[0].shape[1], settings)
    t = time.perf_counter()
    gates = [mm.write(s)["gate_mean"] for s in states[:n_written]]
    per_write = (time.perf_counter() - t) / max(1, n_written)
    score = lambda s: float(np.sort(mm.scores(mm.encode(s.mean(0))))[-8:].mean())  # noqa: E731
    seen = [score(s) for s in states[1:n_written]]  # the first write is the centre itself
    unseen = [score(s) for s in states[n_written:]]
    rows = mm.M[np.random.default_rng(0).choice(len(mm.M), 512, replace=False)]
    cos = np.abs(rows @ rows.T)[~np.eye(len(rows), dtype=bool)].mean()
    return {"auc": round(auc(seen, unseen), 3), "row_cos": round(float(cos), 3),
            "gate_mean": round(float(np.mean(gates)), 4), "write_ms": round(per_write * 1e3, 2)}


def run(args) -> int:
    from ..memory.attention import layer_states
    from ..models import load
    from ._book import encode_chapters, renamed_chapters

    t0 = time.perf_counter()
    lm = load(getattr(args, "model", None))
    base = MatrixSettings().changed(**changes(args, MatrixSettings))
    layer = base.resolved_layer(lm.shape[0])
    n = args.written + args.unseen
    ids = []
    for c in encode_chapters(lm, [t for t, _ in renamed_chapters()]):
        ids += c
        if len(ids) >= n * args.segment:
            break
    segs = [ids[i * args.segment:(i + 1) * args.segment] for i in range(n)]
    states = [layer_states(lm, layer, s, prefix=segs[i - 1] if i else ())
              for i, s in enumerate(segs)]
    t_read = time.perf_counter() - t0
    rows = []
    # lr 0 is the control: nothing written, so its AUC is what chance gives here
    grid = [(1.0, 0.0, 0.0)] + list(itertools.product(*(map(float, x.split(",")) for x in (args.gains, args.biases, args.lrs))))
    for gain, bias, lr in grid:
        r = {"gain": gain, "bias": bias, "lr": lr,
             **evaluate(states, args.written, base.changed(gain=gain, bias=bias, lr=lr))}
        rows.append(r)
        if not args.json:
            print(f"gain {gain:<4} bias {bias:<4} lr {lr:<4}  AUC {r['auc']:.3f}  row |cos| "
                  f"{r['row_cos']:.3f}  gate mean {r['gate_mean']:.3f}  {r['write_ms']} ms/write")
    out = {"model": lm.name, "layer": layer, "slots": base.slots, "segment": args.segment,
           "written": args.written, "unseen": args.unseen, "read_s": round(t_read, 1),
           "results": rows, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"layer {layer}, {base.slots} slots, {args.written} written / {args.unseen} "
              f"unseen segments of {args.segment} tokens; {out['seconds']}s")
    return 0
