"""Novel: the one facade the UI and the CLI call. Library: the projects root.

A Novel wires its rooms, each a module of its own: ``chapters`` (text, history, import,
export), ``memories`` (facts, pins, links, semantic recall), ``thoughts`` (margin notes),
``knn`` and ``matrix`` (the memories read inside attention), ``settings`` (every setting,
typed). ``memory`` lists the long-term memories (engine/memory/protocol.py); a Continue
(engine/pipeline.py) loops over it. Nothing else of the engine is reached from outside.
"""
from __future__ import annotations

import threading
from pathlib import Path

from . import pipeline, writer
from .chapters import Chapters, StaleText  # noqa: F401 - part of the facade's API
from .jobs import Desk, Event, Job, NovelError  # noqa: F401 - part of the facade's API
from .memories import Memories
from .memory.knn_project import ProjectKNN
from .memory.matrix_project import ProjectMatrix
from .models import ModelSlot
from .notes import Thoughts
from .settings import Settings
from .store import Store, slugify, validate_name, validate_text
from .thoughts import ThoughtBook


class Novel:
    def __init__(self, store: Store, model: ModelSlot | None = None):
        self.store, self.folder = store, store.folder
        self.model = model or ModelSlot()
        self.desk = Desk(store)                 # the one writer: busy, Stop, the job
        self.prefix_cache = writer.PrefixCache()
        self.last_receipt: dict | None = None
        self.settings = Settings(store)
        self.notes = ThoughtBook(store)         # the notes' storage and anchors
        self.chapters = Chapters(store, self.desk, self.notes)
        self.thoughts = Thoughts(self.notes, self.desk, self.settings, self.model,
                                 self.chapters)
        self.knn = ProjectKNN(self)
        self.matrix = ProjectMatrix(self)
        self.memories = Memories(store, self.settings, self.chapters, self.notes, self.matrix)
        self.memory = [self.memories, self.knn, self.matrix]  # every long-term memory

    # -- lifecycle -----------------------------------------------------------------------
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

    # -- the story bible -------------------------------------------------------------------
    @property
    def bible(self) -> dict:
        return self.store.bible()

    def set_bible(self, title: str, premise: str, style: str) -> None:
        self.store.set_bible(title, premise, style)

    # -- writing ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.desk.busy

    @property
    def writing_chapter(self) -> int | None:
        """The chapter a running Continue writes in (None when idle)."""
        return self.desk.writing_chapter

    @property
    def job(self) -> Job | None:
        """The last Continue started with ``start`` (running or done)."""
        return self.desk.job

    def stop(self) -> None:
        """Ask a running Continue to stop; it halts within one token."""
        self.desk.stop()

    def build_context(self, chapter_id: int, budget: int | None = None,
                      base_text: str | None = None) -> tuple[list[int], dict]:
        return pipeline.build_context(self, chapter_id, budget, base_text)

    def preview_context(self, chapter_id: int, budget: int | None = None) -> dict:
        """The receipt the next Continue would have, without writing anything."""
        return self.build_context(chapter_id, budget)[1]

    def continue_chapter(self, chapter_id: int, sampling: writer.Sampling | None = None,
                         prompt: str = "", budget: int | None = None, action: str = "continue",
                         instruction: str = ""):
        """Stream a new passage onto the chapter; yields Events, saves as it goes.
        ``prompt``: the writer's words, added to the chapter first; ``instruction``: what
        the writer asks of this passage, read by the model and never saved."""
        with self.desk.writing(chapter_id):
            yield from pipeline.continue_passage(self, chapter_id, sampling or writer.Sampling(),
                                                 prompt, budget, action, instruction)

    def retry(self, chapter_id: int, sampling: writer.Sampling | None = None,
              budget: int | None = None):
        """Replace the last generated passage with a fresh one (a new seed unless given)."""
        head = self.chapters.revision(self.chapters.head(chapter_id))
        if head["author"] != "model":
            raise NovelError("The last change was not written by the model; nothing to retry.")
        with self.desk.writing(chapter_id):  # locked before the undo: a refused Retry
            self.store.undo(chapter_id)      # changes nothing
            yield from pipeline.continue_passage(self, chapter_id, sampling or writer.Sampling(),
                                                 "", budget, "retry")

    def start(self, chapter_id: int, sampling: writer.Sampling | None = None,
              prompt: str = "", retry: bool = False, instruction: str = "") -> Job:
        """Run a Continue (or a Retry) in the background; see Job. A refusal (no model,
        nothing to retry) is raised here, at once."""
        return self.desk.start(self.retry(chapter_id, sampling) if retry else
                               self.continue_chapter(chapter_id, sampling, prompt=prompt,
                                                     instruction=instruction))


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
