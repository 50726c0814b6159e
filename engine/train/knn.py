"""Learn the kNN memory's read gate: one bias per memory layer and query head.

In gate mode (``KNNSettings.gate``) a memory head's output is
``sigmoid(b) * memory + (1 - sigmoid(b)) * local``, two separate softmaxes instead of
one joint softmax. This learns ``b`` with the model frozen: the corpus is indexed once,
then each step scores a segment with a local window of ``--window`` tokens and the
memory of everything before that window (the same reading as ``score``), next-token
loss, Adam on the biases only. Seeded; saves a small safetensors file that
``--knn-gate-file`` (score, benchmarks) reads.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..memory.knn_gate import GateError, load_gates  # noqa: F401 (the file's format)

MIN_PAST = 512  # stored tokens a step's memory holds at least


def add_arguments(p) -> None:
    p.add_argument("--corpus", required=True, help="a .txt/.md file or a folder of them")
    p.add_argument("--out", default=None, help="the gate file (default: ~/.cache/mnemosyne/"
                                               "adapters/knn-gate-<model>.safetensors)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=256, help="local tokens each query sees")
    p.add_argument("--segment", type=int, default=256, help="tokens scored per step")
    p.add_argument("--init", type=float, default=-2.0, help="starting bias (memory share "
                                                            "sigmoid(init))")
    p.add_argument("--no-progress", action="store_true")


def save_gates(path: Path, bias: torch.Tensor, layers, lm, meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"bias": bias.detach().cpu().contiguous()}, str(tmp),
              metadata={"fingerprint": lm.fingerprint, "layers": ",".join(map(str, layers)),
                        **{k: str(v) for k, v in meta.items()}})
    tmp.replace(path)


def train(lm, corpus, out: Path, steps=60, lr=0.1, seed=0, window=256, segment=256,
          init=-2.0, progress=True, settings=None) -> dict:
    from tqdm.auto import tqdm

    from ..memory.attention import index_tokens, knn_memory
    from ..memory.knn import KNNSettings, new_store
    from .memory import corpus_ids

    torch.manual_seed(seed)
    settings = (settings or KNNSettings()).changed(mode="attend", gate=True)
    layers = settings.read_layers(lm.shape[0])
    ids = corpus_ids(lm, corpus)
    need = MIN_PAST + window + segment + 1
    if len(ids) < need:
        raise ValueError(f"the corpus is too short: {len(ids)} tokens, need {need}")
    for prm in lm.model.parameters():
        prm.requires_grad_(False)
    t0 = time.perf_counter()
    with lm.lock:
        store = new_store(None, lm, settings)
        index_tokens(lm, store, ids, progress=progress)   # once: each step reads its past
        heads = lm.model.config.num_attention_heads
        bias = torch.nn.Parameter(torch.full((len(layers), heads), float(init)))
        opt = torch.optim.Adam([bias], lr=lr)
        log = []
        for step in tqdm(range(steps), desc="train knn gate", disable=not progress):
            s = int(np.random.default_rng([seed, step]).integers(
                MIN_PAST + window, len(ids) - segment))
            x = torch.tensor([ids[s - window:s + segment]], device=lm.model.device)
            gates = {l: bias[i] for i, l in enumerate(layers)}
            with knn_memory(lm, store, settings, offset=s - window, window=window,
                            gates=gates):
                logits = lm.model(input_ids=x, use_cache=False).logits[0, window - 1:-1]
            loss = torch.nn.functional.cross_entropy(logits.float(), x[0, window:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.append(round(float(loss.detach()), 4))
    out = Path(out)
    save_gates(out, bias, layers, lm, {"steps": steps, "seed": seed, "window": window})
    share = torch.sigmoid(bias.detach())
    return {"gate_file": str(out), "layers": list(layers), "steps": steps, "loss": log,
            "share_mean": round(float(share.mean()), 4),
            "share_by_layer": [round(float(x), 3) for x in share.mean(1)],
            "seconds": round(time.perf_counter() - t0, 1)}


def run(args) -> int:
    from ..models import load

    lm = load(getattr(args, "model", None))
    out = Path(args.out) if args.out else (Path.home() / ".cache" / "mnemosyne" / "adapters"
                                           / f"knn-gate-{lm.fingerprint[:12]}.safetensors")
    res = train(lm, args.corpus, out, steps=args.steps, lr=args.lr, seed=args.seed,
                window=args.window, segment=args.segment, init=args.init,
                progress=not args.no_progress)
    first, last = res["loss"][:10], res["loss"][-10:]
    print(f"next-token loss {np.mean(first):.3f} -> {np.mean(last):.3f} (first/last 10 steps); "
          f"memory share {res['share_mean']:.3f} (by layer {res['share_by_layer']})")
    print(f"gate file: {res['gate_file']} ({res['steps']} steps, {res['seconds']}s); use it "
          f"with --knn-gate --knn-gate-file {res['gate_file']}")
    return 0
