"""Project folder layout and the SQLite schema (via sqlite-utils), with migrations.

One folder per novel: ``novel.db`` (WAL) and ``memory/`` for derived files.
Every chapter keeps its whole history as revisions (full text, a parent pointer
and who wrote it), so undo/redo is pointer movement and nothing is ever lost.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process writing lock (see Store.lock_writer)
    fcntl = None

SCHEMA_VERSION = 4
DB_NAME = "novel.db"
MEMORY_DIR = "memory"
# Held (flock, advisory) by whichever process is streaming into the novel.
WRITING_LOCK = ".writing.lock"

# A project name becomes a folder name: keep it boring and portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
MAX_TITLE_CHARS = 200
MAX_FIELD_CHARS = 20_000
# ~300k words: far beyond any real chapter, small enough to keep the UI responsive.
MAX_CHAPTER_CHARS = 2_000_000
# Writer edits within this many seconds of the last one share one undo step.
EDIT_COALESCE_S = 30.0


class ProjectError(UserError, ValueError):
    """A user-facing problem with a project: the message is shown as is."""


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ProjectError("The project name is empty.")
    if ".." in name or "/" in name or "\\" in name or not _NAME_RE.match(name):
        raise ProjectError(
            f"'{name[:80]}' is not a valid project name: use up to 64 letters, digits, "
            "spaces, '.', '-' or '_', starting with a letter or digit (no '/' or '..')."
        )
    return name


def slugify(title: str) -> str:
    """A folder name derived from a title ('' when nothing usable is left)."""
    slug = re.sub(r"[^A-Za-z0-9 _\-]+", "", title).strip(" ._-")
    return re.sub(r"\s+", " ", slug)[:64].strip()


def validate_text(label: str, text: str, limit: int) -> str:
    text = text or ""
    if len(text) > limit:
        raise ProjectError(
            f"{label} is too long ({len(text):,} characters; the limit is {limit:,}). "
            "Nothing was saved; split it up or import it as a file."
        )
    return text


def now() -> float:
    return time.time()


def _m1(db: sqlite_utils.Database) -> None:
    db["novel"].create({"id": int, "title": str, "premise": str, "style": str,
                        "created": float, "updated": float}, pk="id")
    db["chapters"].create({"id": int, "position": int, "title": str, "head_rev": int,
                           "created": float, "updated": float}, pk="id")
    db["revisions"].create({"id": int, "chapter_id": int, "parent_id": int, "text": str,
                            "author": str, "action": str, "created": float, "updated": float},
                           pk="id", foreign_keys=[("chapter_id", "chapters", "id")])
    db["revisions"].create_index(["chapter_id"])
    # A passage is a span the model (or the writer, on import) added in one go.
    db["passages"].create({"id": int, "chapter_id": int, "revision_id": int, "start": int,
                           "end": int, "text": str, "author": str, "created": float},
                          pk="id", foreign_keys=[("chapter_id", "chapters", "id")])
    db["passages"].create_index(["chapter_id"])
    db["thoughts"].create({"id": int, "chapter_id": int, "passage_id": int, "anchor": int,
                           "text": str, "created": float, "updated": float}, pk="id")
    db["memories"].create({"id": int, "kind": str, "text": str, "pinned": int,
                           "source": str, "created": float, "updated": float}, pk="id")
    db["settings"].create({"key": str, "value": str}, pk="key")
    db["generation_log"].create({"id": int, "chapter_id": int, "revision_id": int,
                                 "model": str, "params": str, "receipt": str,
                                 "prompt_tokens": int, "new_tokens": int, "seconds": float,
                                 "status": str, "created": float}, pk="id")


def _m2(db: sqlite_utils.Database) -> None:
    """Associations between memory keys ('memory:3', 'passage:12#0', 'thought:4'):
    'link' edges are the writer's own; 'cooccur' edges are derived and rebuildable."""
    db.execute("CREATE TABLE IF NOT EXISTS associations (a TEXT NOT NULL, b TEXT NOT NULL, "
               "kind TEXT NOT NULL, weight REAL NOT NULL DEFAULT 1.0, PRIMARY KEY (a, b, kind))")
    db.execute("CREATE INDEX IF NOT EXISTS associations_b ON associations (b)")


