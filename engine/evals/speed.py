"""Prefill and decode tokens/s of the loaded model, and the cost of kNN memory and of
the memory matrix (write per segment, read per Continue, decode with its tokens)."""
from __future__ import annotations

import json
import platform

from ..score import add_knn_arguments
from .knn_speed import add_speed_arguments, knn_speed


def add_arguments(p) -> None:
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matrix-segments", type=int, default=8,
                   help="book segments written for the matrix cost (0: skip)")
    p.add_argument("--json", action="store_true")
    add_speed_arguments(p)  # --knn-store-tokens, --knn-sizes, ...
    add_knn_arguments(p)


def measure(lm, prompt_tokens: int = 512, new_tokens: int = 128, repeats: int = 3,
            forward_context=None) -> dict:
    """Best-of-``repeats`` prefill and decode throughput through the real writer loop.

    Rates divide by the tokens actually produced, so an early EOS does not skew them.
    """
    import torch

    from ..writer import Result, Sampling, stream

    torch.manual_seed(0)
    vocab = lm.model.config.vocab_size
    eos = lm.eos_ids
    ids = [i for i in torch.randint(100, vocab, (prompt_tokens * 2,)).tolist() if i not in eos]
    ids = ids[:prompt_tokens]
    prefill, decode = [], []
    for r in range(repeats):
        res = Result()
        for _ in stream(lm, ids, Sampling(temperature=1.0, max_new_tokens=new_tokens, seed=r),
                        result=res, forward_context=forward_context):
            pass
        prefill.append(len(ids) / res.prefill_s)
        if res.decode_s > 0 and res.new_tokens:
            decode.append(res.new_tokens / res.decode_s)
    return {"prefill_tokens_per_s": round(max(prefill), 1),
            "decode_tokens_per_s": round(max(decode), 1) if decode else 0.0,
            "prompt_tokens": len(ids), "new_tokens": new_tokens, "repeats": repeats}


def matrix_speed(lm, args) -> dict:
    """Write ms per segment, read ms per Continue, decode tokens/s off vs on."""
    import time

    from ..memory.attention import matrix_tokens
    from ..memory.matrix import MatrixSettings, MemoryMatrix
    from ..memory.matrix_model import SEGMENT, read_tokens, write_ids
    from ._book import encode_chapters, renamed_chapters

    ids = []
    for c in encode_chapters(lm, [t for t, _ in renamed_chapters()[:8]]):
        ids += c
    ids = ids[:args.matrix_segments * SEGMENT]
    mm = MemoryMatrix(lm.model.config.hidden_size, MatrixSettings())
    t = time.perf_counter()
    write_ids(lm, mm, ids)
    write_ms = (time.perf_counter() - t) * 1e3 / max(1, mm.writes)
    t = time.perf_counter()
    tokens = read_tokens(lm, mm)
    read_ms = (time.perf_counter() - t) * 1e3
    n, reps = args.new_tokens, args.repeats
    off = measure(lm, args.prompt_tokens, n, reps)
    on = measure(lm, args.prompt_tokens, n, reps, forward_context=lambda: matrix_tokens(lm, tokens))
    return {"segments": mm.writes, "segment_tokens": SEGMENT,
            "write_ms_per_segment": round(write_ms, 1), "read_ms_per_continue": round(read_ms, 1),
            "memory_tokens": mm.settings.rows,
            "decode_off": off["decode_tokens_per_s"], "decode_on": on["decode_tokens_per_s"],
            "decode_ratio": round(on["decode_tokens_per_s"] / max(1e-9, off["decode_tokens_per_s"]), 3),
            "prefill_off": off["prefill_tokens_per_s"], "prefill_on": on["prefill_tokens_per_s"]}


def run(args) -> int:
    import torch

    from ..models import load

    lm = load(args.model)
    out = {"model": lm.name, "device": lm.device, "dtype": lm.dtype,
           "threads": torch.get_num_threads(), "machine": platform.processor() or
           platform.machine()}
    out.update(measure(lm, args.prompt_tokens, args.new_tokens, args.repeats))
    out["knn"] = knn_speed(lm, args)  # the same model with kNN memory off and on
    if args.matrix_segments:
        out["matrix"] = matrix_speed(lm, args)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    return 0
