"""The tables of novel.db as objects (the sqlite-utils ``db["table"]`` idiom): each holds
the few named reads and writes its callers need, so no SQL is written outside this
package. Reached through a Store: ``store.memories.add(...)``, ``store.thoughts.list()``.

Each write is one transaction of its own (Store.tx); reads go through Store.query.
"""
from __future__ import annotations

import json

from .common import now


class Table:
    name = ""

    def __init__(self, store):
        self.store = store

    def _query(self, sql: str, params=()) -> list[dict]:
        return self.store.query(sql, params)


class SourceTable(Table):
    """A table semantic memory reads items from (memories, passages, thoughts)."""
    stamp = "updated"  # the column that changes when a row's text does

    def get(self, row_id: int) -> dict | None:
        rows = self._query(f"SELECT * FROM {self.name} WHERE id=?", (row_id,))
        return rows[0] if rows else None

    def exists(self, row_id: int) -> bool:
        return self._query(f"SELECT 1 FROM {self.name} WHERE id=?", (row_id,)) != []

    def ids(self) -> list[int]:
        return [r["id"] for r in self._query(f"SELECT id FROM {self.name} ORDER BY id")]

    def texts(self) -> list[dict]:
        """{id, text} of every row."""
        return self._query(f"SELECT id, text FROM {self.name}")

    def stats(self) -> dict:
        """Count, max id, sum of ids and newest stamp: a change detector that reads no text."""
        return self._query(f"SELECT COUNT(*) n, COALESCE(MAX(id),0) m, COALESCE(SUM(id),0) s, "
                           f"COALESCE(MAX({self.stamp}),0) u FROM {self.name}")[0]


class ChapterItems(SourceTable):
    """Rows that belong to a chapter (passages, thoughts)."""

    def chapters_of(self, ids) -> dict[int, dict]:
        """{row id: {position, title}} of the chapter each row is in."""
        ids = tuple(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r["id"]: {"position": r["position"], "title": r["title"]}
                for r in self._query(f"SELECT x.id, c.position, c.title FROM {self.name} x "
                                     f"JOIN chapters c ON c.id = x.chapter_id "
                                     f"WHERE x.id IN ({marks})", ids)}


class Memories(SourceTable):
    name = "memories"

    def add(self, text: str, kind: str = "fact", pinned: bool = False,
            source: str = "writer") -> int:
        t = now()
        with self.store.tx() as db:
            return db["memories"].insert({"kind": kind, "text": text, "pinned": int(pinned),
                                          "source": source, "created": t,
                                          "updated": t}).last_pk

    def add_many(self, texts, kind: str = "fact", source: str = "writer") -> None:
        """Unpinned memories in one transaction (benchmarks)."""
        t = now()
        with self.store.tx() as db:
            db.conn.executemany("INSERT INTO memories (kind, text, pinned, source, created, "
                                "updated) VALUES (?, ?, 0, ?, ?, ?)",
                                [(kind, x, source, t, t) for x in texts])

    def update(self, memory_id: int, **fields) -> None:
        """Change text and/or pinned (``updated`` is stamped)."""
        if "pinned" in fields:
            fields["pinned"] = int(fields["pinned"])
        with self.store.tx() as db:
            db["memories"].update(memory_id, {**fields, "updated": now()})

    def delete(self, memory_id: int) -> None:
        """A memory and every association of it."""
        with self.store.tx() as db:
            db.execute("DELETE FROM memories WHERE id=?", (memory_id,))
            db.execute("DELETE FROM associations WHERE a=? OR b=?", (f"memory:{memory_id}",) * 2)

    def clear(self) -> None:
        """Every memory (benchmarks; associations are left as they are)."""
        with self.store.tx() as db:
            db.execute("DELETE FROM memories")

    def list(self) -> list[dict]:
        """Pinned first, then by id."""
        return self._query("SELECT id, kind, pinned, text, source FROM memories "
                           "ORDER BY pinned DESC, id")

    def pinned(self) -> list[dict]:
        """{id, text} of the pinned memories, by id."""
        return self._query("SELECT id, text FROM memories WHERE pinned=1 ORDER BY id")

    def find(self, text: str) -> int | None:
        """The id of a memory with exactly this text."""
        rows = self._query("SELECT id FROM memories WHERE text=?", (text,))
        return rows[0]["id"] if rows else None