def _m3(db: sqlite_utils.Database) -> None:
    """Every edit of a thought keeps the text it replaced."""
    db["thought_history"].create({"id": int, "thought_id": int, "text": str, "author": str,
                                  "created": float}, pk="id", if_not_exists=True)
    db["thought_history"].create_index(["thought_id"], if_not_exists=True)


def _m4(db: sqlite_utils.Database) -> None:
    """A trash for chapters (deleted: when, NULL while live); each thought belongs to the
    revision it was made on (so Undo hides it); visited: when a revision last became the
    head (Redo goes back to the version last seen, not merely the newest)."""
    for table, column, kind in (("chapters", "deleted", "REAL"),
                                ("thoughts", "revision_id", "INTEGER"),
                                ("revisions", "visited", "REAL")):
        if column not in db[table].columns_dict:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    # a model's note: its passage's revision; any other note: the head of today
    db.execute("UPDATE thoughts SET revision_id = (SELECT p.revision_id FROM passages p "
               "WHERE p.id = thoughts.passage_id) WHERE revision_id IS NULL")
    db.execute("UPDATE thoughts SET revision_id = (SELECT c.head_rev FROM chapters c "
               "WHERE c.id = thoughts.chapter_id) WHERE revision_id IS NULL")
    db.execute("CREATE INDEX IF NOT EXISTS revisions_parent ON revisions (parent_id)")


MIGRATIONS = {1: _m1, 2: _m2, 3: _m3, 4: _m4}


