"""Streaming generation: seeded sampling, cancellation within one token, reuse of the
key/value cache of a prompt prefix that did not change since last time, and refusal of
what is not prose of the novel.

On a CPU re-reading the prompt is the slow part, and the context builder puts the
stable blocks first, so most Continues only prefill the recent text.

Refusals (``Sampling.refuse``): the start of every line and sentence is held back
until it is clearly prose (``HOLD_CHARS`` characters, or the end of its line when it
might be a heading). A start that is a heading, a prompt field ("Premise:"), a list
item, a Q:/A: line or an assistant's phrase is never shown: the stream rolls the
key/value cache back to where it began, bans the token it began with at that
position, and samples it again; after ``MAX_TRIES`` the passage ends there. Text that
passes is shown whole, so a legitimate sentence is never cut. Two bans apply at every
step: the template's special tokens (other than end of text), and a word glued to a
sentence's end ("too.Then"): after a word's final punctuation only a token that
starts with a space, a line break or more punctuation may follow.
"""
from __future__ import annotations

import functools
import math
import random
import re
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

# Phrases of an assistant's reply or a reviewer's voice, never of a novel's narration.
# Kept specific: dialogue says "of course" and "would you like", so those are not here.
ASSISTANT = re.compile(
    r"\b(?:as an ai\b|as a (?:large )?language model|i'?m (?:just )?an ai\b|"
    r"here(?:'s| is| are) (?:a |an |the |some |my |your )?(?:rewritten|revised|possible|"
    r"continuation|summary|options?\b|version|next (?:part|chapter|scene))|"
    r"i hope (?:this|that|you) (?:helps|enjoy|find)|let me know if|feel free to|"
    r"i'?m ready when|i'?d be happy to|i can help|happy to help|rewritten version|"
    r"the (?:author|writer|narrator) (?:has |have )?(?:skillfully|masterfully|effectively|"
    r"vividly|cleverly|beautifully|uses|creates|captures|conveys|wove|weaves|woven|"
    r"crafted|paints|portrays|describes)|(?:this|the) (?:passage|excerpt) (?:describes|"
    r"depicts|captures|conveys|highlights|introduces|explores|shows how)|"
    r"in this (?:passage|excerpt|piece)|edited this piece|thoughts have been given|"
    r"word count|(?:sure|certainly|absolutely)! )", re.I)

# A line that starts like one of these is not the novel's prose.
_NUMBER = r"(?:[0-9]+|[ivxlc]+\b|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
HEADING = re.compile(
    r"(?:(?:chapter|part|book|volume|act|scene)\s*(?:" + _NUMBER + r"|[:.\-–—])"
    r"|(?:epilogue|prologue|interlude|afterword|foreword)\b)", re.I)
LINE_START = re.compile(  # refused as soon as it shows, at the start of a line
    r"(?:#{1,6}\s|\*\*|={3,}|-{3,}|<\||\[|(?:\d{1,2}[.)]|[-•*])\s+[\w\"“'(\[])")
FIELD = re.compile(  # refused at the start of a line or a sentence
    r"\[?\s*(?:title|premise|style|genre|tone|theme|summary|synopsis|characters?|plot|"
    r"outline|notes?|next|remember|earlier|author|setting|q|a|question|answer|user|"
    r"assistant|human|ai|system|response|prompt|input|output)\s*:", re.I)
SPEAKER = re.compile(r"[A-Z][\w'’.\-]*(?: [A-Z][\w'’.\-]*)?:\s")  # "Boy: ", "Lady Mary: "
SCENE_BREAK = re.compile(r"\s*(?:(?:\*\s*){3,}|(?:~\s*){3,}|#)\s*\Z")
HOLD_CHARS = 48      # a line or sentence start is shown once this long and not refused
HEADING_WORDS = 9    # a whole line this short that starts like a heading is one
MAX_TRIES = 4        # resamples of one refused start before the passage ends there
THOUGHT = re.compile("\u27e6[^\u27e6\u27e7]*\u27e7\\s*\\Z")  # thoughts.BEGIN ... END
_GLUE = re.compile(r"[^\W\d_]{2}[.!?,;:…][\"”’']?\Z")


def refusal(segment: str, line_start: bool, final: bool = False) -> str | None:
    """Why the start of a line or sentence is not prose (None: it is, or not known yet).

    ``segment`` is the text from that start on; ``final``: no more text will come."""
    seg = segment.lstrip()
    line, nl, _ = seg.partition("\n")
    done = bool(nl) or final  # the line is complete
    if FIELD.match(seg):
        return "prompt field"
    if line_start:
        if LINE_START.match(seg):
            return "heading or list"
        if SPEAKER.match(seg) and not seg.startswith(("\"", "“", "'", "‘")):
            return "speaker label"
        if done and line.strip() and not re.search(r"[^\W\d_]", line) \
                and not SCENE_BREAK.match(line):
            return "not prose"  # "260", "1789-04-25 16:34", "]"
        if HEADING.match(seg) and done and len(line.split()) <= HEADING_WORDS \
                and not line.rstrip().endswith((".", ",", ";")):
            return "heading"
    if ASSISTANT.search(seg[:HOLD_CHARS * 2]):
        return "assistant"
    return None