class Passages(ChapterItems):
    """Spans the model (or the writer, on import) added in one go."""
    name = "passages"
    stamp = "created"

    def add(self, chapter_id: int, revision_id: int, start: int, end: int, text: str,
            author: str) -> int:
        with self.store.tx() as db:
            return db["passages"].insert({"chapter_id": chapter_id, "revision_id": revision_id,
                                          "start": start, "end": end, "text": text,
                                          "author": author, "created": now()}).last_pk

    def trashed_ids(self) -> set[int]:
        """Passages of chapters in the trash."""
        return {r["id"] for r in self._query(
            "SELECT p.id FROM passages p JOIN chapters c ON c.id = p.chapter_id "
            "WHERE c.deleted IS NOT NULL")}

    def head_text(self, passage_id: int) -> str | None:
        """The text of the head revision of the passage's chapter (None: no such passage)."""
        rows = self._query("SELECT r.text FROM passages p JOIN chapters c ON "
                           "c.id = p.chapter_id JOIN revisions r ON r.id = c.head_rev "
                           "WHERE p.id=?", (passage_id,))
        return (rows[0]["text"] or "") if rows else None


class Thoughts(ChapterItems):
    """Margin notes, each on the revision it was made on, with their edit history."""
    name = "thoughts"

    def list(self, chapter_id: int | None = None) -> list[dict]:
        """The notes shown now (their revision is a head or an ancestor of one), of one
        chapter or of every live one, in chapter and anchor order."""
        if chapter_id is not None:
            heads, args = "SELECT head_rev FROM chapters WHERE id=?", (chapter_id, chapter_id)
            where = "t.chapter_id=? AND "
        else:
            heads, args, where = "SELECT head_rev FROM chapters WHERE deleted IS NULL", (), ""
        return self._query(
            f"WITH RECURSIVE shown(id) AS ({heads} UNION "
            "SELECT r.parent_id FROM revisions r JOIN shown s ON r.id = s.id "
            "WHERE r.parent_id IS NOT NULL) "
            "SELECT t.id, t.chapter_id, t.passage_id, t.revision_id, t.anchor, t.text, "
            f"t.created, t.updated FROM thoughts t WHERE {where}"
            "(t.revision_id IS NULL OR t.revision_id IN (SELECT id FROM shown)) "
            "ORDER BY t.chapter_id, t.anchor, t.id", args)

    def add(self, chapter_id: int, revision_id: int, anchor: int, text: str,
            passage_id: int | None = None, author: str = "writer") -> int:
        t = now()
        with self.store.tx() as db:
            tid = db["thoughts"].insert({"chapter_id": chapter_id, "passage_id": passage_id,
                                         "revision_id": revision_id, "anchor": anchor,
                                         "text": text, "created": t, "updated": t}).last_pk
            db["thought_history"].insert({"thought_id": tid, "text": text, "author": author,
                                          "created": t})
        return tid

    def edit(self, thought_id: int, text: str, author: str = "writer") -> None:
        """New text; the history keeps it."""
        t = now()
        with self.store.tx() as db:
            db["thoughts"].update(thought_id, {"text": text, "updated": t})
            db["thought_history"].insert({"thought_id": thought_id, "text": text,
                                          "author": author, "created": t})

    def delete(self, thought_id: int) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM thoughts WHERE id=?", (thought_id,))

    def history(self, thought_id: int) -> list[dict]:
        """{text, author, created} of every version, oldest first."""
        return self._query("SELECT text, author, created FROM thought_history "
                           "WHERE thought_id=? ORDER BY id", (thought_id,))

    def set_anchors(self, anchors: dict[int, int]) -> None:
        """{thought id: anchor} in one transaction."""
        with self.store.tx() as db:
            for tid, anchor in anchors.items():
                db["thoughts"].update(tid, {"anchor": anchor})


class Revisions(Table):
    """The chapters' versions (the history itself is Store's: undo, redo, branches)."""
    name = "revisions"

    def belongs(self, rev_id: int, chapter_id: int) -> bool:
        return self._query("SELECT 1 FROM revisions WHERE id=? AND chapter_id=?",
                           (rev_id, chapter_id)) != []

    def count(self, chapter_id: int) -> int:
        return self._query("SELECT COUNT(*) AS n FROM revisions WHERE chapter_id=?",
                           (chapter_id,))[0]["n"]


