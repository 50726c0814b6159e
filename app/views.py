"""What the page shows of a novel's chapters, shared by the panels that change them
(app/chapters_panel.py, app/writing_panel.py, app/ui.py)."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from engine.errors import UserError


def _last_path(lib) -> Path:
    return lib.root / ".last-opened.json"


def remember(lib, novel: str | None, chapter: int | None) -> None:
    try:
        _last_path(lib).write_text(json.dumps({"novel": novel, "chapter": chapter}))
    except OSError:
        pass  # remembering the last page is a courtesy, never a failure


def recall(lib) -> dict:
    try:
        return json.loads(_last_path(lib).read_text())
    except (OSError, ValueError):
        return {}


def name_of(novel) -> str:
    """The novel's project name (its folder), as the novel picker holds it."""
    return novel.folder.name


def chapter_choices(novel) -> list[tuple[str, int]]:
    return [(f"{c['position']}. {c['title']} ({c['words']:,} words)", c["id"])
            for c in novel.chapters.list()]


def chapter_list(novel, cid) -> gr.Radio:
    return gr.Radio(choices=chapter_choices(novel), value=cid)


def seen(novel, cid) -> dict:
    """What a tab last saw of a chapter: its saves are conditional on it (StaleText)."""
    return {"rev": novel.chapters.head(cid), "text": novel.chapters.text(cid)}


def as_shown(text: str) -> str:
    """Text as a textarea gives it back (it turns every line break into \\n)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def save(novel, cid, text, base: dict | None) -> None:
    base = base or {}
    novel.chapters.save(cid, text, base_rev=base.get("rev"), base_text=base.get("text"))


def version_label(v: dict) -> str:
    """One alternative passage as the versions list names it."""
    who = {"retry": "retried", "continue": "model", "prompt": "your words"}.get(
        v["action"], v["author"])
    preview = " ".join(v["preview"].split())
    preview = f"“{preview[:70]}{'…' if len(preview) > 70 else ''}”" if preview else "(empty)"
    return f"{'▸ ' if v['current'] else ''}{who}: {preview}"


def versions_view(novel, cid):
    """The alternatives to the passage shown (a Retry keeps the one it replaced)."""
    versions = novel.chapters.versions(cid) if cid is not None else []
    if len(versions) < 2:
        return gr.Dropdown(choices=[], value=None, visible=False)
    choices = [(f"{i}. {version_label(v)}", v["id"]) for i, v in enumerate(versions, 1)]
    current = next((v["id"] for v in versions if v["current"]), None)
    return gr.Dropdown(choices=choices, value=current, visible=True,
                       label=f"Other versions of the last passage ({len(versions)})")


def view_outputs(c: dict) -> list:
    """The components chapter_view fills, in its order."""
    return [c["chapter_radio"], c["editor"], c["chapter_title"], c["head"], c["versions_dd"]]


def chapter_view(lib, novel, cid):
    """(chapter list, editor, title, head revision, versions) for a chapter id of the
    open novel (None: no novel); a chapter id that is not there shows the last one."""
    if novel is None:
        return (gr.Radio(choices=[], value=None), gr.Textbox(value="", label="Chapter"),
                "", None, gr.Dropdown(choices=[], value=None, visible=False))
    chapters = novel.chapters.list()
    ids = [c["id"] for c in chapters]
    cid = cid if cid in ids else (ids[-1] if ids else None)
    if cid is None:
        return (gr.Radio(choices=[], value=None),
                gr.Textbox(value="", label="Chapter (add one to start)"), "", None,
                gr.Dropdown(choices=[], value=None, visible=False))
    title = next(c["title"] for c in chapters if c["id"] == cid)
    remember(lib, name_of(novel), cid)
    return (chapter_list(novel, cid),
            gr.Textbox(value=novel.chapters.text(cid), label=title, interactive=not novel.busy),
            title, seen(novel, cid), versions_view(novel, cid))


def trash_view(novel):
    items = novel.chapters.trash() if novel is not None else []
    return gr.Dropdown(choices=[(f"{t['title']} ({t['words']:,} words)", t["id"])
                                for t in items], value=None,
                       label=f"In the trash ({len(items)})")


def need(cid):
    """A chapter id the action needs: the writer is told to pick one when there is none."""
    if cid is None:
        raise UserError("Pick a chapter first.")
    return cid


def receipt_markdown(receipt: dict | None) -> str:
    """The context receipt of a Continue (or a preview) as the page shows it."""
    if not receipt:
        return "No Continue yet."
    from engine.context import Receipt

    return Receipt(**receipt).markdown()