def _settled(segment: str, line_start: bool) -> bool:
    """The start can be shown: long enough, and not a heading still being written."""
    seg = segment.lstrip()
    line, nl, _ = seg.partition("\n")
    if nl and line.strip():
        return True  # its line is complete and was not refused
    if len(seg) < HOLD_CHARS:
        return False
    return not (line_start and HEADING.match(seg) and len(line) < 100)


@dataclass
class Sampling:
    # Defaults measured with bench prose (docs/measurements.md, "Prose"): min-p keeps
    # the tail of unlikely tokens (word salad) out; a lighter penalty over a shorter
    # window stops loops without pushing common words off the page.
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 200
    seed: int | None = None          # None: a fresh random seed, recorded in the log
    repetition_penalty: float = 1.1  # small models loop without it
    penalty_window: int = 128
    min_p: float = 0.1               # drop tokens below this share of the likeliest one
    refuse: bool = True              # refuse headings, prompt fields, assistant replies

    def resolved(self) -> "Sampling":
        """A copy with a concrete seed and values clamped to sane ranges (the UI's
        sliders rely on it; the CLI refuses what is out of range with ``validate``)."""
        seed = self.seed if self.seed is not None and self.seed >= 0 else random.randrange(2**31)
        return Sampling(temperature=max(0.0, min(float(self.temperature), MAX_TEMPERATURE)),
                        top_p=max(0.01, min(float(self.top_p), 1.0)),
                        max_new_tokens=max(1, min(int(self.max_new_tokens), MAX_NEW_TOKENS)),
                        seed=int(seed), repetition_penalty=max(1.0, float(self.repetition_penalty)),
                        penalty_window=int(self.penalty_window),
                        min_p=max(0.0, min(float(self.min_p), 0.99)), refuse=bool(self.refuse))

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
        number("min-p", self.min_p, 0.0, 0.99)
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


