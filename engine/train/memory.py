"""Training the memory matrix's read path: ``python -m engine train memory --corpus F``.

The base model is frozen. Learned: the sketch ``S`` (r x m, starts as the frozen
CountSketch), a per-head read-gate bias, and a low-rank correction of the summary
rows before the layer's own key/value projections. The write rule has no
parameters, so M is computed without gradients: one step of recurrence per example.

Losses per example (segments s_0..s_t, s_t+1 of SEG tokens from the corpus):
* next:   next-token loss on s_t+1 alone, memory written from s_0..s_t;
* recall: s_t+1 from its own memory with a local window of RECALL_WINDOW tokens;
* memory: the summary of one write of the whole chunk s_0..s_t agrees (cosine) with
  the summary of its sequential writes, plus a VICReg-style covariance term on the
  summary rows (off-diagonal similarity) that keeps them apart.
Reproducible from the seed (example order is a function of seed and step, so a
resumed run equals an uninterrupted one); checkpoints and the adapter are safetensors.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..memory.matrix import MatrixError, MatrixSettings, MemoryMatrix
from ..memory.matrix_adapter import ADAPTER, RANK, MatrixAdapter, load_adapter  # noqa: F401

SEG, RECALL_WINDOW = 128, 16
CHECKPOINT = "checkpoint.safetensors"


def save_adapter(adapter: MatrixAdapter, path: Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()},
              str(tmp), metadata={**adapter.meta(), **(extra or {})})
    tmp.replace(path)


# -- data ------------------------------------------------------------------------------------
def corpus_ids(lm, corpus) -> list[int]:
    p = Path(corpus)
    files = sorted(x for x in p.rglob("*") if x.suffix in (".txt", ".md")) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"no .txt or .md file in {p}")
    text = "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    return list(lm.tokenizer(text, add_special_tokens=False).input_ids)


def example(ids, step: int, seed: int, t: int):
    """Segments s_0..s_t+1 for a step: a function of (seed, step) only."""
    n = (t + 2) * SEG
    if len(ids) < n + 1:
        raise ValueError(f"the corpus is too short: {len(ids)} tokens, need {n + 1}")
    start = int(np.random.default_rng([seed, step]).integers(0, len(ids) - n))
    return [ids[start + i * SEG: start + (i + 1) * SEG] for i in range(t + 2)]


# -- losses ----------------------------------------------------------------------------------
def _nll(lm, adapter, layer, mm, ids, window=None):
    from ..memory.attention import MatrixTokens, knn_memory, matrix_tokens, project_tokens
    from ..memory.attention import rotary_inv_freq
    from contextlib import nullcontext

    k, v = project_tokens(lm, layer, adapter.rows(mm.M, mm.mu, mm.spread))
    tok = {layer: MatrixTokens(k, v, adapter.bias, mm.settings.distance, rotary_inv_freq(lm))}
    x = torch.tensor([ids], device=k.device)
    win = knn_memory(lm, None, window=window) if window else nullcontext()
    with matrix_tokens(lm, tok), win:
        logits = lm.model(input_ids=x, use_cache=False).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, x[0, 1:])


def losses(lm, adapter, layer, segs, weights=(1.0, 0.5, 0.1)) -> dict:
    from ..memory.attention import layer_states

    s = adapter.settings
    states = [layer_states(lm, layer, seg) for seg in segs]
    mm = MemoryMatrix(lm.model.config.hidden_size, s)
    for st in states[:-1]:
        mm.write(st)
    out = {"next": _nll(lm, adapter, layer, mm, segs[-1])}
    rec = MemoryMatrix(mm.d, s)
    rec.write(states[-1])
    out["recall"] = _nll(lm, adapter, layer, rec, segs[-1], window=RECALL_WINDOW)
    whole = MemoryMatrix(mm.d, s)
    whole.write(np.concatenate(states[:-1]))
    dev = adapter.S.device
    a = adapter.rows(mm.M, mm.mu, mm.spread) - torch.as_tensor(mm.mu, dtype=torch.float32, device=dev)
    b = (adapter.rows(whole.M, whole.mu, whole.spread)
         - torch.as_tensor(whole.mu, dtype=torch.float32, device=dev))
    agree = 1 - torch.nn.functional.cosine_similarity(a, b, dim=1).mean()
    z = a / a.norm(dim=1, keepdim=True).clamp_min(1e-6)
    sim = z @ z.T
    cov = (sim - torch.diag(torch.diag(sim))).pow(2).sum() / max(1, z.shape[0] * (z.shape[0] - 1))
    out["memory"] = agree + cov
    out["total"] = weights[0] * out["next"] + weights[1] * out["recall"] + weights[2] * out["memory"]
    return out


# -- the command -----------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--corpus", required=True, help="a .txt/.md file or a folder of them")
    p.add_argument("--out", default=None, help="output folder (default: ~/.cache/mnemosyne/"
                   "adapters/matrix-<model>)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", type=int, default=2, help="segments written before the target")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--slots", type=int, default=MatrixSettings.slots)
    p.add_argument("--rows", type=int, default=MatrixSettings.rows)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--no-progress", action="store_true")


def train(lm, corpus, out: Path, steps=200, lr=3e-3, seed=0, history=2, layer=None,
          slots=MatrixSettings.slots, rows=MatrixSettings.rows, checkpoint_every=25,
          progress=True, log=print) -> dict:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    settings = MatrixSettings(layer=layer, slots=slots, rows=rows, seed=seed)
    layer = settings.resolved_layer(lm.shape[0])
    for prm in lm.model.parameters():
        prm.requires_grad_(False)
    cfg = lm.model.config
    adapter = MatrixAdapter(settings, cfg.hidden_size, cfg.num_attention_heads, layer,
                            lm.fingerprint).to(next(lm.model.parameters()).device)
    opt = torch.optim.Adam(adapter.parameters(), lr=lr)
    ids = corpus_ids(lm, corpus)
    out = Path(out)
    start = _resume(out / CHECKPOINT, adapter, opt, lm)
    if start:
        log(f"resuming from step {start}")
    history_log = []
    bar = tqdm(range(start, steps), desc="train memory", disable=not progress)
    t0 = time.perf_counter()
    with lm.lock:
        for step in bar:
            parts = losses(lm, adapter, layer, example(ids, step, seed, history))
            opt.zero_grad()
            parts["total"].backward()
            opt.step()
            row = {k: round(float(v.detach()), 4) for k, v in parts.items()}
            history_log.append({"step": step + 1, **row})
            bar.set_postfix(next=row["next"], recall=row["recall"])
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                _checkpoint(out / CHECKPOINT, adapter, opt, step + 1)
    save_adapter(adapter, out / ADAPTER, {"steps": str(steps)})
    return {"adapter": str(out / ADAPTER), "layer": layer, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1), "log": history_log}


def _checkpoint(path: Path, adapter, opt, step: int) -> None:
    from safetensors.torch import save_file

    tensors = {f"p.{k}": v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    names = [n for n, _ in adapter.named_parameters()]
    for i, prm in enumerate(adapter.parameters()):
        st = opt.state.get(prm, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"o.{names[i]}.{key}"] = st[key].cpu().contiguous()
        if "step" in st:
            tensors[f"o.{names[i]}.step"] = torch.as_tensor(st["step"]).reshape(1).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={**adapter.meta(), "step": str(step)})
    tmp.replace(path)


def _resume(path: Path, adapter, opt, lm) -> int:
    """Load a checkpoint of the same run; 0 when there is none (or it is foreign)."""
    from safetensors import safe_open

    if not path.is_file():
        return 0
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise MatrixError(f"the checkpoint {path} is corrupt; delete it to start over") from e
    if meta.get("fingerprint") != lm.fingerprint or meta.get("settings") != adapter.meta()["settings"]:
        raise MatrixError(f"the checkpoint {path} belongs to another model or settings; "
                          "use another --out or delete it")
    adapter.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("p.")})
    for n, prm in adapter.named_parameters():
        if f"o.{n}.exp_avg" in t:
            opt.state[prm] = {"exp_avg": t[f"o.{n}.exp_avg"].to(prm.device),
                              "exp_avg_sq": t[f"o.{n}.exp_avg_sq"].to(prm.device),
                              "step": t[f"o.{n}.step"][0].clone()}
    return int(meta["step"])


def run(args) -> int:
    from ..models import load

    lm = load(getattr(args, "model", None))
    out = Path(args.out) if args.out else (Path.home() / ".cache" / "mnemosyne" / "adapters"
                                           / f"matrix-{lm.fingerprint[:12]}")
    res = train(lm, args.corpus, out, steps=args.steps, lr=args.lr, seed=args.seed,
                history=args.history, layer=args.layer, slots=args.slots, rows=args.rows,
                checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    first, last = res["log"][:10], res["log"][-10:]
    mean = lambda rows, k: sum(r[k] for r in rows) / max(1, len(rows))  # noqa: E731
    if first:
        print(f"next-token loss {mean(first, 'next'):.3f} -> {mean(last, 'next'):.3f}, recall "
              f"{mean(first, 'recall'):.3f} -> {mean(last, 'recall'):.3f} (first/last 10 steps)")
    print(f"adapter: {res['adapter']} (layer {res['layer']}, {res['steps']} steps, "
          f"{res['seconds']}s)")
    return 0
