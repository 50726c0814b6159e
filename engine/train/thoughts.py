"""Teach the model to write its own margin notes: ``python -m engine train thoughts``.

Why: with a summarising prompt every note costs a second generation after each
passage. A model tuned on text where notes stand inline after paragraphs writes them
itself, in the same stream, and the Router sends them to the margin ("self" mode).

The run: split the corpus into paragraphs and hold out the last share (text the
tuning never sees); write a note after each training paragraph with the instruct
model and the summarising prompt (engine.thoughts.write_note); save the augmented
corpus as JSONL; fine-tune (LoRA, or the whole model when it is small); measure on
the held-out paragraphs, before and after, how often the model continuing a
paragraph opens and closes a non-empty bubble by itself within N tokens.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from ..thoughts import (BEGIN, END, NOTE_SAMPLING, NOTE_TOKENS, escape_prose, inline,
                        note_prompt_ids, tidy_note, write_note)
from ..adapters import (WEIGHTS, AdapterError, LoRA, adapter_for,  # noqa: F401
                        default_dir, read_config, tuned_in)
from .thoughts_eval import (_generate, bubble, continuations, evaluate,  # noqa: F401
                            summarize)

NOTES, JSONL, CKPT = "notes.jsonl", "augmented.jsonl", "checkpoint"
# How the corpus is cut; an adapter records its own so --eval-only holds out the same text.
SPLIT = {"paragraphs": 100, "held_out": 0.3, "min_chars": 150, "max_chars": 1500}


def add_arguments(p) -> None:
    p.add_argument("--corpus", required=True, help="a .txt/.md book (Gutenberg text is fine)")
    p.add_argument("--out", default=None, help="output folder; default: the adapter folder "
                   "self-commentary uses for this model (in the Mnemosyne cache)")
    p.add_argument("--mode", choices=("lora", "full"), default="lora",
                   help="full: tune every weight and save a model folder (small models only)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paragraphs", type=int, default=None,
                   help=f"use the first N paragraphs of the corpus (0: all; default "
                        f"{SPLIT['paragraphs']}, or the adapter's with --eval-only)")
    p.add_argument("--held-out", type=float, default=None,
                   help=f"share of those paragraphs (the last ones) kept out of training "
                        f"(default {SPLIT['held_out']})")
    p.add_argument("--min-chars", type=int, default=None,
                   help=f"shorter paragraphs are skipped (default {SPLIT['min_chars']})")
    p.add_argument("--max-chars", type=int, default=None,
                   help=f"longer paragraphs are skipped (default {SPLIT['max_chars']})")
    p.add_argument("--max-tokens", type=int, default=384, help="tokens per training example")
    p.add_argument("--lr", type=float, default=None, help="default: 2e-3 LoRA, 3e-5 full")
    p.add_argument("--note-weight", type=float, default=10.0,
                   help="loss weight of tokens inside bubbles against prose tokens (1: plain "
                        "LM loss, which on the bundled model learned the notes but not the "
                        "markers: 0/36 bubbles after 60 steps)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="qv", help="qv | all | comma-separated layer names")
    p.add_argument("--save-every", type=int, default=20, help="checkpoint every N steps (LoRA)")
    p.add_argument("--eval-tokens", type=int, default=64,
                   help="a bubble must open and close within this many new tokens")
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--note-batch", type=int, default=8,
                   help="notes written at once (1: one by one, exactly as in a novel)")
    p.add_argument("--eval-only", action="store_true",
                   help="only measure held-out bubbles: base model vs --adapter")
    p.add_argument("--adapter", default=None, help="adapter folder for --eval-only "
                   "(default: --out); with none, the model is measured as it is")
    p.add_argument("--title", default=None, help="the novel's title in the note prompt")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


# -- data ------------------------------------------------------------------------------
def corpus_paragraphs(path, limit: int = 0, min_chars: int = 150,
                      max_chars: int = 1500) -> list[str]:
    """Prose paragraphs of a book, in order, without headings and front matter."""
    from ..importing import read_text_file, split_chapters

    paras = []
    for _, body in split_chapters(read_text_file(Path(path)), "corpus"):
        for p in body.split("\n\n"):
            p = " ".join(p.split())
            if min_chars <= len(p) <= max_chars:
                paras.append(p)
                if limit and len(paras) >= limit:
                    return paras
    return paras


def split_held_out(paras: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held out): the last share is held out, text the tuning never reads."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError("--held-out must be a fraction in [0, 1).")
    n = round(len(paras) * fraction)
    return paras[:len(paras) - n], paras[len(paras) - n:]


def augment(lm, paras: list[str], bible: dict, cache=None, seed: int = 0,
            progress=None, batch: int = 8) -> list[str]:
    """A note for each paragraph from the summarising prompt (note_messages). batch 1
    is exactly write_note; larger batches generate several notes at once (the same
    prompt and sampling, several times faster on a CPU). Notes already in ``cache`` (a
    JSONL file, appended as it goes) are reused, so an interrupted run resumes."""
    done = {}
    if cache is not None and Path(cache).is_file():
        for line in Path(cache).read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                done[r["paragraph"]] = r["note"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
    todo = list(dict.fromkeys(p for p in paras if p not in done))
    chunks = [todo[i:i + max(1, batch)] for i in range(0, len(todo), max(1, batch))]
    f = open(cache, "a", encoding="utf-8") if cache is not None else None
    try:
        for k, chunk in enumerate(progress(chunks) if progress else chunks):
            if batch <= 1:
                notes = [write_note(lm, chunk[0], bible, seed=seed + k)]
            else:
                notes = _note_batch(lm, chunk, bible, seed + k)
            for p, note in zip(chunk, notes):
                done[p] = note
                if f:
                    f.write(json.dumps({"paragraph": p, "note": note}) + "\n")
            if f:
                f.flush()
    finally:
        if f:
            f.close()
    return [done[p] for p in paras]


def _note_batch(lm, paras, bible, seed) -> list[str]:
    import torch
    from transformers import GenerationConfig

    from ..writer import Sampling

    tok = lm.tokenizer
    cfg = GenerationConfig(do_sample=True, **NOTE_SAMPLING, max_new_tokens=NOTE_TOKENS,
                           repetition_penalty=Sampling().repetition_penalty,
                           pad_token_id=tok.pad_token_id, eos_token_id=sorted(lm.eos_ids))
    torch.manual_seed(seed)
    rows = _generate(lm, [note_prompt_ids(tok, p, bible) for p in paras], cfg)
    return [tidy_note(text, cut_short) for text, cut_short in rows]


def build_records(paras: list[str], notes: list[str], tokenizer,
                  max_tokens: int = 384) -> list[dict]:
    """Training examples: runs of consecutive paragraphs, each followed by its note
    inline exactly as the context builder shows one (``para⟦note⟧`` then a blank line)."""
    records, cur, first, n_tok = [], [], 0, 0
    for i, (p, note) in enumerate(zip(paras, notes)):
        unit = escape_prose(p) + (inline(note) if note.strip() else "") + "\n\n"
        n = len(tokenizer(unit, add_special_tokens=False)["input_ids"])
        if cur and n_tok + n > max_tokens:
            records.append({"text": "".join(cur), "first": first, "last": i - 1})
            cur, n_tok = [], 0
        if not cur:
            first = i
        cur.append(unit)
        n_tok += n
    if cur:
        records.append({"text": "".join(cur), "first": first, "last": len(paras) - 1})
    for r in records:
        r["notes"] = r["text"].count(BEGIN)
    return records


def write_jsonl(path, records: list[dict]) -> None:
    tmp = Path(str(path) + ".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                   encoding="utf-8")
    tmp.replace(path)


# -- training --------------------------------------------------------------------------
def _encode(lm, records, max_tokens):
    import torch

    tok = lm.tokenizer
    return [torch.tensor([tok(r["text"], add_special_tokens=False)["input_ids"][-max_tokens:]])
            for r in records]


def _bubble_mask(lm, records, max_tokens):
    """Per record, 1.0 for each token of a bubble (its markers and the blank line after
    it, the way back to prose, included), else 0.0."""
    import torch

    out = []
    for r in records:
        text, spans, i = r["text"], [], r["text"].find(BEGIN)
        while i >= 0:
            j = text.find(END, i)
            j = len(text) if j < 0 else j
            while j + 1 < len(text) and text[j + 1] == "\n":
                j += 1
            spans.append((i, j))
            i = text.find(BEGIN, j)
        offsets = lm.tokenizer(text, add_special_tokens=False,
                               return_offsets_mapping=True)["offset_mapping"][-max_tokens:]
        out.append(torch.tensor([[float(any(a <= s <= b for a, b in spans))
                                  for s, _ in offsets]]))
    return out


def _loss(model, x, inside=None, note_weight: float = 1.0):
    """Next-token loss; targets inside a bubble weigh ``note_weight`` times a prose one
    (the habit lives in a few marker tokens among hundreds of prose tokens)."""
    import torch.nn.functional as F

    if inside is None or note_weight == 1.0:
        return model(input_ids=x, labels=x).loss
    logits = model(input_ids=x).logits[:, :-1].float()
    ce = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
    w = 1.0 + (note_weight - 1.0) * inside[:, 1:].to(ce.device)
    return (ce * w).sum() / w.sum()


def mean_loss(lm, records, lora=None, max_tokens: int = 384) -> float:
    """Mean next-token loss of the model (with the adapter, if given) on the records."""
    import torch

    dev = next(lm.model.parameters()).device
    with torch.inference_mode(), (lora.attached(lm.model) if lora else nullcontext()):
        losses = [float(lm.model(input_ids=x.to(dev), labels=x.to(dev)).loss)
                  for x in _encode(lm, records, max_tokens)]
    return sum(losses) / max(1, len(losses))


def _order(n: int, steps: int, seed: int) -> list[int]:
    rng, out = random.Random(seed), []
    while len(out) < steps:
        epoch = list(range(n))
        rng.shuffle(epoch)
        out += epoch
    return out[:steps]


def train(lm, records: list[dict], mode: str = "lora", steps: int = 40, seed: int = 0,
          lr: float | None = None, rank: int = 8, alpha: float = 16.0, targets="qv",
          max_tokens: int = 384, out=None, save_every: int = 20, progress=None,
          note_weight: float = 10.0):
    """Fine-tune on the records; returns (LoRA or None for full, stats). LoRA training
    checkpoints to ``out/checkpoint`` and resumes from it when the run matches."""
    import torch

    if not records:
        raise ValueError("The corpus gave no training paragraphs; lower --min-chars or "
                         "give a longer corpus.")
    torch.manual_seed(seed)
    model, dev = lm.model, next(lm.model.parameters()).device
    data = _encode(lm, records, max_tokens)
    inside = _bubble_mask(lm, records, max_tokens) if note_weight != 1.0 else [None] * len(data)
    digest = hashlib.sha256(json.dumps([r["text"] for r in records]).encode()).hexdigest()[:16]
    run = {"mode": mode, "seed": seed, "rank": rank, "alpha": alpha, "targets": str(targets),
           "lr": lr, "data": digest, "max_tokens": max_tokens, "fingerprint": lm.fingerprint,
           "note_weight": note_weight}
    lora = None
    if mode == "lora":
        lora = LoRA.for_model(model, rank, alpha, targets, seed)
        params, lr = list(lora.parameters()), lr or 2e-3
    else:
        params, lr = [p for p in model.parameters()], lr or 3e-5
    run["lr"] = lr
    for p in model.parameters():
        p.requires_grad_(mode == "full")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order, start, losses = _order(len(data), steps, seed), 0, []
    ckpt = Path(out) / CKPT if out is not None and lora is not None else None
    if ckpt is not None and (ckpt / "state.json").is_file():
        start, losses = _resume(ckpt, run, lora, opt)
    t0 = time.perf_counter()
    steps_iter = range(start, steps)
    with torch.enable_grad(), (lora.attached(model) if lora else nullcontext()):
        for step in (progress(steps_iter) if progress else steps_iter):
            x = data[order[step]].to(dev)
            loss = _loss(model, x, inside[order[step]], note_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(round(float(loss.detach()), 4))
            if ckpt is not None and (step + 1) % save_every == 0 and step + 1 < steps:
                _checkpoint(ckpt, run, lora, opt, step + 1, losses)
    for p in model.parameters():
        p.requires_grad_(False)
    k = max(1, min(10, len(losses) // 3))
    stats = {"steps": steps, "resumed_at": start, "examples": len(data), "lr": lr,
             "loss_first": round(sum(losses[:k]) / k, 4) if losses else None,
             "loss_last": round(sum(losses[-k:]) / k, 4) if losses else None,
             "seconds": round(time.perf_counter() - t0, 1), "losses": losses}
    return lora, stats


def _checkpoint(folder: Path, run, lora, opt, step, losses) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora.tensors(), str(folder / "lora.safetensors"))
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    tmp = folder / "state.json.partial"
    tmp.write_text(json.dumps({"run": run, "step": step, "losses": losses}))
    tmp.replace(folder / "state.json")  # last: it vouches for the files above


def _resume(folder: Path, run, lora, opt) -> tuple[int, list]:
    """(step, losses) from a matching checkpoint; (0, []) when it is for another run."""
    import torch
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / "state.json").read_text())
        if state["run"] != run:
            return 0, []
        tensors = load_file(str(folder / "lora.safetensors"))
        with torch.no_grad():
            for name, A, B in zip(lora.names, lora.A, lora.B):
                A.copy_(tensors[f"{name}.lora_A"])
                B.copy_(tensors[f"{name}.lora_B"])
        opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        print(f"Resuming from the checkpoint at step {state['step']}.", file=sys.stderr)
        return int(state["step"]), list(state["losses"])
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint only costs a restart
        print(f"Ignoring the checkpoint in {folder}: {e}", file=sys.stderr)
        return 0, []


# -- the command -----------------------------------------------------------------------
def _bar(desc, unit):
    from tqdm import tqdm

    return lambda xs: tqdm(xs, desc=desc, unit=unit, file=sys.stderr)


def _line(name: str, r: dict, n_tok: int) -> str:
    return (f"  {name:<14} {r['well_formed']:>3}/{r['paragraphs']} well-formed "
            f"({100 * r['share']:.1f}%), {r['immediate']} right after the paragraph; "
            f"within {n_tok} tokens, {r['seconds']} s")


def _report(args, result: dict) -> None:
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    ev = result["eval"]
    print(f"Bubbles after {ev['held_out']} held-out paragraphs (not in training), "
          f"greedy, within {ev['max_new_tokens']} new tokens:")
    for name in ("before", "after", "model"):
        if name in ev:
            print(_line({"before": "before tuning", "after": "after tuning",
                         "model": "this model"}[name], ev[name], ev["max_new_tokens"]))
    if "after" in ev and ev["after"]["samples"]:
        print(f"  sample after tuning: {ev['after']['samples'][0][:200]!r}")
    t = result.get("train")
    if t:
        print(f"Training ({t['mode']}): {t['steps']} steps on {t['examples']} examples "
              f"({t['paragraphs']} paragraphs, {t['notes_written']} notes written in "
              f"{t['notes_seconds']} s); loss {t['loss_first']} -> {t['loss_last']} "
              f"(first/last steps), {t['seconds']} s")
    if result.get("out"):
        print(f"Saved: {result['out']}")
    print(f"Wall time: {result['wall_s']} s on {result['device']} ({result['dtype']})")


def run(args) -> int:
    from ..models import load

    t0 = time.perf_counter()
    lm = load(args.model)
    folder = args.adapter or args.out
    recorded = {}
    if args.eval_only and folder and Path(folder, "adapter.json").is_file():
        recorded = read_config(folder)  # the split the adapter was trained with
    split = {k: getattr(args, k) if getattr(args, k) is not None else recorded.get(k, v)
             for k, v in SPLIT.items()}
    paras = corpus_paragraphs(args.corpus, split["paragraphs"], split["min_chars"],
                              split["max_chars"])
    train_p, held = split_held_out(paras, split["held_out"])
    if not held:
        raise ValueError("No held-out paragraphs to measure on: raise --held-out or "
                         "--paragraphs.")
    measure = dict(max_new_tokens=args.eval_tokens, batch=args.eval_batch)
    result = {"model": lm.name, "fingerprint": lm.fingerprint, "device": lm.device,
              "dtype": lm.dtype, "corpus": str(args.corpus)}
    ev = {"held_out": len(held), "max_new_tokens": args.eval_tokens}
    if args.eval_only:
        lora = adapter_for(lm, folder) if folder or not tuned_in(lm) else None
        if lora is None:
            ev["model"] = evaluate(lm, held, None, **measure, progress=_bar("Measuring", "batch"))
        else:
            ev["before"] = evaluate(lm, held, None, **measure, progress=_bar("Before", "batch"))
            ev["after"] = evaluate(lm, held, lora, **measure, progress=_bar("After", "batch"))
        result.update(eval=ev, wall_s=round(time.perf_counter() - t0, 1))
        _report(args, result)
        return 0

    out = Path(args.out).expanduser() if args.out else default_dir(lm)
    out.mkdir(parents=True, exist_ok=True)
    title = args.title or Path(args.corpus).stem.replace("_", " ").title()
    t1 = time.perf_counter()
    cached = (out / NOTES).is_file()
    notes = augment(lm, train_p, {"title": title}, out / NOTES, args.seed,
                    _bar("Writing notes", "batch"), args.note_batch)
    notes_s = round(time.perf_counter() - t1, 1)
    records = build_records(train_p, notes, lm.tokenizer, args.max_tokens)
    write_jsonl(out / JSONL, records)
    ev["before"] = evaluate(lm, held, None, **measure, progress=_bar("Before", "batch"))
    lora, stats = train(lm, records, args.mode, args.steps, args.seed, args.lr, args.rank,
                        args.alpha, args.targets, args.max_tokens, out, args.save_every,
                        _bar("Training", "step"), args.note_weight)
    ev["after"] = evaluate(lm, held, lora, **measure, progress=_bar("After", "batch"))
    meta = {"kind": "thoughts", "corpus": str(args.corpus), **split, "mode": args.mode,
            "steps": args.steps, "seed": args.seed, "train_paragraphs": len(train_p),
            "note_weight": args.note_weight,
            "eval": {k: ev[k]["share"] for k in ("before", "after")}}
    if lora is not None:
        lora.save(out, lm, meta)
        saved = out
    else:
        saved = out / "model"
        lm.model.config.mnemosyne_thoughts = meta
        lm.model.save_pretrained(saved)
        lm.tokenizer.save_pretrained(saved)
    stats.update(mode=args.mode, paragraphs=len(train_p), notes_written=sum(map(bool, notes)),
                 notes_cached=cached, notes_seconds=notes_s)
    stats.pop("losses")
    result.update(eval=ev, train=stats, out=str(saved), jsonl=str(out / JSONL),
                  wall_s=round(time.perf_counter() - t0, 1))
    _report(args, result)
    return 0