def _sample(logits, recent: list[int], s: Sampling, gen, banned=None) -> int:
    """One token: repetition penalty over ``recent``, then temperature, min-p, top-p;
    ``banned`` ids (a tensor) never come."""
    import torch

    logits = logits.float().clone()
    if s.repetition_penalty > 1.0 and recent:
        idx = torch.tensor(sorted(set(recent)), dtype=torch.long, device=logits.device)
        vals = logits[idx]
        logits[idx] = torch.where(vals > 0, vals / s.repetition_penalty,
                                  vals * s.repetition_penalty)
    if banned is not None and len(banned):
        logits[banned] = -math.inf
    if s.temperature <= 1e-4:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.min_p > 0.0:
        probs = torch.where(probs >= s.min_p * probs.max(), probs, torch.zeros_like(probs))
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        cut = cum - sorted_p > s.top_p * cum[-1]  # keep the smallest set reaching top_p
        sorted_p[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


@functools.lru_cache(maxsize=4)
def _token_classes(tok) -> tuple[list[int], list[int]]:
    """(ids whose text starts with a letter: they would glue a word to the one before;
    special ids, whose text is the chat template's)."""
    n = len(tok)
    texts = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    letters = [i for i, t in enumerate(texts) if t[:1].isalpha() or t[:1] in "“("]
    special = sorted(set(getattr(tok, "all_special_ids", []) or []))
    return letters, special


def lead_text(tok, prompt_ids: list[int], n: int = 48) -> str:
    """The prose the passage continues: the prompt's last tokens as text, without a
    thought that stands at its very end (a passage goes on from the prose before it)."""
    text = tok.decode(prompt_ids[-n:], skip_special_tokens=True) if prompt_ids else ""
    return THOUGHT.sub("", text)


def _starts(text: str, begin: int, lead: str) -> list[tuple[int, bool]]:
    """(offset, at a line start) of every line or sentence start in ``text[begin:]``;
    ``lead`` is the text before ``text``."""
    out = []
    for i in range(begin, len(text)):
        ch = text[i]
        if ch.isspace():
            continue
        before = (lead + text[:i])[-6:]
        if not before or before.rstrip(" \t").endswith("\n"):
            out.append((i, True))
        elif before[-1].isspace() and re.search(r"[.!?…][\"”’')]*\s+\Z", before):
            out.append((i, False))
    return out


def _crop(cache, length: int) -> None:
    """Cut the key/value cache back to its first ``length`` tokens."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # transformers 5: a negative count of tokens to remove


@dataclass
class _Held:
    """A line or sentence start not yet shown: where it began, to roll back to."""
    char: int         # offset of its first letter in the passage text
    token: int        # index of the token that holds it
    line: bool        # at the start of a line


def stream(lm, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None,
           prefix: PrefixCache | None = None, prefix_key=None, forward_context=None,
           result: Result | None = None, opening: str = ""):
    """Yield text deltas as the model writes; fill ``result`` with what happened.

    ``opening``: text at the very end of the prompt that belongs to the passage (the
    context's ``Receipt.opening``): it is the first delta and starts ``result.text``.

    ``forward_context`` is a zero-argument callable returning a context manager that
    wraps every forward pass (the memory attention hooks in there). With
    ``sampling.refuse`` a refused start is resampled before it is shown (module doc).
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
    letters, special = _token_classes(tok)
    letters = torch.tensor(letters, dtype=torch.long, device=device)
    always = [i for i in special if i not in eos]
    lead = lead_text(tok, prompt_ids)

    t0 = time.perf_counter()
    cache, reused = prefix.take(prompt_ids, prefix_key) if prefix else (None, 0)
    cache = cache if cache is not None else DynamicCache(config=model.config)
    result.reused_tokens = reused
    out_ids: list[int] = []
    ends: list[int] = []            # text length after each token of out_ids
    saved: dict[int, object] = {}   # logits each not yet shown token was drawn from
    bans: dict[int, set[int]] = {}  # per position: first tokens of refused starts
    tries: dict[int, int] = {}
    held: _Held | None = None
    scan = 0                        # starts before this offset are settled
    text = shown = ""

    def decoded() -> str:
        t = tok.decode(out_ids, skip_special_tokens=True)
        return t[:-1] if t.endswith("\ufffd") else t  # wait for the rest of a character

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
            if opening:
                result.text = opening
                yield opening
            steps = 0
            while len(out_ids) < s.max_new_tokens:
                steps += 1
                if cancel.is_set() or steps > 2 * s.max_new_tokens + 64:
                    result.stop_reason = "cancelled" if cancel.is_set() else "refused"
                    break
                k = len(out_ids)
                banned = list(always) + sorted(bans.get(k, ()))
                ban = torch.tensor(banned, dtype=torch.long, device=device)
                if _GLUE.search((lead + text)[-8:]):
                    ban = torch.cat([ban, letters])
                if s.refuse:
                    saved[k] = logits
                recent = (list(prompt_ids) + out_ids)[-s.penalty_window:] \
                    if s.penalty_window > 0 else []
                nxt = _sample(logits, recent, s, gen, ban)
                if nxt in eos:
                    result.stop_reason = "eos"
                    break
                out_ids.append(nxt)
                result.new_tokens = len(out_ids)
                text = decoded()
                ends.append(len(text))
                refused = None
                if s.refuse:
                    while True:
                        if held is None:
                            found = _starts(text, scan, lead)
                            if not found:
                                scan = len(text)
                                break
                            at, line = found[0]
                            held = _Held(at, next(j for j, e in enumerate(ends) if e > at),
                                         line)
                        seg = text[held.char:]
                        if refusal(seg, held.line):
                            refused = held
                            break
                        if not _settled(seg, held.line):
                            break
                        scan, held = held.char + 1, None
                if refused is not None:
                    j = refused.token
                    tries[j] = tries.get(j, 0) + 1
                    bans = {p: b for p, b in bans.items() if p <= j}
                    bans.setdefault(j, set()).add(out_ids[j])
                    _crop(cache, len(prompt_ids) + j)
                    logits = saved[j]
                    del out_ids[j:], ends[j:]
                    result.new_tokens = len(out_ids)
                    text, held, scan = decoded(), None, refused.char
                    if tries[j] >= MAX_TRIES:
                        result.stop_reason = "refused"
                        break
                    continue
                upto = ends[held.token - 1] if held is not None and held.token > 0 else (
                    0 if held is not None else len(text))
                if upto > len(shown):
                    delta, shown = text[len(shown):upto], text[:upto]
                    result.text = opening + shown
                    yield delta
                first_held = held.token if held is not None else len(out_ids)
                for p in [p for p in saved if p < first_held]:
                    del saved[p]
                if cancel.is_set():
                    result.stop_reason = "cancelled"
                    break
                with ctx():
                    logits = model(input_ids=torch.tensor([[nxt]], device=device),
                                   past_key_values=cache, use_cache=True).logits[0, -1]
            else:
                result.stop_reason = "length"
            if held is not None:  # the end came while a start was held back
                seg = text[held.char:]
                if refusal(seg, held.line, final=True):
                    _crop(cache, len(prompt_ids) + held.token)
                    del out_ids[held.token:], ends[held.token:]
                    text = decoded()
                    if result.stop_reason != "cancelled":
                        result.stop_reason = "refused"
            if len(text) > len(shown):
                delta, shown = text[len(shown):], text
                result.text = opening + shown
                yield delta
            result.decode_s = time.perf_counter() - t1
            if prefix is not None:
                prefix.keep((list(prompt_ids) + out_ids)[:cache.get_seq_length()], cache,
                            prefix_key)
    finally:
        result.new_tokens = len(out_ids)
        result.token_ids = out_ids
        result.text = opening + tok.decode(out_ids, skip_special_tokens=True).replace("\ufffd", "")
