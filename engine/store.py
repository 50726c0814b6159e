"""Project folder layout and the SQLite schema (via sqlite-utils), with migrations.

One folder per novel: ``novel.db`` (WAL) and ``memory/`` for derived files.
Every chapter keeps its whole history as revisions (full text, a parent pointer
and who wrote it), so undo/redo is pointer movement and nothing is ever lost.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

SCHEMA_VERSION = 3
DB_NAME = "novel.db"
MEMORY_DIR = "memory"

# A project name becomes a folder name: keep it boring and portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
MAX_TITLE_CHARS = 200
MAX_FIELD_CHARS = 20_000
# ~300k words: far beyond any real chapter, small enough to keep the UI responsive.
MAX_CHAPTER_CHARS = 2_000_000
# Writer edits within this many seconds of the last one share one undo step.
EDIT_COALESCE_S = 30.0


class ProjectError(ValueError):
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


MIGRATIONS = {1: _m1, 2: _m2, 3: _m3}


class Store:
    """Thread-safe access to one project's database."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.memory_dir = self.folder / MEMORY_DIR
        self._lock = threading.RLock()
        conn = sqlite3.connect(self.folder / DB_NAME, check_same_thread=False,
                               isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

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
        self.db.conn.close()

    def _migrate(self) -> None:
        with self.tx():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ProjectError(
                    f"This novel was saved by a newer Mnemosyne (schema {version}); "
                    "please upgrade.")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](self.db)
                self.db.execute(f"PRAGMA user_version={v}")

    @contextmanager
    def tx(self):
        """One transaction: all or nothing, even if the process dies mid-way."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

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
        return self.query(
            "SELECT c.id, c.position, c.title, c.head_rev, r.text FROM chapters c "
            "LEFT JOIN revisions r ON r.id = c.head_rev ORDER BY c.position")

    def chapter(self, chapter_id: int) -> dict:
        rows = self.query(
            "SELECT c.id, c.position, c.title, c.head_rev, r.text FROM chapters c "
            "LEFT JOIN revisions r ON r.id = c.head_rev WHERE c.id=?", (chapter_id,))
        if not rows:
            raise ProjectError(f"There is no chapter {chapter_id}.")
        return rows[0]

    def add_chapter(self, title: str, text: str = "", author: str = "writer",
                    action: str = "create") -> int:
        title = validate_text("The chapter title", (title or "").strip(), MAX_TITLE_CHARS)
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        t = now()
        with self.tx() as db:
            pos = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM chapters").fetchone()[0]
            cid = db["chapters"].insert({"position": pos, "title": title or f"Chapter {pos}",
                                         "head_rev": None, "created": t, "updated": t}).last_pk
            rid = db["revisions"].insert({"chapter_id": cid, "parent_id": None, "text": text,
                                          "author": author, "action": action,
                                          "created": t, "updated": t}).last_pk
            db["chapters"].update(cid, {"head_rev": rid})
            if text and author == "writer" and action == "import":
                db["passages"].insert({"chapter_id": cid, "revision_id": rid, "start": 0,
                                       "end": len(text), "text": text, "author": author,
                                       "created": t})
        return cid

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
        self.chapter(chapter_id)
        with self.tx() as db:
            for table in ("thoughts", "passages", "revisions"):
                db.execute(f"DELETE FROM {table} WHERE chapter_id=?", (chapter_id,))
            db.execute("DELETE FROM chapters WHERE id=?", (chapter_id,))
            for pos, row in enumerate(db.query("SELECT id FROM chapters ORDER BY position"), 1):
                db["chapters"].update(row["id"], {"position": pos})

    # -- revisions -------------------------------------------------------------
    def new_revision(self, chapter_id: int, text: str, author: str, action: str) -> int:
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        head = self.chapter(chapter_id)["head_rev"]
        t = now()
        with self.tx() as db:
            rid = db["revisions"].insert({"chapter_id": chapter_id, "parent_id": head,
                                          "text": text, "author": author, "action": action,
                                          "created": t, "updated": t}).last_pk
            db["chapters"].update(chapter_id, {"head_rev": rid, "updated": t})
        return rid

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

    def save_writer_text(self, chapter_id: int, text: str) -> int:
        """Save the writer's edit; rapid edits coalesce into one undo step."""
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        ch = self.chapter(chapter_id)
        if ch["text"] == text:
            return ch["head_rev"]
        head = self.revision(ch["head_rev"])
        if (head["author"] == "writer" and head["action"] == "edit"
                and self.latest_child(head["id"]) is None
                and now() - head["created"] < EDIT_COALESCE_S):
            self.update_revision(head["id"], text)
            return head["id"]
        return self.new_revision(chapter_id, text, "writer", "edit")

    def undo(self, chapter_id: int) -> bool:
        head = self.revision(self.chapter(chapter_id)["head_rev"])
        if head["parent_id"] is None:
            return False
        with self.tx() as db:
            db["chapters"].update(chapter_id, {"head_rev": head["parent_id"], "updated": now()})
        return True

    def latest_child(self, rev_id: int) -> int | None:
        """The newest revision made on top of ``rev_id``: where Redo goes."""
        kids = self.query("SELECT id FROM revisions WHERE parent_id=? ORDER BY id DESC LIMIT 1",
                          (rev_id,))
        return kids[0]["id"] if kids else None

    def redo(self, chapter_id: int) -> bool:
        child = self.latest_child(self.chapter(chapter_id)["head_rev"])
        if child is None:
            return False
        with self.tx() as db:
            db["chapters"].update(chapter_id, {"head_rev": child, "updated": now()})
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
