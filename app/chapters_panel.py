"""The chapter list: add, rename, reorder, delete to the trash and restore; import and
export. Layout and wiring only; every action is a Novel call (engine/novel.py)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import gradio as gr

from app.actions import action
from app.messages import ok
from app.views import chapter_view, need, trash_view, view_outputs
from engine.errors import UserError

# format -> (what the writer picks, file name ending); the margin notes are in the
# "notes" ones only
EXPORTS = {"docx": ("Word manuscript (.docx)", ".docx"),
           "docx-notes": ("Word, margin notes as comments", "-notes.docx"),
           "epub": ("EPUB e-book", ".epub"),
           "md": ("Markdown", ".md"),
           "notes": ("Markdown with margin notes", "-notes.md"),
           "txt": ("Plain text", ".txt")}


def layout() -> dict:
    """The chapters part of the left column; returns its components by name."""
    c = {}
    c["chapter_radio"] = gr.Radio(label="Chapters", choices=[], elem_id="chapters")
    with gr.Row():
        c["add_btn"] = gr.Button("+ Chapter", size="sm", elem_id="add-chapter")
        c["up_btn"] = gr.Button("↑", size="sm", elem_id="chapter-up")
        c["down_btn"] = gr.Button("↓", size="sm", elem_id="chapter-down")
        c["del_btn"] = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-chapter")
    with gr.Row(visible=False, elem_id="confirm-delete") as c["confirm_row"]:
        c["confirm_md"] = gr.Markdown()
        c["yes_del"] = gr.Button("Move to trash", variant="stop", size="sm",
                                 elem_id="confirm-delete-yes")
        c["no_del"] = gr.Button("Keep it", size="sm", elem_id="confirm-delete-no")
    with gr.Accordion("Deleted chapters", open=False, elem_id="trash"):
        c["trash_dd"] = gr.Dropdown(label="In the trash", choices=[], elem_id="trash-list")
        c["restore_btn"] = gr.Button("Restore", size="sm", elem_id="trash-restore")
    with gr.Row():
        c["chapter_title"] = gr.Textbox(label="Chapter title", scale=3, elem_id="chapter-title")
        c["rename_btn"] = gr.Button("Rename", size="sm", scale=1, elem_id="rename-chapter")
    with gr.Accordion("Import and export", open=False):
        c["import_files"] = gr.File(label="Import .txt / .md / .docx / .epub (split on "
                                    "chapter headings)", file_count="multiple",
                                    file_types=[".txt", ".md", ".docx", ".epub"],
                                    elem_id="import-files")
        c["import_btn"] = gr.Button("Import", size="sm", elem_id="import")
        with gr.Row():
            c["export_format"] = gr.Dropdown(
                label="Export as", choices=[(label, fmt) for fmt, (label, _) in
                                            EXPORTS.items()],
                value="docx", scale=3, elem_id="export-format")
            c["export_btn"] = gr.Button("Export", size="sm", scale=1, elem_id="export")
        c["export_file"] = gr.File(label="Download", visible=False, elem_id="export-file")
    return c


def wire(lib, c: dict) -> dict:
    """Events of the chapter list; returns those after which the margin notes follow
    (picked, deleted, restored, imported)."""
    act = functools.partial(action, lib=lib)
    n_view = len(view_outputs(c))
    chapter_outputs = [*view_outputs(c), c["status"]]
    novel_dd, chapter_radio = c["novel_dd"], c["chapter_radio"]

    def chapter_action(fn, message):
        @act(len(chapter_outputs), needs="Open or create a novel first.")
        def handler(novel, cid, *extra):
            cid = fn(novel, cid, *extra)
            return (*chapter_view(lib, novel, cid), ok(message) if message else "")
        return handler

    def on_pick_chapter(name, cid, pending):
        # Another chapter picked: a pending delete question no longer applies. (The
        # same one, e.g. a pick processed after the Delete press that followed it,
        # keeps the question.)
        other = pending is not None and pending != cid
        return (*chapter_action(lambda n, c: c, "")(name, cid),
                gr.Row(visible=False) if other else gr.update(),
                None if other else pending)

    picked = chapter_radio.input(on_pick_chapter, [novel_dd, chapter_radio, c["pending_delete"]],
                                 chapter_outputs + [c["confirm_row"], c["pending_delete"]])
    c["add_btn"].click(chapter_action(lambda n, cid: n.chapters.add(""), "Chapter added."),
                       [novel_dd, chapter_radio], chapter_outputs)
    rename = chapter_action(lambda n, cid, t: n.chapters.rename(need(cid), t) or cid,
                            "Chapter renamed.")
    c["rename_btn"].click(rename, [novel_dd, chapter_radio, c["chapter_title"]], chapter_outputs)
    c["chapter_title"].submit(rename, [novel_dd, chapter_radio, c["chapter_title"]],
                              chapter_outputs)
    c["up_btn"].click(chapter_action(lambda n, cid: n.chapters.move(need(cid), -1) or cid, ""),
                      [novel_dd, chapter_radio], chapter_outputs)
    c["down_btn"].click(chapter_action(lambda n, cid: n.chapters.move(need(cid), 1) or cid, ""),
                        [novel_dd, chapter_radio], chapter_outputs)

    @act(4, 2, needs="Pick a chapter first.", chapter="Pick a chapter first.",
         others={0: gr.update(visible=False), 1: "", 3: None})
    def ask_delete(novel, cid):
        title = next((ch["title"] for ch in novel.chapters.list() if ch["id"] == cid), None)
        if title is None:
            raise UserError("That chapter is already gone.")
        return (gr.Row(visible=True), f"Move **{title}** to the trash? (You can restore "
                "it from “Deleted chapters”.)", "", cid)

    c["del_btn"].click(ask_delete, [novel_dd, chapter_radio],
                       [c["confirm_row"], c["confirm_md"], c["status"], c["pending_delete"]])

    nothing = "Nothing to delete: press Delete on a chapter first."

    @act(n_view + 4, n_view, needs=nothing, chapter=nothing,
         others={n_view + 1: gr.update(visible=False), n_view + 2: None})
    def on_delete(novel, pending):
        """Deletes the chapter the question named, whatever is selected now."""
        title = next((ch["title"] for ch in novel.chapters.list() if ch["id"] == pending), None)
        if title is None:
            raise UserError("That chapter is already gone.")
        novel.chapters.delete(pending)
        msg = ok(f"“{title}” moved to the trash; restore it from “Deleted chapters”.")
        return (*chapter_view(lib, novel, None), msg, gr.Row(visible=False), None,
                trash_view(novel))

    deleted = c["yes_del"].click(on_delete, [novel_dd, c["pending_delete"]],
                                 chapter_outputs + [c["confirm_row"], c["pending_delete"],
                                                    c["trash_dd"]])
    c["no_del"].click(lambda: (gr.Row(visible=False), None),
                      outputs=[c["confirm_row"], c["pending_delete"]])

    pick_trash = "Pick a chapter in the trash first."

    @act(n_view + 2, n_view, needs=pick_trash, chapter=pick_trash)
    def on_restore(novel, cid):
        cid = novel.chapters.restore(cid)
        return (*chapter_view(lib, novel, cid), ok("Chapter restored."), trash_view(novel))

    restored = c["restore_btn"].click(on_restore, [novel_dd, c["trash_dd"]],
                                      chapter_outputs + [c["trash_dd"]])

    # -- import / export -------------------------------------------------------------
    @act(len(chapter_outputs) + 1, len(chapter_outputs) - 1,
         needs="Open or create a novel first.")
    def on_import(novel, files):
        if not files:
            raise UserError("Choose one or more .txt, .md, .docx or .epub files first.")
        paths = [f if isinstance(f, str) else f.name for f in files]
        encodings: dict = {}
        ids = novel.chapters.import_files(paths, progress=gr.Progress().tqdm, encodings=encodings)
        read = "".join(f" Read {f} as {e}." for f, e in encodings.items() if e != "utf-8")
        # the file box is emptied: a second Import must not bring the same files in again
        return (*chapter_view(lib, novel, ids[-1]), ok(f"Imported {len(ids)} chapter(s).{read}"),
                None)

    imported = c["import_btn"].click(on_import, [novel_dd, c["import_files"]],
                                     chapter_outputs + [c["import_files"]])

    @act(2, 1, others={0: gr.update(visible=False)})
    def on_export(novel, fmt):
        if fmt not in EXPORTS:
            raise UserError("Pick a format to export first.")
        data = novel.chapters.export(fmt)  # bytes for .docx and .epub
        name = f"{novel.folder.name}{EXPORTS[fmt][1]}"
        out = Path(tempfile.mkdtemp(prefix="mnemosyne-")) / name
        if isinstance(data, bytes):
            out.write_bytes(data)
        else:
            out.write_text(data, encoding="utf-8")
        return gr.File(value=str(out), visible=True), ok(f"Exported {out.name}.")

    c["export_btn"].click(on_export, [novel_dd, c["export_format"]],
                          [c["export_file"], c["status"]])
    return {"picked_chapter": picked, "deleted": deleted, "restored": restored,
            "imported": imported}
