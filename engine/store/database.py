"""Store: one project's database (novel.db, WAL, via sqlite-utils): its transactions,
its writing lock, and its tables as objects (engine/store/tables.py)."""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .common import DB_NAME, MAX_FIELD_CHARS, MAX_TITLE_CHARS, MEMORY_DIR, WRITING_LOCK, \
    ProjectError, now, validate_text
from .history import ChapterHistory
from .schema import MIGRATIONS, SCHEMA_VERSION
from .tables import (Associations, GenerationLog, Memories, Passages, Revisions, Settings,
                     Thoughts)

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process writing lock (see Store.lock_writer)
    fcntl = None


class Store(ChapterHistory):
    """Thread-safe access to one project's database."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.memory_dir = self.folder / MEMORY_DIR
        self._lock = threading.RLock()
        self._writer_fd: int | None = None
        self.memories = Memories(self)
        self.passages = Passages(self)
        self.thoughts = Thoughts(self)
        self.revisions = Revisions(self)
        self.associations = Associations(self)
        self.settings = Settings(self)
        self.generation_log = GenerationLog(self)
        conn = sqlite3.connect(self.folder / DB_NAME, check_same_thread=False,
                               isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.OperationalError as e:
            conn.close()
            raise self._friendly(e) from e
        except BaseException:
            conn.close()
            raise
        self._mark_interrupted()

    # -- lifecycle ---------------------------------------------------------
    @classmethod
    def create(cls, folder: Path) -> "Store":
        folder = Path(folder)
        if (folder / DB_NAME).exists():
            raise ProjectError(f"A novel already exists at {folder}.")
        if folder.exists() and any(folder.iterdir()):
            raise ProjectError(f"{folder} exists and is not empty; choose another name.")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MEMORY_DIR).mkdir(exist_ok=True)
        return cls(folder)

    @classmethod
    def open(cls, folder: Path) -> "Store":
        folder = Path(folder)
        if not (folder / DB_NAME).is_file():
            raise ProjectError(f"No novel found at {folder} (there is no {DB_NAME}).")
        try:
            return cls(folder)
        except sqlite3.DatabaseError as e:
            raise ProjectError(f"{folder / DB_NAME} cannot be read: {e}.") from e

    def close(self) -> None:
        self.unlock_writer()
        self.db.conn.close()

    def _schema_version(self) -> int:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ProjectError(
                f"This novel was saved by a newer Mnemosyne (schema {version}); "
                "please upgrade.")
        return version

    def _migrate(self) -> None:
        if self._schema_version() == SCHEMA_VERSION:
            return  # nothing to write (a read-only novel still opens)
        with self.tx():
            for v in range(self._schema_version() + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](self.db)
                self.db.execute(f"PRAGMA user_version={v}")

    def _mark_interrupted(self) -> None:
        """Generations a killed process left 'running' are 'interrupted' -- unless another
        process holds the writing lock (its row is live)."""
        if not self.generation_log.any_running():
            return
        try:
            if not self.lock_writer():
                return
        except ProjectError:
            return  # a read-only folder: nothing can be marked anyway
        try:
            self.generation_log.mark_interrupted()
        except ProjectError:
            pass  # read-only or full: the novel still opens
        finally:
            self.unlock_writer()

    def _friendly(self, e: sqlite3.OperationalError) -> Exception:
        """A one-line ProjectError for what the writer can fix (read-only, disk full,
        locked, I/O error); anything else (a bug) as it is."""
        name = (getattr(e, "sqlite_errorname", "") or "").upper()
        msg = str(e).lower()
        path = self.folder / DB_NAME
        if name.startswith("SQLITE_READONLY") or "readonly" in msg or "read-only" in msg:
            return ProjectError(f"The novel's database is read-only ({path}): check the "
                                "permissions of the file and its folder. Nothing was saved.")
        if name.startswith("SQLITE_FULL") or "disk is full" in msg:
            return ProjectError(f"The disk is full: {path} could not be written. Nothing "
                                "was saved; free some space and try again.")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in msg:
            return ProjectError(f"The novel's database is locked by another program "
                                f"({path}); try again in a moment. Nothing was saved.")
        if name.startswith("SQLITE_IOERR") or "disk i/o" in msg:
            return ProjectError(f"The disk failed while writing {path} (I/O error). "
                                "Nothing was saved.")
        return e

    def _rollback(self) -> None:
        if self.db.conn.in_transaction:  # SQLite may have rolled back itself (disk full)
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    @contextmanager
    def tx(self):
        """One transaction: all or nothing, even if the process dies mid-way. A database
        the writer cannot write (read-only, disk full, locked) raises ProjectError."""
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise self._friendly(e) from e
            try:
                yield self.db
            except sqlite3.OperationalError as e:
                self._rollback()
                raise self._friendly(e) from e
            except BaseException:
                self._rollback()
                raise
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                self._rollback()
                raise self._friendly(e) from e

    # -- the writing lock (one writer per novel, across processes) ---------------
    def lock_writer(self) -> bool:
        """Take the novel's writing lock without waiting: True when this Store now holds
        it, False when another process (or another Store of this folder) does."""
        if fcntl is None:
            return True
        if self._writer_fd is not None:
            return False
        path = self.folder / WRITING_LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY)  # flock works on a read-only file too
            except OSError as e:
                raise ProjectError(f"The novel's folder is read-only ({self.folder}); "
                                   "nothing can be written. Nothing was saved.") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._writer_fd = fd
        return True

    def unlock_writer(self) -> None:
        fd, self._writer_fd = self._writer_fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def query(self, sql: str, params=()) -> list[dict]:
        with self._lock:
            return list(self.db.query(sql, params))

    # -- novel -------------------------------------------------------------
    def set_bible(self, title: str, premise: str, style: str) -> None:
        title = (title or "").strip()
        if not title:
            raise ProjectError("The title is empty.")
        validate_text("The title", title, MAX_TITLE_CHARS)
        validate_text("The premise", premise, MAX_FIELD_CHARS)
        validate_text("The style notes", style, MAX_FIELD_CHARS)
        t = now()
        with self.tx() as db:
            created = next(iter(db.query("SELECT created FROM novel WHERE id=1")), {})
            db["novel"].upsert({"id": 1, "title": title, "premise": premise or "",
                                "style": style or "", "created": created.get("created", t),
                                "updated": t}, pk="id")

    def bible(self) -> dict:
        rows = self.query("SELECT title, premise, style FROM novel WHERE id=1")
        return rows[0] if rows else {"title": "", "premise": "", "style": ""}

    # -- settings ------------------------------------------------------------
    def get_setting(self, key: str, default=None):
        return self.settings.get(key, default)

    def set_setting(self, key: str, value) -> None:
        self.settings.set(key, value)

    def has_recall_sources(self) -> bool:
        """Whether semantic recall has anything to read: an unpinned memory, a passage
        or a thought."""
        return bool(self.query("SELECT 1 FROM memories WHERE pinned=0 UNION ALL SELECT 1 "
                               "FROM passages UNION ALL SELECT 1 FROM thoughts LIMIT 1"))

    # -- passages and the generation log ----------------------------------------
    def add_passage(self, chapter_id: int, revision_id: int, start: int, end: int,
                    text: str, author: str) -> int:
        return self.passages.add(chapter_id, revision_id, start, end, text, author)

    def log_generation(self, **row) -> int:
        return self.generation_log.add(**row)

    def update_generation(self, log_id: int, **fields) -> None:
        self.generation_log.update(log_id, **fields)


def head_texts(folder) -> list[str]:
    """The head text of every chapter row by position, read straight from novel.db (no
    migration, nothing written): for tools that cannot open a Novel."""
    con = sqlite3.connect(Path(folder) / DB_NAME)
    try:
        rows = con.execute("SELECT r.text FROM chapters c JOIN revisions r ON "
                           "r.id = c.head_rev ORDER BY c.position").fetchall()
    finally:
        con.close()
    return [t for (t,) in rows]
