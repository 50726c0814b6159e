"""One Continue (or Retry), as named steps: the base text, a plan note, the context and its
receipt, the memories' readers, the stream (saved as it grows), the save, the margin
notes, and the memories' after-accept writers. ``Novel`` runs it under its ``Desk``."""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from . import context, writer
from .jobs import Event, Halt, NovelError
from .store import MAX_CHAPTER_CHARS, validate_text
from .thoughts import BEGIN, Router, Thought, note_points, with_thoughts, write_note

AUTOSAVE_S = 0.5        # streamed text reaches disk at least this often
DEFAULT_BUDGET = 2048   # prompt tokens; prefill dominates a Continue on a CPU
MIN_ROOM = 200          # characters a Continue needs left under MAX_CHAPTER_CHARS
LIMIT_REACHED = "The chapter reached its length limit; start a new chapter."
INSTRUCTION = "The writer asks for the next passage: {}"
MAX_INSTRUCTION_CHARS = 5_000  # a note's length: an instruction, not a chapter


def build_context(novel, chapter_id: int, budget: int | None = None,
                  base_text: str | None = None, frame: str | None = None,
                  instruction: str = "") -> tuple[list[int], dict]:
    """The prompt ids and the receipt for continuing ``base_text`` (default: the chapter);
    ``frame``: context.build's (None: its default); ``instruction``: the writer's word for
    this Continue only, read as a note after the last words and never saved."""
    lm = novel.model.get()
    ch = novel.chapters.get(chapter_id)
    budget = budget or min(DEFAULT_BUDGET, lm.context_length // 2)
    pinned = novel.memories.pinned()
    pins = [(context.Receipt.quote(m["text"]), m["text"]) for m in pinned]
    tail = ch["text"] if base_text is None else base_text
    tail = novel.notes.inline_tail(chapter_id, tail)  # recent notes stay inline
    if instruction := " ".join((instruction or "").split()):
        tail = with_thoughts(tail, [Thought(len(tail), INSTRUCTION.format(instruction))])
    recalled, warnings = novel.memories.recall(tail, budget,
                                               {f"memory:{m['id']}" for m in pinned},
                                               lm.tokenizer)
    ids, receipt = context.build(lm.tokenizer, budget, novel.bible, tail,
                                 chapter_heading=ch["title"], pins=pins,
                                 recalled=[h.to_context(novel.store) for h in recalled],
                                 frame=frame)
    receipt.warnings += warnings
    return ids, receipt.to_dict()


@dataclass
class Run:
    """What the steps of one Continue share."""
    chapter_id: int
    sampling: writer.Sampling
    base: str
    lm: object = None
    notes: dict = field(default_factory=dict)   # the thoughts settings
    adapter: object = None                      # context factory (self-commentary)
    adapter_key: object = None
    receipt: dict = field(default_factory=dict)
    ids: list = field(default_factory=list)
    text: str = ""
    written: str = ""
    passage: int | None = None
    status: str = "error"
    inline_notes: bool = False                  # the model wrote its own notes inline
    result: writer.Result = field(default_factory=writer.Result)

    @property
    def self_mode(self) -> bool:
        return self.adapter_key is not None


def continue_passage(novel, chapter_id, sampling, prompt="", budget=None, action="continue",
                     instruction=""):
    """Stream a new passage onto the chapter; yields Events, saves as it goes. The caller
    holds the novel's Desk."""
    validate_text("The instruction", instruction or "", MAX_INSTRUCTION_CHARS)
    run = Run(chapter_id, sampling, base_text(novel, chapter_id, prompt))
    if novel.model.peek() is None:  # a first Continue right after start: say why it waits
        yield Event(text=run.base, status="Waiting for the model to load…")
    run.lm, run.sampling = novel.model.get(), sampling.resolved()
    run.notes = novel.thoughts.settings()
    run.adapter, run.adapter_key = novel.thoughts.self_commentary(run.lm, run.notes)
    if prompt.strip():  # only once every check above has passed
        novel.store.new_revision(chapter_id, run.base, "writer", "prompt")
    yield from plan_note(novel, run)
    # a model tuned to write its notes inline learned them in plain text, not in a chat
    run.ids, run.receipt = build_context(novel, chapter_id, budget, run.base,
                                         frame="raw" if run.self_mode else None,
                                         instruction=instruction)
    novel.last_receipt = run.receipt
    forward, key = yield from read_memories(novel, run)
    yield from stream(novel, run, action, forward, key)
    if run.passage is not None:
        yield from margin_notes(novel, run)
        # the memory writers run on the passage with its notes (the kNN store holds notes
        # inline); indexing can take seconds, so the page says what it waits on
        yield Event(text=run.text, status="Adding the passage to the book's memory…")
        for memory in novel.memory:
            memory.after_accept(chapter_id, run.passage)
    yield summary(run)


def base_text(novel, chapter_id: int, prompt: str) -> str:
    """The chapter with the writer's prompt appended; refused (before any model is
    loaded) for a chapter in the trash or one with no room left."""
    validate_text("The prompt", prompt, MAX_CHAPTER_CHARS)
    ch = novel.chapters.get(chapter_id)
    if ch["deleted"] is not None:
        raise NovelError(f"'{ch['title']}' is in the trash; restore it to write in it.")
    base = ch["text"] or ""
    if prompt.strip():  # the writer's own words go in first, as their own revision
        base = (base.rstrip() + "\n\n" + prompt.strip()) if base.strip() else prompt.strip()
    if len(base) + MIN_ROOM > MAX_CHAPTER_CHARS:
        raise NovelError(
            f"This chapter is at its length limit ({len(base):,} characters"
            f"{' with the prompt' if prompt.strip() else ''}; a chapter holds at most "
            f"{MAX_CHAPTER_CHARS:,}): start a new chapter to write on.")
    return base


def plan_note(novel, run: Run):
    """A prompted note planning the passage, before it (plan_first)."""
    s = run.notes
    if not (s["on"] and s["plan_first"]) or run.self_mode or novel.desk.cancel.is_set():
        return
    yield Event(text=run.base, status="Planning the next passage…")
    plan = write_note(run.lm, run.base or novel.bible.get("premise", ""), novel.bible,
                      plan=True, seed=run.sampling.seed, cancel=novel.desk.cancel)
    if plan:
        novel.notes.add(run.chapter_id, len(run.base), plan, author="model")


def read_memories(novel, run: Run):
    """(forward context factory or None, prefix-cache key) from every memory's reader."""
    factories, key = [], [run.lm.fingerprint]
    for memory in novel.memory:
        if (status := memory.preparing()) and not novel.desk.cancel.is_set():
            yield Event(text=run.base, status=status)
        reader = memory.reader(run.lm, run.chapter_id, run.ids, run.receipt)
        if reader is None:
            continue
        run.receipt.setdefault("warnings", []).extend(reader.warnings)
        if reader.context is not None:
            factories.append(reader.context)
        if reader.key is not None:
            key.append((memory.name, reader.key))
    if run.self_mode:
        key.append(("thoughts", run.adapter_key))
    return _entered(factories), tuple(key)


def stream(novel, run: Run, action: str, forward, key):
    """Sample the passage, saving the growing text; margin-note markers go to the margin
    and never reach the page. Records the passage (or drops an empty revision)."""
    store, cid, lm, base = novel.store, run.chapter_id, run.lm, run.base
    rev = store.new_revision(cid, base, "model", action)
    log_id = store.log_generation(chapter_id=cid, revision_id=rev, model=lm.name,
                                  params=run.sampling.to_dict(), receipt=run.receipt,
                                  prompt_tokens=len(run.ids), new_tokens=0, seconds=0.0,
                                  status="running")
    yield Event(text=base, status="Reading the context…", receipt=run.receipt)
    router, ids = Router(), run.ids
    if run.self_mode and run.notes["plan_first"]:  # the tuned model opens with its note
        ids = ids + lm.tokenizer(BEGIN, add_special_tokens=False)["input_ids"]
        router.feed(BEGIN)
    t0 = last_save = time.perf_counter()
    text, room = base, MAX_CHAPTER_CHARS - len(base)  # the chapter never passes its limit
    halt = Halt(novel.desk.cancel)
    try:
        with lm.lock, run.adapter():  # the adapter only while this novel writes
            for delta in writer.stream(lm, ids, run.sampling, halt, novel.prefix_cache,
                                       prefix_key=key, forward_context=forward,
                                       result=run.result):
                delta = router.feed(delta)
                if len(router.prose) >= room:
                    delta = delta[:max(0, len(delta) - (len(router.prose) - room))]
                    halt.limit = True  # the stream ends before its next token
                text += delta
                if time.perf_counter() - last_save >= AUTOSAVE_S:
                    store.update_revision(rev, text)
                    last_save = time.perf_counter()
                yield Event(text=text, delta=delta, status="Writing…")
        run.status = "limit" if halt.limit else (run.result.stop_reason or "done")
    finally:
        router.finish()
        run.written = router.prose[:room]
        run.text = base + run.written
        if run.written:
            store.update_revision(rev, run.text)
            run.passage = store.add_passage(cid, rev, len(base), len(run.text), run.written,
                                            "model")
            for t in router.thoughts:
                novel.notes.add(cid, len(base) + t.anchor, t.text, run.passage, "model")
        else:  # nothing written: the empty revision is not an undo step (unless another
            store.drop_empty_head(cid, rev)  # tab or process built on it meanwhile)
        store.update_generation(log_id, status=run.status, new_tokens=run.result.new_tokens,
                                seconds=round(time.perf_counter() - t0, 3))
    run.inline_notes = bool(router.thoughts)


def margin_notes(novel, run: Run):
    """Prompted notes after the passage, one per paragraph (or passage, or N tokens)."""
    s = run.notes
    if (not s["on"] or s["plan_first"] or run.inline_notes or run.self_mode
            or run.status == "cancelled"):
        return
    points = note_points(run.written, s["every"], run.lm.tokenizer)
    last = 0
    for i, end in enumerate(points):
        if novel.desk.cancel.is_set():
            break
        yield Event(text=run.text, status="Writing a margin note…" if len(points) == 1
                    else f"Writing margin note {i + 1} of {len(points)}…")
        note = write_note(run.lm, run.written[last:end], novel.bible,
                          seed=run.sampling.seed + i, cancel=novel.desk.cancel)
        if note:
            novel.notes.add(run.chapter_id, len(run.base) + end, note, run.passage, "model")
        last = end


def summary(run: Run) -> Event:
    """The last event: what happened, in words, with the figures."""
    r, status = run.result, run.status
    stats = {"seed": run.sampling.seed, "new_tokens": r.new_tokens,
             "prompt_tokens": r.prompt_tokens, "reused_tokens": r.reused_tokens,
             "prefill_s": round(r.prefill_s, 2), "decode_s": round(r.decode_s, 2),
             "tokens_per_s": round(r.new_tokens / r.decode_s, 1) if r.decode_s > 0 else 0.0,
             "stop_reason": status}
    if not run.written:
        msg = ("Stopped before any text was written." if status == "cancelled" else
               "The model produced no text (it ended at once). Try again, raise the "
               "temperature or change the seed.")
    else:
        msg = {"cancelled": "Stopped.", "eos": "The model finished the passage.",
               "length": "Reached the token limit.",
               "limit": LIMIT_REACHED}.get(status, "Done.")
    if run.receipt.get("warnings"):  # e.g. pins alone over budget: the writer must know
        msg += " ⚠ " + " ".join(run.receipt["warnings"])
    return Event(text=run.text, done=True, status=msg, receipt=run.receipt, result=r,
                 stats=stats)


def _entered(factories):
    """One forward-context factory entering each of the given ones (None when none)."""
    if len(factories) <= 1:
        return factories[0] if factories else None

    def enter():
        stack = ExitStack()
        for f in factories:
            stack.enter_context(f())
        return stack
    return enter