class Associations(Table):
    """Edges between memory keys ('memory:3', 'passage:12#0', 'thought:4'), stored once
    as (a, b) with a < b: 'link' (the writer's) and 'cooccur' (derived)."""
    name = "associations"

    def link(self, a: str, b: str, weight: float, kind: str = "link") -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO associations (a, b, kind, weight) "
                       "VALUES (?, ?, ?, ?)", (min(a, b), max(a, b), kind, weight))

    def add_many(self, edges, kind: str = "link", keep: bool = False) -> None:
        """(a, b, weight) edges in one transaction; ``keep``: an edge already there stays
        as it is (else it is replaced)."""
        verb = "INSERT OR IGNORE" if keep else "INSERT OR REPLACE"
        with self.store.tx() as db:
            db.conn.executemany(f"{verb} INTO associations (a, b, kind, weight) "
                                "VALUES (?, ?, ?, ?)", [(a, b, kind, w) for a, b, w in edges])

    def rewrite(self, kind: str, edges, touching=None) -> None:
        """Replace the ``kind`` edges in one transaction: all of them (``touching`` None) or
        those touching the given keys ('passage:12' also means its chunks
        'passage:12#N'), then add ``edges`` ((a, b) -> weight)."""
        with self.store.tx() as db:
            if touching is None:
                db.execute("DELETE FROM associations WHERE kind=?", (kind,))
            else:
                for p in touching:
                    pat = p + "#%" if p.startswith("passage:") else p
                    db.execute("DELETE FROM associations WHERE kind=? AND "
                               "(a LIKE ? OR b LIKE ?)", (kind, pat, pat))
            db.conn.executemany("INSERT OR REPLACE INTO associations (a, b, kind, weight) "
                                "VALUES (?, ?, ?, ?)",
                                [(a, b, kind, w) for (a, b), w in edges.items()])

    def clear(self, kind: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM associations WHERE kind=?", (kind,))

    def unlink(self, key: str) -> None:
        """Every edge touching ``key``."""
        with self.store.tx() as db:
            db.execute("DELETE FROM associations WHERE a=? OR b=?", (key, key))

    def neighbours(self, key: str, limit: int) -> list[dict]:
        """{other, kind, weight} of the edges of ``key``: links first, then by weight."""
        return self._query(
            "SELECT CASE WHEN a=? THEN b ELSE a END other, kind, weight FROM associations "
            "WHERE a=? OR b=? ORDER BY CASE kind WHEN 'link' THEN 0 ELSE 1 END, weight DESC, "
            "other LIMIT ?", (key, key, key, limit))


class Settings(Table):
    """JSON values by key (per-novel settings)."""
    name = "settings"

    def get(self, key: str, default=None):
        rows = self._query("SELECT value FROM settings WHERE key=?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set(self, key: str, value) -> None:
        with self.store.tx() as db:
            db["settings"].upsert({"key": key, "value": json.dumps(value)}, pk="key")


class GenerationLog(Table):
    """One row per Continue: model, parameters, receipt, token counts, status."""
    name = "generation_log"

    def add(self, **row) -> int:
        row.setdefault("created", now())
        for key in ("params", "receipt"):
            if not isinstance(row.get(key), (str, type(None))):
                row[key] = json.dumps(row[key])
        with self.store.tx() as db:
            return db["generation_log"].insert(row).last_pk

    def update(self, log_id: int, **fields) -> None:
        with self.store.tx() as db:
            db["generation_log"].update(log_id, fields)

    def list(self) -> list[dict]:
        """Every row, oldest first (params and receipt as stored: JSON text)."""
        return self._query("SELECT * FROM generation_log ORDER BY id")

    def any_running(self) -> bool:
        return bool(self._query("SELECT 1 FROM generation_log WHERE status='running' LIMIT 1"))

    def mark_interrupted(self) -> None:
        """Every 'running' row becomes 'interrupted'."""
        with self.store.tx() as db:
            db.execute("UPDATE generation_log SET status='interrupted' WHERE status='running'")
