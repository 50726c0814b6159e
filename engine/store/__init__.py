"""Project folder layout and the SQLite schema (via sqlite-utils), with migrations.

One folder per novel: ``novel.db`` (WAL) and ``memory/`` for derived files.
Every chapter keeps its whole history as revisions (full text, a parent pointer
and who wrote it), so undo/redo is pointer movement and nothing is ever lost.

All of the project's SQL lives in this package (tests/test_architecture_sql.py):
common.py (limits, ProjectError, validators), schema.py (migrations), history.py
(chapters and revisions), tables.py (the other tables as objects: ``store.memories``,
``store.thoughts``, ...), database.py (Store: connection, transactions, writing lock).
"""
from .common import (DB_NAME, EDIT_COALESCE_S, MAX_CHAPTER_CHARS, MAX_FIELD_CHARS,
                     MAX_TITLE_CHARS, MEMORY_DIR, WRITING_LOCK, ProjectError, change_preview,
                     now, slugify, validate_name, validate_text)
from .database import Store, head_texts
from .schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DB_NAME", "EDIT_COALESCE_S", "MAX_CHAPTER_CHARS", "MAX_FIELD_CHARS",
           "MAX_TITLE_CHARS", "MEMORY_DIR", "MIGRATIONS", "SCHEMA_VERSION", "WRITING_LOCK",
           "ProjectError", "Store", "change_preview", "head_texts", "now", "slugify",
           "validate_name", "validate_text"]
