"""Novel: the one facade the UI and the CLI call. Library: the projects root.

A Continue: build the context (with its receipt), stream from the model while
saving the text as it grows, then record the passage and run the memory writers.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from . import context, export, importing, writer
from .thoughts import BEGIN, Router, ThoughtBook, note_points, parse_every, write_note
from .models import ModelSlot
from .store import (ProjectError, Store, change_preview, slugify, validate_name, validate_text,
                    MAX_CHAPTER_CHARS, MAX_TITLE_CHARS)

AUTOSAVE_S = 0.5            # streamed text reaches disk at least this often
DEFAULT_BUDGET = 2048       # prompt tokens; prefill dominates a Continue on a CPU
MAX_MEMORY_CHARS = 4000     # a memory is a fact or a sentence, not a chapter
THOUGHT_MODES = ("prompt", "self")  # who writes the margin notes (see set_thought_settings)
SYNC_LIMIT = 128            # chunks embedded in line per Continue (~1-2 s on two cores)
MIN_ROOM = 200              # characters a Continue needs left under MAX_CHAPTER_CHARS
ANOTHER_WRITER = ("This novel is being written by another process; wait for it to finish "
                  "or stop it.")
LIMIT_REACHED = "The chapter reached its length limit; start a new chapter."


class NovelError(ProjectError):
    """Shown to the writer as is."""


class StaleText(NovelError):
    """save_text from a copy of the chapter that is no longer its head: the writer's text
    was kept as another version (``saved``), the head (``head``) was left as it is."""

    def __init__(self, head: int, saved: int, busy: bool = False):
        super().__init__(
            "The model is writing in this novel; press Stop before editing. What you typed "
            "is kept as another version (under \"Other versions\"), and the chapter is "
            "shown as it stands."
            if busy else
            "This chapter was changed elsewhere (another tab or window) after your copy was "
            "loaded: the newest text is shown, and your version is kept under \"Other "
            "versions\".")
        self.head, self.saved = head, saved


class _Halt:
    """The cancel flag writer.stream watches: the writer's Stop, or the length limit."""

    def __init__(self, cancel: threading.Event):
        self.cancel, self.limit = cancel, False

    def is_set(self) -> bool:
        return self.limit or self.cancel.is_set()


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
        self._writing_cid: int | None = None  # the chapter a running Continue writes in
        self._prefix = writer.PrefixCache()
        self.last_receipt: dict | None = None
        self.job: Job | None = None
        # Memory writers run after a passage is accepted: fn(novel, chapter_id, passage_id).
        self.after_accept: list = [_embed_passage]
        self.thoughts = ThoughtBook(store)
        self._semantic = None
        from .memory.knn_project import ProjectKNN
        self._knn = ProjectKNN(self)  # kNN memory: engine/memory/knn_project.py
        self.after_accept.append(self._knn.after_accept)
        from .memory.matrix_project import ProjectMatrix
        self._matrix = ProjectMatrix(self)  # memory matrix: engine/memory/matrix_project.py
        self.after_accept.append(self._matrix.after_accept)

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
        """Move the chapter to the trash (see trash, restore_chapter)."""
        if self.writing_chapter == chapter_id:
            raise NovelError("The model is writing in this chapter; press Stop first.")
        self.store.delete_chapter(chapter_id)

    def trash(self) -> list[dict]:
        """[{id, title, words, deleted (timestamp)}], the newest deletion first."""
        return [{"id": c["id"], "title": c["title"], "words": len((c["text"] or "").split()),
                 "deleted": c["deleted"]} for c in self.store.trash()]

    def restore_chapter(self, chapter_id: int) -> int:
        """Bring a chapter back from the trash, at its old position; returns its id."""
        try:
            return self.store.restore_chapter(chapter_id)
        except ProjectError as e:
            raise NovelError(str(e)) from e

    def text(self, chapter_id: int) -> str:
        return self.store.chapter(chapter_id)["text"] or ""

    def save_text(self, chapter_id: int, text: str, base_rev: int | None = None,
                  base_text: str | None = None) -> int:
        """The writer's own edit (rapid edits share one undo step); returns the head
        revision. ``base_rev``/``base_text``: the head and text the writer's copy was
        loaded from or last saved (pass back what each save returns). When the chapter
        moved on since (another tab, a Continue elsewhere), nothing is overwritten: the
        text becomes another version and StaleText is raised."""
        base_rev = None if base_rev is None else int(base_rev)
        if base_rev is not None and not self.store.revisions.belongs(base_rev, chapter_id):
            raise NovelError(f"Revision {base_rev} is not part of chapter {chapter_id}.")
        busy = self._busy.locked()  # typing in another tab while the model writes: kept
        if busy and base_rev is None:  # beside the passage being written, not under it
            head = self.store.revision(self.head(chapter_id))
            base_rev = head["parent_id"] if head["author"] == "model" else None
        old = self.text(chapter_id)
        head, branch = self.store.save_writer_text(chapter_id, text, base_rev, base_text,
                                                   aside=busy)
        if branch is not None:
            raise StaleText(head, branch, busy=busy)
        if busy:  # nothing to keep (the text is the chapter's already)
            raise NovelError("The model is writing; press Stop before editing.")
        self.thoughts.follow_edit(chapter_id, old, text)
        return head

    def manuscript(self) -> str:
        return "\n\n".join((c["text"] or "").strip() for c in self.store.chapters())

    def memory_text(self, chapter: dict) -> str:
        """A chapter as the kNN memory holds it: its prose with every margin note inline,
        so a note that has left the context can still be recalled inside attention."""
        return self.thoughts.inline_tail(chapter["id"], chapter["text"] or "", None).strip()

    def memory_book(self) -> str:
        """The whole book as the kNN memory holds it (see memory_text)."""
        return "\n\n".join(self.memory_text(c) for c in self.store.chapters())

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
        return parent is not None, self.store.latest_child(ch["head_rev"]) is not None

    def head(self, chapter_id: int) -> int:
        """The id of the chapter's current revision."""
        return self.store.chapter(chapter_id)["head_rev"]

    def versions(self, chapter_id: int) -> list[dict]:
        """The alternatives at this point of the history: every revision made on the head's
        parent (the head among them), oldest first, each {id, author, action, created,
        words, preview (the start of what it adds to the parent), current}; [] when the
        head is the first revision."""
        head = self.store.revision(self.head(chapter_id))
        if head["parent_id"] is None:
            return []
        parent = self.store.revision(head["parent_id"])["text"] or ""
        return [{"id": r["id"], "author": r["author"], "action": r["action"],
                 "created": r["created"], "words": len((r["text"] or "").split()),
                 "preview": change_preview(parent, r["text"] or ""),
                 "current": r["id"] == head["id"]}
                for r in self.store.children(head["parent_id"])]

    def switch_version(self, chapter_id: int, rev_id: int) -> str:
        """Make another version (any revision of this chapter) the head; its text."""
        self._idle_or_fail()
        try:
            self.store.switch_head(chapter_id, int(rev_id))
        except ProjectError as e:
            raise NovelError(str(e)) from e
        return self.text(chapter_id)

    def _idle_or_fail(self) -> None:
        if self._busy.locked():
            raise NovelError("The model is writing; press Stop first.")

    # -- import and export --------------------------------------------------------
    def import_files(self, paths, progress=None, encodings: dict | None = None) -> list[int]:
        """Add each file's chapters; every file is checked before anything is added.
        ``encodings``, when given, is filled with {file name: encoding read}."""
        parsed = []
        for p in paths:
            text, enc = importing.read_text(Path(p))
            if encodings is not None:
                encodings[Path(p).name] = enc
            parsed += importing.split_chapters(text, Path(p).stem)
        if not parsed:
            raise NovelError("The files hold no text to import.")
        for title, body in parsed:  # every chapter checked before the first is added
            validate_text("The chapter title", (title or "").strip(), MAX_TITLE_CHARS)
            validate_text(f"The chapter '{(title or '').strip()[:60]}'", body,
                          MAX_CHAPTER_CHARS)
        blank = self._untouched_blank_chapter()
        # one transaction: a kill mid-import leaves the novel as it was; the empty
        # "Chapter 1" a new novel opens with gives way in the same one
        return self.store.add_chapters(progress(parsed) if progress else parsed,
                                       author="writer", action="import", replace=blank)

    def _untouched_blank_chapter(self) -> int | None:
        """The id of the novel's only chapter when nothing was ever written in it."""
        chapters = self.store.chapters()
        if len(chapters) != 1 or (chapters[0]["text"] or "").strip():
            return None
        cid = chapters[0]["id"]
        revisions = self.store.revisions.count(cid)
        if revisions > 1 or self.thoughts.list(cid):  # an undone draft is still kept
            return None
        return cid

    def export(self, fmt: str) -> str:
        chapters = [{"title": c["title"], "text": c["text"]} for c in self.store.chapters()]
        return export.render(self.bible, chapters, fmt)

    # -- writing ------------------------------------------------------------------
    def stop(self) -> None:
        """Ask a running Continue to stop; it halts within one token."""
        self._cancel.set()

    @property
    def writing_chapter(self) -> int | None:
        """The chapter a running Continue writes in (None when idle)."""
        return self._writing_cid if self.busy else None

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def build_context(self, chapter_id: int, budget: int | None = None,
                      base_text: str | None = None) -> tuple[list[int], dict]:
        lm = self.model.get()
        ch = self.store.chapter(chapter_id)
        budget = budget or min(DEFAULT_BUDGET, lm.context_length // 2)
        pinned = self.store.memories.pinned()
        pins = [(context.Receipt.quote(m["text"]), m["text"]) for m in pinned]
        tail = ch["text"] if base_text is None else base_text
        tail = self.thoughts.inline_tail(chapter_id, tail)  # recent thoughts stay inline
        recalled, warnings = self._recall(tail, budget, {f"memory:{m['id']}" for m in pinned},
                                          lm.tokenizer)
        ids, receipt = context.build(lm.tokenizer, budget, self.bible, tail,
                                     chapter_heading=ch["title"], pins=pins,
                                     recalled=[h.to_context(self.store) for h in recalled])
        receipt.warnings += warnings
        return ids, receipt.to_dict()

    def preview_context(self, chapter_id: int, budget: int | None = None) -> dict:
        """The receipt the next Continue would have, without writing anything."""
        return self.build_context(chapter_id, budget)[1]

    # -- memories (pins, semantic recall, associations) -------------------------------
    @property
    def semantic(self):
        """This novel's semantic index (engine.memory.semantic), opened on first use."""
        if self._semantic is None:
            from .memory.semantic import SemanticMemory
            self._semantic = SemanticMemory(self.store)
            # A Continue embeds at most this much before recalling; the rest (a whole
            # imported book) is embedded in the background, batch by batch.
            self._semantic.sync_limit = SYNC_LIMIT
        return self._semantic

    def recall_settings(self):
        from .memory.semantic import RecallSettings
        return RecallSettings.from_dict(self.store.get_setting("recall"))

    def set_recall_settings(self, **changes) -> None:
        from dataclasses import asdict, replace
        self.store.set_setting("recall", asdict(replace(self.recall_settings(), **changes)))

    def _recall(self, tail: str, budget: int, pinned_keys: set,
                tokenizer=None) -> tuple[list, list[str]]:
        from .memory.semantic import SemanticError
        settings = self.recall_settings()
        if not settings.enabled or not tail.strip() or not self.store.has_recall_sources():
            return [], []  # nothing to recall: do not load the embedder for nothing
        try:
            hits = self.semantic.recall(tail, settings, exclude_text=tail[-budget * 6:],
                                        skip=pinned_keys,
                                        token_budget=int(budget * settings.share),
                                        count_tokens=tokenizer and (
                                            lambda t: len(context.encode(tokenizer, t))))
        except SemanticError as e:
            return [], [f"Semantic recall is off: {e}"]
        if (shown := self._in_book()) is not None:
            hits = [h for h in hits if shown(h.key)]
        if self.semantic.pending:
            return hits, [f"Semantic memory is still indexing ({self.semantic.pending} "
                          "passages or memories to go); recall used what was ready. "
                          "'python -m engine memory rebuild' indexes everything at once."]
        return hits, []

    def _in_book(self):
        """A test on memory keys that is False for a passage or note of a chapter in the
        trash, or a note Undo has hidden (None when there is none of either)."""
        trashed = self.store.passages.trashed_ids()
        hidden = (set(self.store.thoughts.ids())
                  - {t["id"] for t in self.thoughts.list()})
        if not trashed and not hidden:
            return None

        def shown(key: str) -> bool:
            kind, _, rest = key.partition(":")
            src = rest.split("#")[0]
            if not src.isdigit():
                return True
            gone = trashed if kind == "passage" else hidden if kind == "thought" else ()
            return int(src) not in gone
        return shown

    def memories(self, query: str | None = None, limit: int = 200) -> list[dict]:
        """Memories: all of the writer's (pinned first) or, with a query, the best
        matches among memories, passages and thoughts (text matches, then similar)."""
        rows = self.store.memories.list()
        out = [{"key": f"memory:{r['id']}", "id": r["id"], "kind": r["kind"],
                "pinned": bool(r["pinned"]), "text": r["text"], "source": r["source"],
                "score": None} for r in rows]
        if not (query or "").strip():
            return out[:limit]
        q = query.strip().lower()
        found = [m for m in out if q in m["text"].lower()]
        by_key = {m["key"]: m for m in out}
        shown = self._in_book() or (lambda k: True)
        for k, score in self.semantic.search(query, limit):
            if any(f["key"] == k for f in found) or not shown(k):
                continue
            if k in by_key:
                found.append({**by_key[k], "score": round(score, 3)})
            elif text := self.semantic.text_of(k):  # None: no longer in the book
                found.append({"key": k, "id": None, "kind": k.split(":")[0], "pinned": False,
                              "text": text, "source": k, "score": round(score, 3)})
        return found[:limit]

    def memory(self, memory_id) -> dict:
        """One memory row by id or 'memory:ID' key."""
        ref = str(memory_id).strip()
        if ref.startswith(("passage:", "thought:")):
            raise NovelError(f"{ref} is not one of your memories yet: pin it to keep it.")
        ref = ref.removeprefix("memory:")
        if not ref.isdigit():
            raise NovelError(f"'{memory_id}' is not a memory id.")
        row = self.store.memories.get(int(ref))
        if row is None:
            raise NovelError(f"There is no memory {memory_id}.")
        return row

    def add_memory(self, text: str, pin: bool = False, kind: str = "fact",
                   source: str = "writer") -> int:
        text = validate_text("The memory", (text or "").strip(), MAX_MEMORY_CHARS)
        if not text:
            raise NovelError("The memory is empty; write the fact first.")
        mid = self.store.memories.add(text, kind=kind, pinned=pin, source=source)
        if pin and self._matrix.raw()["on"]:
            self.pin_matrix(mid)
        return mid

    def _memory_id(self, ref) -> int:
        """A memory id from an int, 'memory:ID' or a key of a passage/thought (which is
        then kept as a new memory so it can be pinned)."""
        if isinstance(ref, str) and not ref.strip().isdigit():
            from .memory.semantic import parse_key
            kind, src, _ = parse_key(ref)
            if kind == "memory":
                return self.memory(src)["id"]
            text = self.semantic.text_of(ref)
            if not text:
                raise NovelError(f"There is no {ref}.")
            return self.add_memory(text, kind=kind, source=ref)
        return self.memory(ref)["id"]

    def _set_pinned(self, ref, pinned: bool) -> int:
        mid = self._memory_id(ref) if pinned else self.memory(ref)["id"]
        self.store.memories.update(mid, pinned=pinned)
        return mid

    def pin(self, ref) -> int:
        """Pin a memory (or a recalled passage/thought, kept as a memory): always in context
        and, when the memory matrix is on, held in matrix slots that never change."""
        mid = self._set_pinned(ref, True)
        if self._matrix.raw()["on"]:
            self.pin_matrix(mid)
        return mid

    def unpin(self, ref) -> int:
        mid = self._set_pinned(ref, False)
        self._matrix.unpin(mid)
        return mid

    def edit_memory(self, memory_id: int, text: str) -> None:
        text = validate_text("The memory", (text or "").strip(), MAX_MEMORY_CHARS)
        if not text:
            raise NovelError("A memory cannot be empty; delete it instead.")
        memory_id = self.memory(memory_id)["id"]
        self.store.memories.update(memory_id, text=text)

    def delete_memory(self, memory_id: int) -> None:
        memory_id = self.memory(memory_id)["id"]
        self.store.memories.delete(memory_id)  # with its associations

    def pin_sentence(self, text: str, chapter_id: int | None = None,
                     thought_id: int | None = None) -> int:
        """Pin a sentence of the manuscript (or of a thought) as written there."""
        text = (text or "").strip()
        if thought_id is not None:
            row = self.store.thoughts.get(thought_id)
            if row is None:
                raise NovelError(f"There is no thought {thought_id}.")
            text = text or row["text"].strip()
            where, kind, source = row["text"], "thought", f"thought:{thought_id}"
        else:
            cid = chapter_id if chapter_id is not None else self.chapter_id()
            where, kind, source = self.text(cid), "manuscript", f"chapter:{cid}"
        if not text:
            raise NovelError("Select the sentence to pin first.")
        if text not in where:
            raise NovelError("That text is not in the " + ("thought." if thought_id is not None
                                                          else "chapter."))
        same = self.store.memories.find(text)
        if same is not None:
            return self.pin(same)
        return self.add_memory(text, pin=True, kind=kind, source=source)

    def link(self, a, b) -> None:
        """The writer's explicit association between two memories (ids or keys)."""
        from .memory.semantic import SemanticError
        ka, kb = (f"memory:{int(x)}" if str(x).strip().isdigit() else str(x).strip()
                  for x in (a, b))
        try:
            self.semantic.link(ka, kb)
        except SemanticError as e:
            raise NovelError(str(e)) from e

    def rebuild_memory(self) -> dict:
        """Re-embed everything and recompute co-occurrences (derived data only)."""
        return self.semantic.rebuild()

    def index_memory(self) -> dict:
        """Embed everything not yet in semantic memory, now (the CLI's 'rebuild' without
        forgetting what is already there)."""
        return self.semantic.sync()

    # -- kNN memory (keys/values of every manuscript token, read inside attention) ------
    def knn_settings(self) -> dict:
        """{on, layers (the layers read, defaults resolved), k, depth}."""
        return self._knn.public()

    def set_knn_settings(self, on: bool, layers=None, k: int | None = None) -> dict:
        """Turn kNN memory on/off; layers as '14-29' / '22,25' / list ('' = defaults)."""
        try:
            return self._knn.set(on, layers, k)
        except ValueError as e:
            raise NovelError(str(e)) from e

    def knn_info(self) -> dict:
        """{tokens stored, index kind, bytes on disk, layers, loaded}; indexes nothing."""
        return self._knn.info()

    def knn_store(self, progress=None):
        """The kNN store, brought in step with the manuscript (rebuilt if untrustworthy)."""
        return self._knn.store(progress)

    def rebuild_knn(self, progress=None) -> dict:
        """Re-index the whole manuscript; progress: callable(done, total) or None."""
        self._idle_or_fail()
        self._knn.rebuild(progress)
        return self.knn_info()

    # -- memory matrix (gated writes per segment, read as memory tokens) ----------------
    def matrix_settings(self) -> dict:
        """{on, layer (resolved), slots, rows, adapter, depth}."""
        return self._matrix.public()

    def set_matrix_settings(self, on: bool, layer=None, slots=None, rows=None,
                            adapter=None) -> dict:
        from .memory.matrix import MatrixError
        try:
            return self._matrix.set(on, layer, slots, rows, adapter)
        except (ValueError, MatrixError) as e:
            raise NovelError(str(e)) from e

    def matrix_info(self) -> dict:
        """{loaded, writes, slots, pinned, notice (why it was rebuilt)}; writes nothing."""
        return self._matrix.info()

    def matrix_usage(self, progress=None) -> dict:
        """Gate mass per slot group per chapter, strength and pins (brings M up to date)."""
        return self._matrix.usage(progress)

    def reset_matrix(self) -> dict:
        """Start M again from its seed; pinned memories are written and pinned again."""
        self._idle_or_fail()
        return self._matrix.reset()

    def pin_matrix(self, ref) -> list[int]:
        """Write a memory into the matrix and pin the slots holding it; returns them."""
        m = self.memory(ref)
        return self._matrix.pin(m["id"], m["text"])

    def unpin_matrix(self, ref) -> None:
        self._matrix.unpin(self.memory(ref)["id"])

    def matrix_pins(self) -> dict:
        """{memory id: [slots]}."""
        return self._matrix.pins()

    def continue_chapter(self, chapter_id: int, sampling: writer.Sampling | None = None,
                         prompt: str = "", budget: int | None = None, action: str = "continue"):
        """Stream a new passage onto the chapter; yields Events, saves as it goes."""
        with self._writing():
            yield from self._continue(chapter_id, sampling or writer.Sampling(), prompt,
                                      budget, action)

    @contextmanager
    def _writing(self):
        """This novel's one writer: no other Continue in this process, nor in any other
        (an advisory lock file in the project folder, held until the passage is saved)."""
        if not self._busy.acquire(blocking=False):
            raise NovelError("The model is already writing in this novel; wait or press Stop.")
        try:
            if not self.store.lock_writer():
                raise NovelError(ANOTHER_WRITER)
            try:
                yield
            finally:
                self.store.unlock_writer()
        finally:
            self._busy.release()

    def _continue(self, chapter_id, sampling, prompt, budget, action):
        self._cancel.clear()
        self._writing_cid = chapter_id
        validate_text("The prompt", prompt, MAX_CHAPTER_CHARS)
        ch = self.store.chapter(chapter_id)
        if ch["deleted"] is not None:
            raise NovelError(f"'{ch['title']}' is in the trash; restore it to write in it.")
        base = ch["text"] or ""
        if prompt.strip():  # the writer's own words go in first, as their own revision
            base = (base.rstrip() + "\n\n" + prompt.strip()) if base.strip() else prompt.strip()
        if len(base) + MIN_ROOM > MAX_CHAPTER_CHARS:  # refused before any model is loaded
            raise NovelError(
                f"This chapter is at its length limit ({len(base):,} characters"
                f"{' with the prompt' if prompt.strip() else ''}; a chapter holds at most "
                f"{MAX_CHAPTER_CHARS:,}): start a new chapter to write on.")
        if self.model.peek() is None:  # a first Continue right after start: say why it waits
            yield Event(text=base, status="Waiting for the model to load…")
        lm = self.model.get()
        sampling = sampling.resolved()
        settings = self.thought_settings()
        adapter, adapter_key = self._self_commentary(lm, settings)  # self mode: tuned model
        self_mode = adapter_key is not None
        if prompt.strip():  # only once every check above has passed
            self.store.new_revision(chapter_id, base, "writer", "prompt")
        if (settings["on"] and settings["plan_first"] and not self_mode
                and not self._cancel.is_set()):
            yield Event(text=base, status="Planning the next passage…")
            plan = write_note(lm, base or self.bible.get("premise", ""), self.bible,
                              plan=True, seed=sampling.seed, cancel=self._cancel)
            if plan:
                self.thoughts.add(chapter_id, len(base), plan, author="model")
        ids, receipt = self.build_context(chapter_id, budget, base)
        self.last_receipt = receipt
        knn_ctx, prefix_key = self._knn.reader(lm, chapter_id, ids, receipt)
        if (self._matrix.raw()["on"] and not self._cancel.is_set()):
            yield Event(text=base, status="Updating the memory matrix…")
        mx_ctx, mx_key = self._matrix.reader(lm, receipt)
        if notice := self._matrix.new_notice():  # e.g. rebuilt, or adapter unusable
            receipt.setdefault("warnings", []).append(notice)
        forward = _contexts(knn_ctx, mx_ctx)
        prefix_key = (prefix_key, mx_key) if mx_key is not None else prefix_key
        prefix_key = (prefix_key, "thoughts", adapter_key) if self_mode else prefix_key
        rev = self.store.new_revision(chapter_id, base, "model", action)
        log_id = self.store.log_generation(chapter_id=chapter_id, revision_id=rev,
                                           model=lm.name, params=sampling.to_dict(),
                                           receipt=receipt, prompt_tokens=len(ids),
                                           new_tokens=0, seconds=0.0, status="running")
        yield Event(text=base, status="Reading the context…", receipt=receipt)
        result = writer.Result()
        router = Router()  # marker-delimited thoughts go to the margin, never the page
        if self_mode and settings["plan_first"]:  # the tuned model opens with its note
            ids = ids + lm.tokenizer(BEGIN, add_special_tokens=False)["input_ids"]
            router.feed(BEGIN)
        t0, last_save, text = time.perf_counter(), time.perf_counter(), base
        room = MAX_CHAPTER_CHARS - len(base)  # the chapter never passes its limit
        halt = _Halt(self._cancel)
        status = "error"
        try:
            with lm.lock, adapter():  # the adapter only while this novel writes
                for delta in writer.stream(lm, ids, sampling, halt, self._prefix,
                                           prefix_key=prefix_key, forward_context=forward,
                                           result=result):
                    delta = router.feed(delta)
                    if len(router.prose) >= room:
                        delta = delta[:max(0, len(delta) - (len(router.prose) - room))]
                        halt.limit = True  # the stream ends before its next token
                    text += delta
                    if time.perf_counter() - last_save >= AUTOSAVE_S:
                        self.store.update_revision(rev, text)
                        last_save = time.perf_counter()
                    yield Event(text=text, delta=delta, status="Writing…")
            status = "limit" if halt.limit else (result.stop_reason or "done")
        finally:
            router.finish()
            written = router.prose[:room]
            text = base + written
            seconds = time.perf_counter() - t0
            if written:
                self.store.update_revision(rev, text)
                pid = self.store.add_passage(chapter_id, rev, len(base), len(text),
                                             written, "model")
                for t in router.thoughts:
                    self.thoughts.add(chapter_id, len(base) + t.anchor, t.text, pid, "model")
            else:  # nothing written: the empty revision is not an undo step
                self._drop_head(chapter_id, rev)
                pid = None
            self.store.update_generation(log_id, status=status, new_tokens=result.new_tokens,
                                         seconds=round(seconds, 3))
        if pid is not None:
            if (settings["on"] and not settings["plan_first"] and not router.thoughts
                    and not self_mode and status != "cancelled"):
                points = note_points(written, settings["every"], lm.tokenizer)
                last = 0
                for i, end in enumerate(points):
                    if self._cancel.is_set():
                        break
                    yield Event(text=text, status="Writing a margin note…" if len(points) == 1
                                else f"Writing margin note {i + 1} of {len(points)}…")
                    note = write_note(lm, written[last:end], self.bible,
                                      seed=sampling.seed + i, cancel=self._cancel)
                    if note:
                        self.thoughts.add(chapter_id, len(base) + end, note, pid, "model")
                    last = end
            # the memory writers run on the passage with its notes (the kNN store holds
            # notes inline); indexing can take seconds, so the page says what it waits on
            yield Event(text=text, status="Adding the passage to the book's memory…")
            for hook in self.after_accept:
                hook(self, chapter_id, pid)
        stats = {"seed": sampling.seed, "new_tokens": result.new_tokens,
                 "prompt_tokens": result.prompt_tokens, "reused_tokens": result.reused_tokens,
                 "prefill_s": round(result.prefill_s, 2), "decode_s": round(result.decode_s, 2),
                 "tokens_per_s": round(result.new_tokens / result.decode_s, 1)
                 if result.decode_s > 0 else 0.0, "stop_reason": status}
        if not written:
            msg = ("Stopped before any text was written." if status == "cancelled" else
                   "The model produced no text (it ended at once). Try again, raise the "
                   "temperature or change the seed.")
        else:
            msg = {"cancelled": "Stopped.", "eos": "The model finished the passage.",
                   "length": "Reached the token limit.",
                   "limit": LIMIT_REACHED}.get(status, "Done.")
        if receipt.get("warnings"):  # e.g. pins alone over budget: the writer must know
            msg += " ⚠ " + " ".join(receipt["warnings"])
        yield Event(text=text, done=True, status=msg, receipt=receipt, result=result,
                    stats=stats)

    # -- thoughts -------------------------------------------------------------------
    def writing_settings(self) -> dict:
        """The writer's last sampling choices for this novel ({} until they change one)."""
        return self.store.get_setting("writing") or {}

    def set_writing_settings(self, temperature: float, top_p: float, max_tokens: int) -> None:
        """Keep the page's sampling sliders per novel (a reload shows them again)."""
        import math
        values = {"temperature": float(temperature), "top_p": float(top_p),
                  "max_tokens": int(max_tokens)}
        if not (all(math.isfinite(v) for v in values.values()) and 0 <= values["temperature"]
                <= 5 and 0 < values["top_p"] <= 1 and 1 <= values["max_tokens"] <= 4096):
            raise NovelError("Sampling settings out of range: temperature 0-5, top-p above "
                             "0 up to 1, 1 to 4,096 new tokens.")
        self.store.set_setting("writing", values)

    def thought_settings(self) -> dict:
        """on: a margin note after each passage; plan_first: the note comes before it."""
        return {"on": True, "plan_first": False, "mode": "prompt", "adapter": "",
                "every": "paragraph", **(self.store.get_setting("thoughts") or {})}

    def set_thought_settings(self, on: bool | None = None, plan_first: bool | None = None,
                             mode: str | None = None, adapter: str | None = None,
                             every=None):
        """mode: 'prompt' (a summarising prompt writes each note) or 'self' (a model tuned
        by 'train thoughts' writes its notes inline); adapter: that tuning's folder, ''
        for the default one of the loaded model; every: a prompted note after each
        'passage', each 'paragraph', or every N tokens."""
        s = self.thought_settings()
        if every is not None:
            try:
                s["every"] = parse_every(every)
            except ValueError as e:
                raise NovelError(str(e)) from e
        s.update({k: bool(v) for k, v in (("on", on), ("plan_first", plan_first))
                  if v is not None})
        if mode is not None and mode not in THOUGHT_MODES:
            raise NovelError(f"Unknown thought mode '{mode}': use "
                             f"{' or '.join(THOUGHT_MODES)}.")
        s["mode"] = mode or s["mode"]
        s["adapter"] = s["adapter"] if adapter is None else str(adapter).strip()
        if s["mode"] == "self":  # a missing or foreign adapter is refused now, not mid-write
            lm = self.model.peek()
            if lm is not None:
                self._self_commentary(lm, {**s, "on": True})
            elif s["adapter"]:  # the model is still loading: check what can be checked
                from .adapters import AdapterError, read_config
                try:
                    read_config(s["adapter"])
                except AdapterError as e:
                    raise NovelError(str(e)) from e
        self.store.set_setting("thoughts", s)

    def _self_commentary(self, lm, settings):
        """(context factory applying the thought adapter, its cache key) in self mode;
        (nullcontext, None) otherwise. A model tuned whole needs no adapter."""
        if not (settings["on"] and settings.get("mode") == "self"):
            return nullcontext, None
        from .adapters import AdapterError, adapter_for
        try:
            lora = adapter_for(lm, settings.get("adapter") or None)
        except AdapterError as e:
            raise NovelError(str(e)) from e
        if lora is None:
            return nullcontext, "tuned"
        return (lambda: lora.attached(lm.model)), lora.key

    def list_thoughts(self, chapter_id: int | None = None) -> list[dict]:
        return self.thoughts.list(chapter_id)

    def add_thought(self, chapter_id: int, text: str, anchor: int | None = None) -> int:
        """The writer's own note, at ``anchor`` (default: the end of the chapter)."""
        self._idle_or_fail()
        anchor = len(self.text(chapter_id)) if anchor is None else anchor
        return self.thoughts.add(chapter_id, anchor, text)

    def edit_thought(self, thought_id: int, text: str) -> None:
        self._idle_or_fail()
        self.thoughts.edit(thought_id, text)

    def delete_thought(self, thought_id: int) -> None:
        self._idle_or_fail()
        self.thoughts.delete(thought_id)

    def export_with_notes(self) -> str:
        """Markdown with every thought set apart as a margin note."""
        chapters = [{"title": c["title"],
                     "text": self.thoughts.margin_markdown(c["text"] or "", c["id"])}
                    for c in self.store.chapters()]
        return export.render(self.bible, chapters, "md")

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
        """Forget an empty passage's revision -- only while it is still the head with
        nothing on top of it (another tab or process may have built on it meanwhile)."""
        self.store.drop_empty_head(chapter_id, rev)

    def retry(self, chapter_id: int, sampling: writer.Sampling | None = None,
              budget: int | None = None):
        """Replace the last generated passage with a fresh one (a new seed unless given)."""
        head = self.store.revision(self.store.chapter(chapter_id)["head_rev"])
        if head["author"] != "model":
            raise NovelError("The last change was not written by the model; nothing to retry.")
        with self._writing():  # locked before the undo: a refused Retry changes nothing
            self.store.undo(chapter_id)
            yield from self._continue(chapter_id, sampling or writer.Sampling(), "", budget,
                                      "retry")


def _embed_passage(novel: "Novel", chapter_id: int, passage_id: int) -> None:
    """After-accept hook: the new passage goes into semantic memory (when recall is on)."""
    from .memory.semantic import SemanticError, embedder_loaded
    # Only when the embedder is already loaded: a first load costs seconds, and the
    # next recall syncs anyway (the index is derived data, synced by signature).
    if novel.recall_settings().enabled and embedder_loaded():
        try:
            if novel.semantic.sync(limit=SYNC_LIMIT).get("pending"):
                novel.semantic.catch_up()
        except SemanticError:
            pass  # recall reports it in the next receipt; the passage itself is saved


def _contexts(*factories):
    """One forward-context factory entering each of the given ones (None skipped)."""
    live = [f for f in factories if f is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def enter():
        from contextlib import ExitStack
        stack = ExitStack()
        for f in live:
            stack.enter_context(f())
        return stack
    return enter


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
