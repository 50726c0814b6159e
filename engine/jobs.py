"""The one writer of a novel: the busy/cancel guard (``Desk``), a Continue's ``Event``s, and
the ``Job`` thread that runs it so that it finishes and saves even when the tab that
started it is closed."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from .store import ProjectError

ANOTHER_WRITER = ("This novel is being written by another process; wait for it to finish "
                  "or stop it.")
ALREADY = "The model is already writing in this novel; wait or press Stop."


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
    result: object | None = None  # writer.Result, on the last event
    stats: dict = field(default_factory=dict)


class Halt:
    """The cancel flag writer.stream watches: the writer's Stop, or the length limit."""

    def __init__(self, cancel: threading.Event):
        self.cancel, self.limit = cancel, False

    def is_set(self) -> bool:
        return self.limit or self.cancel.is_set()


class Desk:
    """Who writes in a novel: at most one Continue in this process (a lock) and in any
    other (the store's advisory lock file, held until the passage is saved)."""

    def __init__(self, store):
        self._store = store
        self._busy = threading.Lock()
        self.cancel = threading.Event()
        self.chapter: int | None = None  # the chapter a running Continue writes in
        self.job: Job | None = None

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    @property
    def writing_chapter(self) -> int | None:
        return self.chapter if self.busy else None

    def idle_or_fail(self) -> None:
        if self.busy:
            raise NovelError("The model is writing; press Stop first.")

    def stop(self) -> None:
        self.cancel.set()

    @contextmanager
    def writing(self, chapter_id: int):
        if not self._busy.acquire(blocking=False):
            raise NovelError(ALREADY)
        try:
            if not self._store.lock_writer():
                raise NovelError(ANOTHER_WRITER)
            try:
                self.cancel.clear()
                self.chapter = chapter_id
                yield
            finally:
                self._store.unlock_writer()
        finally:
            self._busy.release()

    def start(self, events) -> "Job":
        """Run a Continue's generator in the background; its first event (or error) comes
        here, at once, so a refusal reaches the caller and not the job."""
        if self.busy or (self.job is not None and not self.job.done.is_set()):
            raise NovelError(ALREADY)
        first = next(events)
        self.job = Job(_chain(first, events))
        return self.job


class Job:
    """A Continue running in its own thread; any caller can watch its events."""

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


def _chain(first, rest):
    yield first
    yield from rest
