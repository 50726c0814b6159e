"""The SQLite schema of novel.db, as versioned migrations (PRAGMA user_version)."""
from __future__ import annotations

import sqlite_utils

SCHEMA_VERSION = 4


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
