"""Prefill and decode tokens/s of the loaded model, and the cost of kNN memory."""
from __future__ import annotations

import json
import platform

from ..score import add_knn_arguments
from .knn_speed import add_speed_arguments, knn_speed


def add_arguments(p) -> None:
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
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


def run(args) -> int:
    import torch

    from ..models import load

    lm = load(args.model)
    out = {"model": lm.name, "device": lm.device, "dtype": lm.dtype,
           "threads": torch.get_num_threads(), "machine": platform.processor() or
           platform.machine()}
    out.update(measure(lm, args.prompt_tokens, args.new_tokens, args.repeats))
    out["knn"] = knn_speed(lm, args)  # the same model with kNN memory off and on
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    return 0
