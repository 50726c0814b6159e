"""The context builder: a prompt inside the model's token budget, and its receipt.

Blocks go in stable-first (story bible, pinned memories, recalled memories, recent
thoughts, then the tail of the manuscript) so the key/value cache of an unchanged
prefix can be reused between Continues. Each block is tokenised on its own and the
prompt is the concatenation of those ids, so the receipt's token counts are exactly
what the model reads.

Two framings (``frame``): ``raw`` is plain text for the model to continue; ``chat``
puts the bible, memories and the notes at the end of the text in a user turn of the
model's own chat template and the story so far in the assistant's turn, left open, so
an instruct model goes on writing its own prose instead of answering about it. A
tokenizer without a chat template always gets ``raw``. ``frame_*`` blocks in the
receipt are the template's text.
"""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from .thoughts import BEGIN, END

# When the budget is short, room goes to: pins (reserved; dropped only when pins
# alone exceed the budget), the bible, a share for the tail, thoughts, recalled.
MIN_TAIL_SHARE = 0.5  # the tail may use at least this share of what pins and bible leave
FRAMES = ("raw", "chat")
DEFAULT_FRAME = "chat"  # measured in docs/measurements.md ("Prose")
SYSTEM = ("You are a novelist writing a book. In your turn you continue the story "
          "exactly where it stops, in its own style: prose only, no headings, lists, "
          "notes or comments.")
ASK = "Continue the story."
PLAN_ASK = "{ask} What happens next: {plan}."
_PLAN = re.compile(r"\s*(?:next|then|plan)\s*:\s*", re.I)  # a writer's steering note


def ask_text(plans: list[str]) -> str:
    """The request at the end of the user's turn, with the writer's plan in it."""
    plans = [_PLAN.sub("", p).strip().rstrip(" .") for p in plans]
    plans = [p for p in plans if p]
    if not plans:
        return ASK
    return PLAN_ASK.format(ask=ASK, plan="; ".join(plans))
_TRAILING_THOUGHTS = re.compile(rf"(?:\s*{BEGIN}[^{BEGIN}{END}]*{END})+\s*\Z")


@dataclass
class Block:
    kind: str            # bible | pinned | recalled | associated | thought | tail
    label: str           # what the writer sees in the receipt
    why: str             # why it went in (pinned, similar 0.82, recent, ...)
    text: str
    ids: list[int] = field(default_factory=list)
    score: float | None = None
    meta: dict = field(default_factory=dict)  # recall details: key, tier, via


@dataclass
class Receipt:
    budget: int
    total_tokens: int = 0
    blocks: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    inside: list[str] = field(default_factory=list)  # memories read inside attention
    opening: str = ""  # the prompt's last text, which the passage begins with (writer.stream)

    def to_dict(self) -> dict:
        return asdict(self)

    QUOTE_CHARS = 60
    _WRAPPED = re.compile(r"\[(?:Remember|Earlier|Note): (.*)\]\s*", re.S)
    _MARKUP = re.compile(r"([\\`*_\[\]<>#|~])")

    @classmethod
    def quote(cls, text: str, limit: int | None = None) -> str:
        """The start of a memory's text as the writer reads it: “Elena's eyes are…”
        (without the prompt's [Remember: …] wrapping, cut at a word)."""
        limit = limit or cls.QUOTE_CHARS
        text = text or ""
        if m := cls._WRAPPED.fullmatch(text):
            text = m.group(1)
        text = " ".join(text.split())
        if len(text) > limit:
            text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:.!? ") + "…"
        return f"“{text}”"

    def _line(self, b: dict, dropped: bool = False) -> str:
        """What one block is, in the writer's words: 'pinned: “Elena's eyes…”',
        'recalled from Chapter 3 “The Storm”: “She opened…”', 'Story bible'."""
        kind, label = b["kind"], b.get("label") or ""
        quote = self.quote(b["text"]) if b.get("text") else ""
        if kind == "pinned":  # a dropped block has no text; a pin's label is its quote
            head, rest = "pinned", f": {quote or label}"
        elif kind in ("recalled", "associated", "thought"):
            head = "margin note" if kind == "thought" else kind
            rest = (f" from {label}" if label else "") + (f": {quote}" if quote else "")
        else:  # bible, tail: their labels say what they are
            head, rest = label or kind, ""
        head, rest = (self._MARKUP.sub(r"\\\1", x) for x in (head, rest))
        return f"~~{head}{rest}~~" if dropped else f"**{head}**{rest}"

    def markdown(self) -> str:
        lines = [f"**Context:** {self.total_tokens} of {self.budget} tokens"]
        for b in self.blocks:
            lines.append(f"- {self._line(b)} · {b['tokens']} tok · {b['why']}")
        for d in self.dropped:
            lines.append(f"- {self._line(d, dropped=True)} · {d['tokens']} tok · dropped: "
                         f"{d['reason']}")
        if self.inside:  # not prompt tokens: what the attention layers also read
            # blank lines: a heading right after a list item renders inside that item
            lines += ["", "**Read inside attention:**", ""]
            lines += [f"- {x}" for x in self.inside]
        lines += [f"- ⚠ {w}" for w in self.warnings]
        return "\n".join(lines)


