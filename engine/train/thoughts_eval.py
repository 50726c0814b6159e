"""How often a model writes its own margin notes: continue held-out paragraphs and count
the bubbles (BEGIN, a non-empty note, END) it opens and closes by itself, for
``python -m engine train thoughts`` (before and after tuning, and --eval-only)."""
from __future__ import annotations

import time
from contextlib import nullcontext

from ..thoughts import BEGIN, END, escape_prose


def _generate(lm, prompts: list[list[int]], cfg, lora=None, stopping=None):
    """[(new text, cut short by the token limit)] for prompts of token ids, generated in
    one left-padded batch under the model lock (with the adapter, if given)."""
    import torch

    tok, model = lm.tokenizer, lm.model
    dev = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    with lm.lock, torch.inference_mode(), (lora.attached(model) if lora else nullcontext()):
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                             stopping_criteria=stopping)[:, width:]
    eos = lm.eos_ids | {pad}
    return [(tok.decode(row, skip_special_tokens=True).replace("\ufffd", ""),
             len(row) >= cfg.max_new_tokens and not eos & set(row.tolist())) for row in out]


def bubble(text: str) -> tuple[bool, bool]:
    """(well_formed, immediate) for what a model wrote after a paragraph: the first
    marker it writes is BEGIN, followed by non-empty text and END with no second BEGIN
    in between; immediate when only whitespace precedes the BEGIN."""
    i = text.find(BEGIN)
    if i < 0 or END in text[:i]:
        return False, False
    j = text.find(END, i + 1)
    if j < 0 or BEGIN in text[i + 1:j] or not text[i + 1:j].strip():
        return False, False
    return True, not text[:i].strip()


def summarize(outputs: list[str]) -> dict:
    """Counts and shares of well-formed (and immediate) bubbles in the outputs."""
    flags = [bubble(o) for o in outputs]
    n, ok, now = len(flags), sum(f[0] for f in flags), sum(f[1] for f in flags)
    return {"paragraphs": n, "well_formed": ok, "immediate": now,
            "share": round(ok / n, 4) if n else 0.0,
            "immediate_share": round(now / n, 4) if n else 0.0}


def continuations(lm, paras: list[str], lora=None, max_new_tokens: int = 64,
                  batch: int = 8, progress=None) -> list[str]:
    """Greedy continuations of each paragraph, in batches; a row stops once its bubble
    closed."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    tok = lm.tokenizer

    class Closed(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            texts = tok.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
            return torch.tensor([END in t[t.find(BEGIN):] if BEGIN in t else False
                                 for t in texts], device=input_ids.device)

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id, eos_token_id=sorted(lm.eos_ids))
    outs = []
    chunks = [paras[i:i + batch] for i in range(0, len(paras), batch)]
    for chunk in (progress(chunks) if progress else chunks):
        prompts = [tok(escape_prose(p), add_special_tokens=False)["input_ids"] for p in chunk]
        stop = Closed()
        stop.start = max(map(len, prompts))
        outs += [text for text, _ in _generate(lm, prompts, cfg, lora,
                                               StoppingCriteriaList([stop]))]
    return outs


def evaluate(lm, paras, lora=None, max_new_tokens: int = 64, batch: int = 8,
             progress=None) -> dict:
    t0 = time.perf_counter()
    outs = continuations(lm, paras, lora, max_new_tokens, batch, progress)
    return {**summarize(outs), "seconds": round(time.perf_counter() - t0, 1),
            "samples": outs[:3]}
