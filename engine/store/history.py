"""A chapter's whole history as revisions (full text, a parent pointer and who wrote it),
so undo/redo is pointer movement and nothing is ever lost; the trash of chapters."""
from __future__ import annotations

from .common import EDIT_COALESCE_S, MAX_CHAPTER_CHARS, MAX_TITLE_CHARS, ProjectError, now, \
    validate_text


class ChapterHistory:
    """Store's chapters and revisions (a part of Store: it needs query and tx)."""

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
                         base_text: str | None = None,
                         aside: bool = False) -> tuple[int, int | None]:
        """Save the writer's edit; rapid edits coalesce into one undo step (only ever into
        the head). Returns (head, branch): ``branch`` is None when the edit became (or
        changed) the head. When ``base_rev`` (the revision the writer's copy was loaded
        from) is no longer the head, nothing is overwritten: the text is kept as a new
        revision on top of ``base_rev`` (a sibling branch), the head stays, and branch is
        its id (or base_rev itself when the text is base_rev's, unchanged). ``base_text``:
        the text the writer's copy last had; when the head is base_rev but its text is no
        longer that (another tab coalesced into it), the edit is kept as a sibling of the
        head instead of overwriting it. ``aside``: never touch the head (the model is
        writing there); the text is kept as a branch on ``base_rev`` (default: the head)."""
        validate_text("The chapter", text, MAX_CHAPTER_CHARS)
        t = now()
        with self.tx() as db:
            head_id = self._head(db, chapter_id)
            head = db.execute("SELECT text, author, action, created FROM revisions "
                              "WHERE id=?", (head_id,)).fetchone()
            if head[0] == text:
                return head_id, None
            if aside and (base_rev is None or base_rev == head_id):
                rid = db["revisions"].insert({"chapter_id": chapter_id, "parent_id": head_id,
                                              "text": text, "author": "writer",
                                              "action": "edit", "created": t, "updated": t,
                                              "visited": 0.0}).last_pk
                return head_id, rid
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
