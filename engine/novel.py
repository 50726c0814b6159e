"""Novel: the one facade the UI and the CLI call. Library: the projects root.

A Continue: build the context (with its receipt), stream from the model while
saving the text as it grows, then record the passage and run the memory writers.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import context, export, importing, writer
from .models import ModelSlot
from .store import ProjectError, Store, slugify, validate_name, validate_text, MAX_CHAPTER_CHARS

AUTOSAVE_S = 0.5            # streamed text reaches disk at least this often
DEFAULT_BUDGET = 2048       # prompt tokens; prefill dominates a Continue on a CPU


class NovelError(ProjectError):
    """Shown to the writer as is."""


@dataclass
class Event:
    """One step of a Continue: the chapter as it stands, and what just happened."""
    text: str
    delta: str = ""
    done: bool = False
    status: str = ""
    receipt: dict | None = None
    result: writer.Result | None = None
    stats: dict = field(default_factory=dict)


class Job:
    """A Continue running in its own thread, so that it finishes and saves even when
    the browser tab that started it is closed; any caller can watch its events."""

    def __init__(self, events):
        self.latest: Event | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        self._changed = threading.Condition()
        self._seq = 0
        self._events = events
        threading.Thread(target=self._run, daemon=True, name="continue").start()

    def _run(self) -> None:
        try:
            for ev in self._events:
                with self._changed:
                    self.latest, self._seq = ev, self._seq + 1
                    self._changed.notify_all()
        except Exception as e:  # noqa: BLE001 - handed to whoever watches
            self.error = e
        finally:
            self.done.set()
            with self._changed:
                self._seq += 1
                self._changed.notify_all()

    def events(self, timeout: float = 1.0):
        """Yield the newest event each time it changes (coalescing), until done."""
        seen = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._seq != seen, timeout)
                seq, ev, finished = self._seq, self.latest, self.done.is_set()
            if seq != seen and ev is not None:
                seen = seq
                yield ev
            if finished:
                if self.error is not None:
                    raise self.error
                return


class Novel:
    def __init__(self, store: Store, model: ModelSlot | None = None):
        self.store = store
        self.folder = store.folder
        self.model = model or ModelSlot()
        self._cancel = threading.Event()
        self._busy = threading.Lock()
        self._prefix = writer.PrefixCache()
        self.last_receipt: dict | None = None
        self.job: Job | None = None
        # Memory writers run after a passage is accepted: fn(novel, chapter_id, passage_id).
        self.after_accept: list = []

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    def create(cls, folder, title: str, premise: str = "", style: str = "",
               model: ModelSlot | None = None) -> "Novel":
        if not (title or "").strip():
            raise NovelError("The title is empty.")
        validate_text("The title", title, 200)
        store = Store.create(Path(folder))
        try:
            store.set_bible(title, premise, style)
        except Exception:
            store.close()
            raise
        return cls(store, model)

    @classmethod
    def open(cls, folder, model: ModelSlot | None = None) -> "Novel":
        return cls(Store.open(Path(folder)), model)

    def close(self) -> None:
        self.store.close()

    # -- the story bible --------------------------------------------------------
    @property
    def bible(self) -> dict:
        return self.store.bible()

    def set_bible(self, title: str, premise: str, style: str) -> None:
        self.store.set_bible(title, premise, style)

    # -- chapters ----------------------------------------------------------------
    def chapters(self) -> list[dict]:
        """[{id, position, title, words}] in reading order."""
        return [{"id": c["id"], "position": c["position"], "title": c["title"],
                 "words": len((c["text"] or "").split())} for c in self.store.chapters()]

    def chapter_id(self, number: int | None = None) -> int:
        """The id of chapter ``number`` (1-based, reading order); None: the last one."""
        chapters = self.store.chapters()
        if not chapters:
            raise NovelError("This novel has no chapters yet; add one first.")
        if number is None:
            return chapters[-1]["id"]
        if not 1 <= number <= len(chapters):
            raise NovelError(f"There is no chapter {number}; this novel has {len(chapters)}.")
        return chapters[number - 1]["id"]

    def add_chapter(self, title: str = "", text: str = "") -> int:
        return self.store.add_chapter(title, text)

    def rename_chapter(self, chapter_id: int, title: str) -> None:
        self.store.rename_chapter(chapter_id, title)

    def move_chapter(self, chapter_id: int, delta: int) -> None:
        self.store.move_chapter(chapter_id, delta)

    def delete_chapter(self, chapter_id: int) -> None:
        self.store.delete_chapter(chapter_id)

    def text(self, chapter_id: int) -> str:
        return self.store.chapter(chapter_id)["text"] or ""

    def save_text(self, chapter_id: int, text: str) -> None:
        """The writer's own edit (rapid edits share one undo step)."""
        if self._busy.locked():
            raise NovelError("The model is writing; press Stop before editing.")
        self.store.save_writer_text(chapter_id, text)

    def manuscript(self) -> str:
        return "\n\n".join((c["text"] or "").strip() for c in self.store.chapters())

    # -- history ---------------------------------------------------------------
    def undo(self, chapter_id: int) -> str:
        self._idle_or_fail()
        self.store.undo(chapter_id)
        return self.text(chapter_id)

    def redo(self, chapter_id: int) -> str:
        self._idle_or_fail()
        self.store.redo(chapter_id)
        return self.text(chapter_id)

    def can_undo_redo(self, chapter_id: int) -> tuple[bool, bool]:
        ch = self.store.chapter(chapter_id)
        parent = self.store.revision(ch["head_rev"])["parent_id"]
        kids = self.store.query("SELECT 1 FROM revisions WHERE parent_id=? LIMIT 1",
                                (ch["head_rev"],))
        return parent is not None, bool(kids)

    def _idle_or_fail(self) -> None:
        if self._busy.locked():
            raise NovelError("The model is writing; press Stop first.")

    # -- import and export --------------------------------------------------------
    def import_files(self, paths, progress=None) -> list[int]:
        """Add each file's chapters; every file is checked before anything is added."""
        parsed = []
        for p in paths:
            text = importing.read_text_file(Path(p))
            parsed += importing.split_chapters(text, Path(p).stem)
        if not parsed:
            raise NovelError("The files hold no text to import.")
        ids = []
        for title, body in (progress(parsed) if progress else parsed):
            ids.append(self.store.add_chapter(title, body, author="writer", action="import"))
        return ids

    def export(self, fmt: str) -> str:
        chapters = [{"title": c["title"], "text": c["text"]} for c in self.store.chapters()]
        return export.render(self.bible, chapters, fmt)

    # -- writing ------------------------------------------------------------------
    def stop(self) -> None:
        """Ask a running Continue to stop; it halts within one token."""
        self._cancel.set()

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def build_context(self, chapter_id: int, budget: int | None = None,
                      base_text: str | None = None) -> tuple[list[int], dict]:
        lm = self.model.get()
        ch = self.store.chapter(chapter_id)
        budget = budget or min(DEFAULT_BUDGET, lm.context_length // 2)
        pins = [(f"memory {m['id']}", m["text"]) for m in self.store.query(
            "SELECT id, text FROM memories WHERE pinned=1 ORDER BY id")]
        tail = ch["text"] if base_text is None else base_text
        ids, receipt = context.build(lm.tokenizer, budget, self.bible, tail,
                                     chapter_heading=ch["title"], pins=pins)
        return ids, receipt.to_dict()

    def continue_chapter(self, chapter_id: int, sampling: writer.Sampling | None = None,
                         prompt: str = "", budget: int | None = None, action: str = "continue"):
        """Stream a new passage onto the chapter; yields Events, saves as it goes."""
        if not self._busy.acquire(blocking=False):
            raise NovelError("The model is already writing in this novel; wait or press Stop.")
        try:
            yield from self._continue(chapter_id, sampling or writer.Sampling(), prompt,
                                      budget, action)
        finally:
            self._busy.release()

    def _continue(self, chapter_id, sampling, prompt, budget, action):
        self._cancel.clear()
        lm = self.model.get()
        validate_text("The prompt", prompt, MAX_CHAPTER_CHARS)
        base = self.text(chapter_id)
        if prompt.strip():  # the writer's own words go in first, as their own revision
            base = (base.rstrip() + "\n\n" + prompt.strip()) if base.strip() else prompt.strip()
            self.store.new_revision(chapter_id, base, "writer", "prompt")
        sampling = sampling.resolved()
        ids, receipt = self.build_context(chapter_id, budget, base)
        self.last_receipt = receipt
        rev = self.store.new_revision(chapter_id, base, "model", action)
        log_id = self.store.log_generation(chapter_id=chapter_id, revision_id=rev,
                                           model=lm.name, params=sampling.to_dict(),
                                           receipt=receipt, prompt_tokens=len(ids),
                                           new_tokens=0, seconds=0.0, status="running")
        yield Event(text=base, status="Reading the context…", receipt=receipt)
        result = writer.Result()
        t0, last_save, text = time.perf_counter(), time.perf_counter(), base
        status = "error"
        try:
            with lm.lock:
                for delta in writer.stream(lm, ids, sampling, self._cancel, self._prefix,
                                           prefix_key=lm.fingerprint, result=result):
                    text += delta
                    if time.perf_counter() - last_save >= AUTOSAVE_S:
                        self.store.update_revision(rev, text)
                        last_save = time.perf_counter()
                    yield Event(text=text, delta=delta, status="Writing…")
            status = result.stop_reason or "done"
        finally:
            text = base + result.text
            seconds = time.perf_counter() - t0
            if result.text:
                self.store.update_revision(rev, text)
                pid = self.store.add_passage(chapter_id, rev, len(base), len(text),
                                             result.text, "model")
            else:  # nothing written: the empty revision is not an undo step
                self._drop_head(chapter_id, rev)
                pid = None
            self.store.update_generation(log_id, status=status, new_tokens=result.new_tokens,
                                         seconds=round(seconds, 3))
        if pid is not None:
            for hook in self.after_accept:
                hook(self, chapter_id, pid)
        stats = {"seed": sampling.seed, "new_tokens": result.new_tokens,
                 "prompt_tokens": result.prompt_tokens, "reused_tokens": result.reused_tokens,
                 "prefill_s": round(result.prefill_s, 2), "decode_s": round(result.decode_s, 2),
                 "tokens_per_s": round(result.new_tokens / result.decode_s, 1)
                 if result.decode_s > 0 else 0.0, "stop_reason": status}
        if not result.text:
            msg = ("Stopped before any text was written." if status == "cancelled" else
                   "The model produced no text (it ended at once). Try again, raise the "
                   "temperature or change the seed.")
        else:
            msg = {"cancelled": "Stopped.", "eos": "The model finished the passage.",
                   "length": "Reached the token limit."}.get(status, "Done.")
        yield Event(text=text, done=True, status=msg, receipt=receipt, result=result,
                    stats=stats)

    def start(self, chapter_id: int, sampling: writer.Sampling | None = None,
              prompt: str = "", retry: bool = False) -> Job:
        """Run a Continue (or a Retry) in the background; see Job."""
        if self.busy or (self.job is not None and not self.job.done.is_set()):
            raise NovelError("The model is already writing in this novel; wait or press Stop.")
        gen = (self.retry(chapter_id, sampling) if retry else
               self.continue_chapter(chapter_id, sampling, prompt=prompt))
        first = next(gen)  # errors (no model, nothing to retry) surface here, at once
        self.job = Job(_chain(first, gen))
        return self.job

    def _drop_head(self, chapter_id: int, rev: int) -> None:
        parent = self.store.revision(rev)["parent_id"]
        with self.store.tx() as db:
            db["chapters"].update(chapter_id, {"head_rev": parent})
            db.execute("DELETE FROM revisions WHERE id=?", (rev,))

    def retry(self, chapter_id: int, sampling: writer.Sampling | None = None,
              budget: int | None = None):
        """Replace the last generated passage with a fresh one (a new seed unless given)."""
        head = self.store.revision(self.store.chapter(chapter_id)["head_rev"])
        if head["author"] != "model":
            raise NovelError("The last change was not written by the model; nothing to retry.")
        if self._busy.locked():
            raise NovelError("The model is already writing; press Stop first.")
        self.store.undo(chapter_id)
        yield from self.continue_chapter(chapter_id, sampling, budget=budget, action="retry")


def _chain(first, rest):
    yield first
    yield from rest


class Library:
    """The projects root: one folder per novel, opened novels shared between callers."""

    def __init__(self, root, model: ModelSlot | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model or ModelSlot()
        self._open: dict[str, Novel] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and (p / "novel.db").is_file())

    def create(self, title: str, premise: str = "", style: str = "", name: str = "") -> str:
        """Create a novel; its folder name is ``name`` or derived from the title."""
        if not (title or "").strip():
            raise NovelError("The title is empty.")
        name = validate_name(name) if (name or "").strip() else slugify(title)
        if not name:
            raise NovelError("Give the novel a project name made of letters or digits.")
        validate_name(name)
        if (self.root / name).exists():
            raise NovelError(f"A novel named '{name}' already exists; choose another name.")
        with self._lock:
            self._open[name] = Novel.create(self.root / name, title, premise, style, self.model)
        return name

    def open(self, name: str) -> Novel:
        name = validate_name(name)
        with self._lock:
            if name not in self._open:
                self._open[name] = Novel.open(self.root / name, self.model)
            return self._open[name]
