"""``novel.chapters``: the chapters' text and history (undo, redo, versions, the trash),
import and export."""
from __future__ import annotations

from pathlib import Path

from . import export, importing
from .jobs import NovelError
from .store import (MAX_CHAPTER_CHARS, MAX_TITLE_CHARS, ProjectError, change_preview,
                    validate_text)


class StaleText(NovelError):
    """save() from a copy of the chapter that is no longer its head: the writer's text
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


def _words(text) -> int:
    return len((text or "").split())


class Chapters:
    def __init__(self, store, desk, notes):
        self._store, self._desk, self._notes = store, desk, notes  # notes: ThoughtBook

    # -- the chapters ------------------------------------------------------------------
    def list(self) -> list[dict]:
        """[{id, position, title, words}] in reading order."""
        return [{"id": c["id"], "position": c["position"], "title": c["title"],
                 "words": _words(c["text"])} for c in self._store.chapters()]

    def id(self, number: int | None = None) -> int:
        """The id of chapter ``number`` (1-based, reading order); None: the last one."""
        chapters = self._store.chapters()
        if not chapters:
            raise NovelError("This novel has no chapters yet; add one first.")
        if number is None:
            return chapters[-1]["id"]
        if not 1 <= number <= len(chapters):
            raise NovelError(f"There is no chapter {number}; this novel has {len(chapters)}.")
        return chapters[number - 1]["id"]

    def get(self, chapter_id: int) -> dict:
        """The chapter's row: id, title, text, head_rev, deleted, ..."""
        return self._store.chapter(chapter_id)

    def add(self, title: str = "", text: str = "") -> int:
        return self._store.add_chapter(title, text)

    def rename(self, chapter_id: int, title: str) -> None:
        self._store.rename_chapter(chapter_id, title)

    def move(self, chapter_id: int, delta: int) -> None:
        self._store.move_chapter(chapter_id, delta)

    def delete(self, chapter_id: int) -> None:
        """Move the chapter to the trash (see trash, restore)."""
        if self._desk.writing_chapter == chapter_id:
            raise NovelError("The model is writing in this chapter; press Stop first.")
        self._store.delete_chapter(chapter_id)

    def trash(self) -> list[dict]:
        """[{id, title, words, deleted (timestamp)}], the newest deletion first."""
        return [{"id": c["id"], "title": c["title"], "words": _words(c["text"]),
                 "deleted": c["deleted"]} for c in self._store.trash()]

    def restore(self, chapter_id: int) -> int:
        """Bring a chapter back from the trash, at its old position; returns its id."""
        try:
            return self._store.restore_chapter(chapter_id)
        except ProjectError as e:
            raise NovelError(str(e)) from e

    # -- text ----------------------------------------------------------------------------
    def text(self, chapter_id: int) -> str:
        return self._store.chapter(chapter_id)["text"] or ""

    def save(self, chapter_id: int, text: str, base_rev: int | None = None,
             base_text: str | None = None) -> int:
        """The writer's own edit (rapid edits share one undo step); returns the head
        revision. ``base_rev``/``base_text``: the head and text the writer's copy was
        loaded from or last saved (pass back what each save returns). When the chapter
        moved on since (another tab, a Continue elsewhere), nothing is overwritten: the
        text becomes another version and StaleText is raised."""
        base_rev = None if base_rev is None else int(base_rev)
        if base_rev is not None and not self._store.revisions.belongs(base_rev, chapter_id):
            raise NovelError(f"Revision {base_rev} is not part of chapter {chapter_id}.")
        busy = self._desk.busy  # typing in another tab while the model writes: kept
        if busy and base_rev is None:  # beside the passage being written, not under it
            head = self._store.revision(self.head(chapter_id))
            base_rev = head["parent_id"] if head["author"] == "model" else None
        old = self.text(chapter_id)
        head, branch = self._store.save_writer_text(chapter_id, text, base_rev, base_text,
                                                    aside=busy)
        if branch is not None:
            raise StaleText(head, branch, busy=busy)
        if busy:  # nothing to keep (the text is the chapter's already)
            raise NovelError("The model is writing; press Stop before editing.")
        self._notes.follow_edit(chapter_id, old, text)
        return head

    def manuscript(self) -> str:
        return "\n\n".join((c["text"] or "").strip() for c in self._store.chapters())

    def memory_text(self, chapter: dict) -> str:
        """A chapter as the kNN memory holds it: its prose with every margin note inline,
        so a note that has left the context can still be recalled inside attention."""
        return self._notes.inline_tail(chapter["id"], chapter["text"] or "", None).strip()

    def memory_book(self) -> str:
        """The whole book as the kNN memory holds it (see memory_text)."""
        return "\n\n".join(self.memory_text(c) for c in self._store.chapters())

    # -- history -------------------------------------------------------------------------
    def undo(self, chapter_id: int) -> str:
        self._desk.idle_or_fail()
        self._store.undo(chapter_id)
        return self.text(chapter_id)

    def redo(self, chapter_id: int) -> str:
        self._desk.idle_or_fail()
        self._store.redo(chapter_id)
        return self.text(chapter_id)

    def last_passage(self, chapter_id: int) -> tuple[int, int] | None:
        """(start, end) in the chapter's text of what the model wrote in the last
        Continue, while that passage is still the head as the model left it (None once
        the writer edited the chapter, undid the passage, or the head is theirs)."""
        head = self._store.revision(self.head(chapter_id))
        if head["author"] != "model" or head["parent_id"] is None:
            return None
        text = head["text"] or ""
        parent = self._store.revision(head["parent_id"])["text"] or ""
        start, limit = 0, min(len(parent), len(text))
        while start < limit and parent[start] == text[start]:
            start += 1
        return (start, len(text)) if start < len(text) else None

    def can_undo_redo(self, chapter_id: int) -> tuple[bool, bool]:
        head = self.head(chapter_id)
        parent = self._store.revision(head)["parent_id"]
        return parent is not None, self._store.latest_child(head) is not None

    def head(self, chapter_id: int) -> int:
        """The id of the chapter's current revision."""
        return self._store.chapter(chapter_id)["head_rev"]

    def revision(self, rev_id: int) -> dict:
        """{id, chapter_id, parent_id, text, author, action, created}."""
        return self._store.revision(rev_id)

    def versions(self, chapter_id: int) -> list[dict]:
        """The alternatives at this point of the history: every revision made on the head's
        parent (the head among them), oldest first, each {id, author, action, created,
        words, preview (the start of what it adds to the parent), current}; [] when the
        head is the first revision."""
        head = self._store.revision(self.head(chapter_id))
        if head["parent_id"] is None:
            return []
        parent = self._store.revision(head["parent_id"])["text"] or ""
        return [{"id": r["id"], "author": r["author"], "action": r["action"],
                 "created": r["created"], "words": _words(r["text"]),
                 "preview": change_preview(parent, r["text"] or ""),
                 "current": r["id"] == head["id"]}
                for r in self._store.children(head["parent_id"])]

    def switch_version(self, chapter_id: int, rev_id: int) -> str:
        """Make another version (any revision of this chapter) the head; its text."""
        self._desk.idle_or_fail()
        try:
            self._store.switch_head(chapter_id, int(rev_id))
        except ProjectError as e:
            raise NovelError(str(e)) from e
        return self.text(chapter_id)

    # -- import and export -----------------------------------------------------------------
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
        return self._store.add_chapters(progress(parsed) if progress else parsed,
                                        author="writer", action="import", replace=blank)

    def _untouched_blank_chapter(self) -> int | None:
        """The id of the novel's only chapter when nothing was ever written in it."""
        chapters = self._store.chapters()
        if len(chapters) != 1 or (chapters[0]["text"] or "").strip():
            return None
        cid = chapters[0]["id"]
        if self._store.revisions.count(cid) > 1 or self._notes.list(cid):
            return None  # an undone draft is still kept
        return cid

    def export(self, fmt: str) -> str | bytes:
        """The manuscript as 'md' or 'txt', or 'notes': Markdown with every margin note
        set apart; as bytes for 'docx' and 'epub' (no note) and 'docx-notes' (each note
        a Word comment on its paragraph)."""
        if fmt in export.BINARY:
            return export.render_binary(self._store.bible(), [
                {"title": c["title"], "text": c["text"] or "",
                 "notes": self._notes.list(c["id"]) if fmt == "docx-notes" else []}
                for c in self._store.chapters()], fmt)
        notes = fmt == "notes"
        chapters = [{"title": c["title"],
                     "text": self._notes.margin_markdown(c["text"] or "", c["id"]) if notes
                     else c["text"]} for c in self._store.chapters()]
        return export.render(self._store.bible(), chapters, "md" if notes else fmt)