def _common_ends(a: str, b: str) -> tuple[int, int]:
    """(common prefix length, common suffix length not overlapping it) of two texts,
    found by bisection on slice comparisons (fast on a 2M-character chapter)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    pre = lo
    lo, hi = 0, min(len(a), len(b)) - pre
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return pre, lo


def change_preview(parent: str, text: str, limit: int = 80) -> str:
    """What ``text`` adds to ``parent``, first ``limit`` characters (what it cut, when it
    only cut)."""
    pre, suf = _common_ends(parent, text)
    added = " ".join(text[pre:len(text) - suf].split())
    if not added:
        cut = " ".join(parent[pre:len(parent) - suf].split())
        return f"(cut: {cut[:limit - 7]}…)" if len(cut) > limit - 7 else \
            (f"(cut: {cut})" if cut else "")
    return added[:limit - 1] + "…" if len(added) > limit else added


class Store:
    """Thread-safe access to one project's database."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.memory_dir = self.folder / MEMORY_DIR
        self._lock = threading.RLock()
        self._writer_fd: int | None = None
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
        if not self.query("SELECT 1 FROM generation_log WHERE status='running' LIMIT 1"):
            return
        try:
            if not self.lock_writer():
                return
        except ProjectError:
            return  # a read-only folder: nothing can be marked anyway
        try:
            with self.tx() as db:
                db.execute("UPDATE generation_log SET status='interrupted' "
                           "WHERE status='running'")
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
        rows = self.query("SELECT value FROM settings WHERE key=?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set_setting(self, key: str, value) -> None:
        with self.tx() as db:
            db["settings"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    # -- chapters ------------------------------------------------------------
    def chapters(self) -> list[dict]:
        """The live chapters in reading order (the trash left out)."""
        return self.query(
            "SELECT c.id, c.position, c.title, c.head_rev, r.text FROM chapters c "
            "LEFT JOIN revisions r ON r.id = c.head_rev WHERE c.deleted IS NULL "
            "ORDER BY c.position")

    def chapter(self, chapter_id: int) -> dict:
        """One chapter, live or in the trash (``deleted`` says which)."""
        rows = self.query(
            "SELECT c.id, c.position, c.title, c.head_rev, c.deleted, r.text FROM chapters c "
            "LEFT JOIN revisions r ON r.id = c.head_rev WHERE c.id=?", (chapter_id,))
        if not rows:
            raise ProjectError(f"There is no chapter {chapter_id}.")
        return rows[0]

    def add_chapter(self, title: str, text: str = "", author: str = "writer",
                    action: str = "create") -> int:
        return self.add_chapters([(title, text)], author, action)[0]

    def add_chapters(self, items, author: str = "writer", action: str = "create",
                     replace: int | None = None) -> list[int]:
        """Add (title, text) chapters at the end in ONE transaction: all or none, even if
        the process is killed mid-way. ``replace``: a chapter id removed for good in the
        same transaction (an untouched blank chapter giving way to an import)."""
        t, ids = now(), []
        with self.tx() as db:
            for title, text in items:
                title = validate_text("The chapter title", (title or "").strip(),
                                      MAX_TITLE_CHARS)
                validate_text("The chapter", text, MAX_CHAPTER_CHARS)
                pos = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM chapters "
                                 "WHERE deleted IS NULL").fetchone()[0]
                cid = db["chapters"].insert({"position": pos,
                                             "title": title or f"Chapter {pos}",
                                             "head_rev": None, "created": t,
                                             "updated": t}).last_pk
                rid = db["revisions"].insert({"chapter_id": cid, "parent_id": None,
                                              "text": text, "author": author,
                                              "action": action, "created": t, "updated": t,
                                              "visited": t}).last_pk
                db["chapters"].update(cid, {"head_rev": rid})
                if text and author == "writer" and action == "import":
                    db["passages"].insert({"chapter_id": cid, "revision_id": rid, "start": 0,
                                           "end": len(text), "text": text, "author": author,
                                           "created": t})
                ids.append(cid)
            if replace is not None:
                self._purge(db, replace)
            self._renumber(db)
        return ids

    @staticmethod
    def _renumber(db) -> None:
        rows = db.execute("SELECT id, position FROM chapters WHERE deleted IS NULL "
                          "ORDER BY position, id").fetchall()
        for pos, (cid, old) in enumerate(rows, 1):
            if old != pos:
                db.execute("UPDATE chapters SET position=? WHERE id=?", (pos, cid))

    def rename_chapter(self, chapter_id: int, title: str) -> None:
        title = (title or "").strip()
        if not title:
            raise ProjectError("A chapter needs a title.")
        validate_text("The chapter title", title, MAX_TITLE_CHARS)
        self.chapter(chapter_id)
        with self.tx() as db:
            db["chapters"].update(chapter_id, {"title": title, "updated": now()})

    def move_chapter(self, chapter_id: int, delta: int) -> None:
        ids = [c["id"] for c in self.chapters()]
        if chapter_id not in ids:
            raise ProjectError(f"There is no chapter {chapter_id}.")
        i = ids.index(chapter_id)
        j = max(0, min(len(ids) - 1, i + delta))
        ids.insert(j, ids.pop(i))
        with self.tx() as db:
            for pos, cid in enumerate(ids, 1):
                db["chapters"].update(cid, {"position": pos})

    def delete_chapter(self, chapter_id: int) -> None:
        """Move a chapter to the trash (history, passages and notes kept); the live
        chapters are numbered again. Its old position stays on its row for restore."""
        if self.chapter(chapter_id)["deleted"] is not None:
            return
        with self.tx() as db:
            db.execute("UPDATE chapters SET deleted=? WHERE id=?", (now(), chapter_id))
            self._renumber(db)

    def trash(self) -> list[dict]:
        """Chapters in the trash, the newest deletion first."""
        return self.query(
            "SELECT c.id, c.position, c.title, c.head_rev, c.deleted, r.text FROM chapters c "
            "LEFT JOIN revisions r ON r.id = c.head_rev WHERE c.deleted IS NOT NULL "
            "ORDER BY c.deleted DESC, c.id DESC")

    def restore_chapter(self, chapter_id: int) -> int:
        """Take a chapter out of the trash, back at its old position (or the end)."""
        with self.tx() as db:
            row = db.execute("SELECT position, deleted FROM chapters WHERE id=?",
                             (chapter_id,)).fetchone()
            if row is None or row[1] is None:
                raise ProjectError(f"Chapter {chapter_id} is not in the trash.")
            live = [r[0] for r in db.execute("SELECT id FROM chapters WHERE deleted IS NULL "
                                             "ORDER BY position, id")]
            live.insert(max(0, min(len(live), (row[0] or len(live) + 1) - 1)), chapter_id)
            db.execute("UPDATE chapters SET deleted=NULL, updated=? WHERE id=?",
                       (now(), chapter_id))
            for pos, cid in enumerate(live, 1):
                db.execute("UPDATE chapters SET position=? WHERE id=?", (pos, cid))
        return chapter_id

    def purge_chapter(self, chapter_id: int) -> None:
        """Remove a chapter for good, with its whole history."""
        self.chapter(chapter_id)
        with self.tx() as db:
            self._purge(db, chapter_id)
            self._renumber(db)

    @staticmethod
    def _purge(db, chapter_id: int) -> None:
        db.execute("DELETE FROM thought_history WHERE thought_id IN "
                   "(SELECT id FROM thoughts WHERE chapter_id=?)", (chapter_id,))
        for table in ("thoughts", "passages", "revisions"):
            db.execute(f"DELETE FROM {table} WHERE chapter_id=?", (chapter_id,))
        db.execute("DELETE FROM chapters WHERE id=?", (chapter_id,))

    # -- revisions -------------------------------------------------------------
    def new_revision(self, chapter_id: int, text: str, author: str, action: str) -> int:
        """A new head on top of the current one."""
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        t = now()
        with self.tx() as db:
            head = self._head(db, chapter_id)
            rid = db["revisions"].insert({"chapter_id": chapter_id, "parent_id": head,
                                          "text": text, "author": author, "action": action,
                                          "created": t, "updated": t, "visited": t}).last_pk
            db["chapters"].update(chapter_id, {"head_rev": rid, "updated": t})
        return rid

    @staticmethod
    def _head(db, chapter_id: int) -> int:
        row = db.execute("SELECT head_rev FROM chapters WHERE id=?", (chapter_id,)).fetchone()
        if row is None:
            raise ProjectError(f"There is no chapter {chapter_id}.")
        return row[0]

    def _move_head(self, db, chapter_id: int, rev_id: int) -> None:
        t = now()
        db.execute("UPDATE chapters SET head_rev=?, updated=? WHERE id=?",
                   (rev_id, t, chapter_id))
        db.execute("UPDATE revisions SET visited=? WHERE id=?", (t, rev_id))

    def update_revision(self, rev_id: int, text: str) -> None:
        """Rewrite a revision in place (streaming autosave, coalesced typing)."""
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        with self.tx() as db:
            db["revisions"].update(rev_id, {"text": text, "updated": now()})

    def revision(self, rev_id: int) -> dict:
        rows = self.query("SELECT * FROM revisions WHERE id=?", (rev_id,))
        if not rows:
            raise ProjectError(f"There is no revision {rev_id}.")
        return rows[0]

    def save_writer_text(self, chapter_id: int, text: str, base_rev: int | None = None,
                         base_text: str | None = None) -> tuple[int, int | None]:
        """Save the writer's edit; rapid edits coalesce into one undo step (only ever into
        the head). Returns (head, branch): ``branch`` is None when the edit became (or
        changed) the head. When ``base_rev`` (the revision the writer's copy was loaded
        from) is no longer the head, nothing is overwritten: the text is kept as a new
        revision on top of ``base_rev`` (a sibling branch), the head stays, and branch is
        its id (or base_rev itself when the text is base_rev's, unchanged). ``base_text``:
        the text the writer's copy last had; when the head is base_rev but its text is no
        longer that (another tab coalesced into it), the edit is kept as a sibling of the
        head instead of overwriting it."""
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        t = now()
        with self.tx() as db:
            head_id = self._head(db, chapter_id)
            head = db.execute("SELECT text, author, action, created FROM revisions "
                              "WHERE id=?", (head_id,)).fetchone()
            if head[0] == text:
                return head_id, None
            if base_rev == head_id and base_text is not None and head[0] != base_text:
                parent = db.execute("SELECT parent_id FROM revisions WHERE id=?",
                                    (head_id,)).fetchone()[0]
                rid = db["revisions"].insert({"chapter_id": chapter_id,
                                              "parent_id": head_id if parent is None else parent,
                                              "text": text, "author": "writer",
                                              "action": "edit", "created": t, "updated": t,
                                              "visited": 0.0}).last_pk
                return head_id, rid
            if base_rev is not None and base_rev != head_id:
                base = db.execute("SELECT chapter_id, text FROM revisions WHERE id=?",
                                  (base_rev,)).fetchone()
                if base is None or base[0] != chapter_id:
                    raise ProjectError(f"Revision {base_rev} is not part of chapter "
                                       f"{chapter_id}.")
                if base[1] == text:
                    return head_id, base_rev
                # visited=0: never the head, so Redo does not wander onto it by itself
                rid = db["revisions"].insert({"chapter_id": chapter_id, "parent_id": base_rev,
                                              "text": text, "author": "writer",
                                              "action": "edit", "created": t, "updated": t,
                                              "visited": 0.0}).last_pk
                return head_id, rid
            has_kids = db.execute("SELECT 1 FROM revisions WHERE parent_id=? LIMIT 1",
                                  (head_id,)).fetchone()
            if (head[1] == "writer" and head[2] == "edit" and not has_kids
                    and t - head[3] < EDIT_COALESCE_S):
                db.execute("UPDATE revisions SET text=?, updated=? WHERE id=?",
                           (text, t, head_id))
                return head_id, None
            rid = db["revisions"].insert({"chapter_id": chapter_id, "parent_id": head_id,
                                          "text": text, "author": "writer", "action": "edit",
                                          "created": t, "updated": t, "visited": t}).last_pk
            db["chapters"].update(chapter_id, {"head_rev": rid, "updated": t})
            return rid, None

    def undo(self, chapter_id: int) -> bool:
        with self.tx() as db:
            parent = db.execute("SELECT parent_id FROM revisions WHERE id=?",
                                (self._head(db, chapter_id),)).fetchone()[0]
            if parent is None:
                return False
            self._move_head(db, chapter_id, parent)
        return True

    def latest_child(self, rev_id: int) -> int | None:
        """Where Redo goes from ``rev_id``: the child that was the head last (the newest
        one when none has been)."""
        kids = self.query("SELECT id FROM revisions WHERE parent_id=? "
                          "ORDER BY COALESCE(visited, created) DESC, id DESC LIMIT 1",
                          (rev_id,))
        return kids[0]["id"] if kids else None

    def redo(self, chapter_id: int) -> bool:
        child = self.latest_child(self.chapter(chapter_id)["head_rev"])
        if child is None:
            return False
        with self.tx() as db:
            self._move_head(db, chapter_id, child)
        return True

    def children(self, rev_id: int) -> list[dict]:
        """Every revision made on top of ``rev_id``, oldest first."""
        return self.query("SELECT * FROM revisions WHERE parent_id=? ORDER BY id", (rev_id,))

    def switch_head(self, chapter_id: int, rev_id: int) -> None:
        """Make a revision of this chapter its head."""
        with self.tx() as db:
            row = db.execute("SELECT chapter_id FROM revisions WHERE id=?",
                             (rev_id,)).fetchone()
            if row is None or row[0] != chapter_id:
                raise ProjectError(f"Revision {rev_id} is not a version of chapter "
                                   f"{chapter_id}.")
            self._move_head(db, chapter_id, rev_id)

    def drop_empty_head(self, chapter_id: int, rev_id: int) -> bool:
        """Remove ``rev_id`` (a passage that came to nothing) when it is still the head
        and nothing was made on top of it; otherwise leave it. True when dropped."""
        with self.tx() as db:
            row = db.execute("SELECT parent_id FROM revisions WHERE id=?",
                             (rev_id,)).fetchone()
            if (row is None or self._head(db, chapter_id) != rev_id
                    or db.execute("SELECT 1 FROM revisions WHERE parent_id=? LIMIT 1",
                                  (rev_id,)).fetchone()):
                return False
            db.execute("UPDATE chapters SET head_rev=? WHERE id=?", (row[0], chapter_id))
            db.execute("UPDATE thoughts SET revision_id=? WHERE revision_id=?",
                       (row[0], rev_id))
            db.execute("DELETE FROM revisions WHERE id=?", (rev_id,))
        return True

    def history(self, chapter_id: int) -> list[dict]:
        """The chain from the first revision to the head, oldest first."""
        rev_id, chain = self.chapter(chapter_id)["head_rev"], []
        while rev_id is not None:
            r = self.revision(rev_id)
            chain.append(r)
            rev_id = r["parent_id"]
        return chain[::-1]

    # -- passages and the generation log ----------------------------------------
    def add_passage(self, chapter_id: int, revision_id: int, start: int, end: int,
                    text: str, author: str) -> int:
        with self.tx() as db:
            return db["passages"].insert({"chapter_id": chapter_id, "revision_id": revision_id,
                                          "start": start, "end": end, "text": text,
                                          "author": author, "created": now()}).last_pk

    def log_generation(self, **row) -> int:
        row.setdefault("created", now())
        for key in ("params", "receipt"):
            if not isinstance(row.get(key), (str, type(None))):
                row[key] = json.dumps(row[key])
        with self.tx() as db:
            return db["generation_log"].insert(row).last_pk

    def update_generation(self, log_id: int, **fields) -> None:
        with self.tx() as db:
            db["generation_log"].update(log_id, fields)
