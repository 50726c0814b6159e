"""Streaming generation: seeded sampling, cancellation within one token, and reuse
of the key/value cache of a prompt prefix that did not change since last time.

On a CPU re-reading the prompt is the slow part, and the context builder puts the
stable blocks first, so most Continues only prefill the recent text.
"""
from __future__ import annotations

import math
import random
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

PREFILL_CHUNK = 512


MAX_NEW_TOKENS = 4096
# A signed 64-bit integer (as SQLite keeps it); torch's manual_seed takes up to 2**64-1,
# so the margin notes' seed + i still fits.
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 5.0


@dataclass
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 200
    seed: int | None = None          # None: a fresh random seed, recorded in the log
    repetition_penalty: float = 1.15  # small models loop without it
    penalty_window: int = 256

    def resolved(self) -> "Sampling":
        """A copy with a concrete seed and values clamped to sane ranges (the UI's
        sliders rely on it; the CLI refuses what is out of range with ``validate``)."""
        seed = self.seed if self.seed is not None and self.seed >= 0 else random.randrange(2**31)
        return Sampling(temperature=max(0.0, min(float(self.temperature), MAX_TEMPERATURE)),
                        top_p=max(0.01, min(float(self.top_p), 1.0)),
                        max_new_tokens=max(1, min(int(self.max_new_tokens), MAX_NEW_TOKENS)),
                        seed=int(seed), repetition_penalty=max(1.0, float(self.repetition_penalty)),
                        penalty_window=int(self.penalty_window))

    def validate(self) -> "Sampling":
        """Self, or a ValueError naming the allowed range of the first bad value: no
        silent clamping, no NaN, no seed that overflows the generator."""
        def number(name, v, lo, hi, lo_open=False):
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, not {v!r}.") from None
            if not (math.isfinite(f) and (lo < f if lo_open else lo <= f) and f <= hi):
                raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo:g}, "
                                 f"{hi:g}], not {v}.")

        def whole(name, v, lo, hi, hi_text=None):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} must be a whole number in {lo}..{hi_text or hi}, "
                                 f"not {v}.")

        number("The temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        number("top-p", self.top_p, 0.0, 1.0, lo_open=True)
        whole("The number of tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        if self.seed is not None:
            whole("The seed", self.seed, 0, MAX_SEED, "2**63-1")
        number("The repetition penalty", self.repetition_penalty, 1.0, 100.0)
        whole("The penalty window", self.penalty_window, 0, 1 << 20)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Result:
    text: str = ""
    new_tokens: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""   # eos | length | cancelled
    token_ids: list[int] = field(default_factory=list)


class PrefixCache:
    """The last prompt+output ids and their DynamicCache, for prefix reuse."""

    def __init__(self):
        self.ids: list[int] = []
        self.cache = None
        self.key = None

    def take(self, ids: list[int], key) -> tuple[object, int]:
        """A cache cropped to the longest common prefix (always leaving one token)."""
        if self.cache is None or key != self.key:
            return None, 0
        n = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            n += 1
        n = min(n, len(ids) - 1)
        if n <= 0:
            return None, 0
        cache, self.cache = self.cache, None
        extra = cache.get_seq_length() - n
        if extra > 0:
            cache.crop(-extra)  # transformers 5: a negative count of tokens to remove
        return cache, n

    def keep(self, ids: list[int], cache, key) -> None:
        self.ids, self.cache, self.key = list(ids), cache, key


def _sample(logits: torch.Tensor, recent: list[int], s: Sampling,
            gen: torch.Generator) -> int:
    import torch

    logits = logits.float()
    if s.repetition_penalty > 1.0 and recent:
        idx = torch.tensor(sorted(set(recent)), dtype=torch.long, device=logits.device)
        vals = logits[idx]
        logits[idx] = torch.where(vals > 0, vals / s.repetition_penalty,
                                  vals * s.repetition_penalty)
    if s.temperature <= 1e-4:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        cut = cum - sorted_p > s.top_p  # keep the smallest set reaching top_p
        sorted_p[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def stream(lm, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None,
           prefix: PrefixCache | None = None, prefix_key=None, forward_context=None,
           result: Result | None = None):
    """Yield text deltas as the model writes; fill ``result`` with what happened.

    ``forward_context`` is a zero-argument callable returning a context manager that
    wraps every forward pass (the memory attention hooks in there).
    """
    import torch
    from transformers import DynamicCache

    s = sampling.resolved()
    result = result if result is not None else Result()
    result.prompt_tokens = len(prompt_ids)
    cancel = cancel or threading.Event()
    ctx = forward_context or nullcontext
    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(int(s.seed))
    eos = lm.eos_ids
    if not prompt_ids:
        prompt_ids = [tok.bos_token_id if tok.bos_token_id is not None else next(iter(eos))]

    t0 = time.perf_counter()
    cache, reused = prefix.take(prompt_ids, prefix_key) if prefix else (None, 0)
    cache = cache if cache is not None else DynamicCache(config=model.config)
    result.reused_tokens = reused
    out_ids: list[int] = []
    emitted = ""
    try:
        with torch.inference_mode():
            logits = None
            for i in range(reused, len(prompt_ids), PREFILL_CHUNK):
                if cancel.is_set():
                    result.stop_reason = "cancelled"
                    return
                chunk = torch.tensor([prompt_ids[i:i + PREFILL_CHUNK]], device=device)
                with ctx():
                    logits = model(input_ids=chunk, past_key_values=cache,
                                   use_cache=True).logits[0, -1]
            result.prefill_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            all_ids = list(prompt_ids)
            for _ in range(s.max_new_tokens):
                if cancel.is_set():
                    result.stop_reason = "cancelled"
                    break
                nxt = _sample(logits, all_ids[-s.penalty_window:], s, gen)
                if nxt in eos:
                    result.stop_reason = "eos"
                    break
                out_ids.append(nxt)
                all_ids.append(nxt)
                result.new_tokens = len(out_ids)
                text = tok.decode(out_ids, skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte char
                    text = text.replace("\ufffd", "")  # bytes that never made a char
                    delta, emitted = text[len(emitted):], text
                    if delta:
                        result.text = emitted
                        yield delta
                if cancel.is_set():
                    result.stop_reason = "cancelled"
                    break
                with ctx():
                    logits = model(input_ids=torch.tensor([[nxt]], device=device),
                                   past_key_values=cache, use_cache=True).logits[0, -1]
            else:
                result.stop_reason = "length"
            result.decode_s = time.perf_counter() - t1
            if prefix is not None:
                prefix.keep(all_ids[:cache.get_seq_length()], cache, prefix_key)
    finally:
        result.new_tokens = len(out_ids)
        result.token_ids = out_ids
        result.text = tok.decode(out_ids, skip_special_tokens=True).replace("\ufffd", "")
