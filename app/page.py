"""The manuscript page's data: what assets/page.js draws over and beside the chapter's
textarea (the margin notes at their paragraphs, the model's last passage marked), and
the margin's commands (edit, delete or add a note) as Novel calls.

The page reads one hidden textbox (#page-data, JSON) and writes its commands into
another (#note-cmd) before pressing the hidden #note-apply button."""
from __future__ import annotations

import json

from engine.errors import UserError


def page_data(novel, cid) -> str:
    """JSON for the page: {cid, rev, length, notes: [{id, anchor, text, author}],
    mark: [start, end] | null}. ``length`` is the text's length the anchors are in."""
    if novel is None or cid is None:
        return json.dumps({"cid": None, "rev": None, "length": 0, "notes": [], "mark": None})
    text = novel.chapters.text(cid)
    notes = [{"id": r["id"], "anchor": int(r["anchor"]), "text": r["text"],
              "author": r.get("author") or ("model" if r.get("passage_id") else "writer")}
             for r in novel.thoughts.list(cid)]
    mark = novel.chapters.last_passage(cid)
    return json.dumps({"cid": cid, "rev": novel.chapters.head(cid), "length": len(text),
                       "notes": notes, "mark": list(mark) if mark else None},
                      ensure_ascii=False)


def command(raw: str) -> dict:
    """A margin command as the page sent it: {op: edit|delete|add, id?, text?, anchor?,
    cid?}."""
    try:
        cmd = json.loads(raw or "")
    except ValueError as e:
        raise UserError("The margin sent a command the page does not know.") from e
    if not isinstance(cmd, dict) or cmd.get("op") not in ("edit", "delete", "add"):
        raise UserError("The margin sent a command the page does not know.")
    return cmd


def apply(novel, cid, cmd: dict) -> str:
    """Carry out a margin command on chapter ``cid``; what the writer is told."""
    if cmd.get("cid") not in (None, cid):
        raise UserError("That note belongs to another chapter; it was not changed.")
    op = cmd["op"]
    if op == "add":
        anchor = cmd.get("anchor")
        novel.thoughts.add(cid, cmd.get("text") or "",
                           anchor=None if anchor is None else int(anchor))
        return "Note added."
    note_id = int(cmd.get("id"))
    if note_id not in {r["id"] for r in novel.thoughts.list(cid)}:
        raise UserError("That note is no longer on this chapter's page.")
    if op == "edit":
        novel.thoughts.edit(note_id, cmd.get("text") or "")
        return "Note saved."
    novel.thoughts.delete(note_id)
    return "Note deleted."