CACHE_CHARS = 20_000  # texts this long are remembered (a whole novel takes ~1 s)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens: the one way prompts, memories and
    scoring tokenize. A Continue reads the whole book several times (the kNN store's
    sync, its horizon, the matrix segments), so long texts come from a small cache."""
    if not text:
        return []
    if len(text) < CACHE_CHARS:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return _encode_long(tokenizer, text).tolist()


@functools.lru_cache(maxsize=8)
def _encode_long(tokenizer, text: str) -> np.ndarray:
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    ids.flags.writeable = False
    return ids


def bible_text(bible: dict) -> str:
    parts = [f"Title: {bible.get('title', '').strip()}"]
    if (bible.get("premise") or "").strip():
        parts.append(f"Premise: {bible['premise'].strip()}")
    if (bible.get("style") or "").strip():
        parts.append(f"Style: {bible['style'].strip()}")
    return "\n".join(parts) + "\n\n"


def memory_text(kind: str, text: str) -> str:
    head = {"pinned": "Remember", "recalled": "Earlier", "associated": "Earlier",
            "thought": "Note"}[kind]
    return f"[{head}: {text.strip()}]\n"


def chat_frame(tokenizer, system: str = SYSTEM) -> tuple[str, str] | None:
    """The model's chat template around a user turn and an open assistant turn, as
    (text before the user's words, text between them and the assistant's); None when
    the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    user, story = "\x00USER\x00", "\x00STORY\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user},
             {"role": "assistant", "content": story}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that will not render: plain text
        return None
    if not isinstance(text, str) or user not in text or story not in text:
        return None
    i, j = text.index(user), text.index(story)
    return text[:i], text[i + len(user):j]


def build(tokenizer, budget: int, bible: dict, tail: str, chapter_heading: str = "",
          pins: list[tuple[str, str]] = (), recalled: list[tuple[str, str, str]] = (),
          thoughts: list[tuple[str, str]] = (), frame: str | None = None,
          open_with_plan: bool = False) -> tuple[list[int], Receipt]:
    """Assemble the prompt ids and the receipt.

    pins: (label, text); recalled: (label, text, why) or dicts with label, text, why,
    score, kind ('recalled' | 'associated'), key, tier, via, in priority order;
    thoughts: (label, text); frame: 'raw' | 'chat' (None: ``DEFAULT_FRAME``). Each
    receipt block records its offset in the prompt ids. ``open_with_plan``: with the
    chat frame and a writer's "Next: <person> ..." note after text that ends a
    sentence, the passage opens a new paragraph with that person's name (in the
    prompt, and in ``Receipt.opening`` for ``writer.stream(opening=...)`` to show).
    """
    frame = frame or DEFAULT_FRAME
    if frame not in FRAMES:
        raise ValueError(f"The frame must be one of {', '.join(FRAMES)}, not {frame!r}.")
    pieces = chat_frame(tokenizer) if frame == "chat" else None
    receipt = Receipt(budget=budget)
    thoughts = list(thoughts)
    plans: list[str] = []
    if pieces is not None and (m := _TRAILING_THOUGHTS.search(tail)):
        # the notes after the last words go in the user's turn: the story stays prose;
        # a writer's "Next: ..." becomes the request itself
        for note in re.findall(rf"{BEGIN}([^{BEGIN}{END}]*){END}", m.group(0)):
            if _PLAN.match(note):
                plans.append(note)
            else:
                thoughts.append(("note at the end of the text", note))
        tail = tail[:m.start()]
    candidates: list[Block] = [Block("bible", "Story bible", "always", bible_text(bible))]
    candidates += [Block("pinned", label, "pinned by the writer", memory_text("pinned", text))
                   for label, text in pins]
    for r in recalled:
        r = r if isinstance(r, dict) else dict(zip(("label", "text", "why"), r))
        kind = r.get("kind") or "recalled"
        meta = {k: r[k] for k in ("key", "tier", "via") if r.get(k) is not None}
        candidates.append(Block(kind, r["label"], r["why"], memory_text(kind, r["text"]),
                                score=r.get("score"), meta=meta))
    candidates += [Block("thought", label, "recent thought", memory_text("thought", text))
                   for label, text in thoughts]
    if plans:  # the writer's steering note, as the request that ends the user's turn
        candidates.append(Block("thought", "the writer's note for what comes next",
                                "the writer's plan", "\n" + ask_text(plans), meta={"plan": 1}))
    for b in candidates:
        b.ids = encode(tokenizer, b.text)
    heading = f"{chapter_heading.strip()}\n\n" if chapter_heading.strip() else ""
    head_ids, tail_ids = encode(tokenizer, heading), encode(tokenizer, tail)
    frames: list[Block] = []
    if pieces is not None:
        frames = [Block("frame_user", "Chat template: instructions", "the model's chat "
                        "template", pieces[0]),
                  Block("frame_story", "Chat template: the story's turn", "the model's "
                        "chat template", ("" if plans else f"\n{ASK}") + pieces[1])]
        for b in frames:
            b.ids = encode(tokenizer, b.text)

    left = budget - sum(len(b.ids) for b in frames)
    def drop(b: Block, reason: str) -> None:
        receipt.dropped.append({"kind": b.kind, "label": b.label, "tokens": len(b.ids),
                                "reason": reason, "score": b.score, **b.meta})

    # 1. pins: reserved; only pins alone over budget drop any (the newest first).
    pins_b = [b for b in candidates if b.kind == "pinned"]
    while sum(len(b.ids) for b in pins_b) > left:
        victim = pins_b.pop()
        drop(victim, "pinned memories alone exceed the whole context budget")
        receipt.warnings.append(
            "Pinned memories alone exceed the context budget: some pins were left out. "
            "Shorten or unpin some, or raise the budget.")
    left -= sum(len(b.ids) for b in pins_b)
    # 2. the bible, then a reserved share for the tail, then thoughts and recalled.
    bible_b = candidates[0]
    if len(bible_b.ids) <= left:
        left -= len(bible_b.ids)
    else:
        drop(bible_b, "no room left after pinned memories")
        bible_b = None
    tail_reserve = min(len(head_ids) + len(tail_ids), int(left * MIN_TAIL_SHARE))
    left -= tail_reserve
    extras = []
    for kinds in (("thought",), ("recalled", "associated")):
        for b in (c for c in candidates if c.kind in kinds):
            if len(b.ids) <= left:
                extras.append(b)
                left -= len(b.ids)
            else:
                drop(b, "over budget (lower priority than the recent text)")
    left += tail_reserve
    # 3. the tail takes everything that is left, cut from the left.
    if len(head_ids) > left:
        head_ids = []
    keep = max(0, min(len(tail_ids), left - len(head_ids)))
    if keep < len(tail_ids):
        receipt.dropped.append({"kind": "tail", "label": "older manuscript text",
                                "tokens": len(tail_ids) - keep,
                                "reason": "beyond the budget; older text is cut first"})
    kept_tail = tail_ids[len(tail_ids) - keep:] if keep else []
    tail_b = Block("tail", "Recent text" + (f" of {chapter_heading.strip()}" if heading else ""),
                   "the text being continued", "", head_ids + kept_tail)
    tail_b.text = tokenizer.decode(tail_b.ids) if tail_b.ids else ""

    opening_b = None
    if open_with_plan and plans and tail_b.ids and re.search(r"[.!?…][\"”’']?\s*\Z", tail):
        from .thoughts import note_names

        plan = _PLAN.sub("", plans[-1])
        names = sorted(note_names(plan), key=plan.find)  # its subject: the first named
        if names:
            receipt.opening = ("" if tail.endswith("\n\n") else
                               "\n" if tail.endswith("\n") else "\n\n") + names[0]
            opening_b = Block("opening", "the passage's first word, from the writer's note",
                              "the writer's plan", receipt.opening)
            opening_b.ids = encode(tokenizer, receipt.opening)

    # Stable-first order for prefix reuse.
    chosen = frames[:1] + ([bible_b] if bible_b else []) + pins_b
    chosen += [b for b in extras if b.kind in ("recalled", "associated")]
    chosen += [b for b in extras if b.kind == "thought" and "plan" not in b.meta]
    chosen += [b for b in extras if "plan" in b.meta] + frames[1:] + [tail_b]
    chosen += [opening_b] if opening_b is not None else []
    ids: list[int] = []
    for b in chosen:
        if not b.ids:
            continue
        receipt.blocks.append({"kind": b.kind, "label": b.label, "why": b.why,
                               "tokens": len(b.ids), "start": len(ids), "text": b.text,
                               "score": b.score, **b.meta})
        ids += b.ids
    receipt.total_tokens = len(ids)
    return ids, receipt
