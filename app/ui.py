"""The Gradio UI: the page layout and the novel-level events (open, create, the story
bible); each panel wires its own events (app/*_panel.py). Every action goes through
engine.novel (Library and Novel); nothing here knows about models."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from app import (chapters_panel, knn_panel, matrix_panel, memory_panel, thoughts_panel,
                 writing_panel)
from app.actions import action, writer_message
from app.messages import ok
from app.views import chapter_view, name_of, recall, trash_view, view_outputs
from engine.errors import UserError
from engine.novel import Library

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "style.css"


def _novel_choices(lib: Library) -> list[tuple[str, str]]:
    """(title, folder name) for the novel picker: the writer knows their books by title."""
    out = []
    for name in lib.names():
        try:
            title = lib.open(name).bible["title"] or name
        except Exception as e:  # noqa: BLE001 - one broken novel must not hide the others
            if not isinstance(e, UserError):
                writer_message(e, "the novel picker")  # logged with its traceback
            title = f"{name} (cannot be opened)"
        out.append((title if title == name else f"{title} ({name})", name))
    return out


def _layout(lib: Library) -> dict:
    """The page: every component by name (the panels' own under their dicts)."""
    c = {}
    with gr.Row(elem_id="topbar"):
        gr.Markdown("## Mnemosyne", elem_id="brand")
        c["model_status"] = gr.Markdown(lib.model.status(), elem_id="model-status")
    with gr.Row(elem_id="desk"):
        with gr.Column(scale=1, min_width=260, elem_id="left-col"):
            c["novel_dd"] = gr.Dropdown(label="Novel", choices=_novel_choices(lib), value=None,
                                        elem_id="novel-select", interactive=True)
            with gr.Accordion("New novel", open=False, elem_id="new-novel") as c["new_novel_box"]:
                c["new_title"] = gr.Textbox(label="Title", elem_id="new-title")
                c["new_premise"] = gr.Textbox(label="Premise", lines=3, elem_id="new-premise")
                c["new_style"] = gr.Textbox(label="Style notes", lines=2, elem_id="new-style")
                c["new_name"] = gr.Textbox(label="Project folder name (optional)",
                                           placeholder="derived from the title",
                                           elem_id="new-name")
                c["create_btn"] = gr.Button("Create novel", variant="primary",
                                            elem_id="create-novel")
            c.update(chapters_panel.layout())
        with gr.Column(scale=3, min_width=420, elem_id="page-col"):
            # The manuscript page: the chapter, its margin notes beside it (page.js).
            with gr.Row(elem_id="page", equal_height=False):
                with gr.Column(scale=3, min_width=280, elem_id="page-text"):
                    c.update(writing_panel.editor_layout())
                with gr.Column(scale=1, min_width=180, elem_id="margin-col"):
                    c["notes"] = thoughts_panel.margin_layout()
            c.update(writing_panel.layout())
            thoughts_panel.settings_layout(c["notes"])
        # Beside the page from 1280 px wide; a drawer below that (style.css, page.js).
        with gr.Column(scale=1, min_width=260, elem_id="side-panels"):
            c.update(writing_panel.sampling_layout())
            with gr.Accordion("Story bible", open=False):
                c["bible_title"] = gr.Textbox(label="Title", elem_id="bible-title")
                c["bible_premise"] = gr.Textbox(label="Premise", lines=4,
                                                elem_id="bible-premise")
                c["bible_style"] = gr.Textbox(label="Style notes", lines=3,
                                              elem_id="bible-style")
                c["bible_save"] = gr.Button("Save bible", size="sm", elem_id="bible-save")
            c.update(writing_panel.receipt_layout())
            c["mem"] = memory_panel.panel()
            c["knn"] = knn_panel.panel()
            c["matrix"] = matrix_panel.panel()
    c["timer"] = gr.Timer(2.0)
    c["head"] = gr.State(None)            # views.seen(): what this tab last showed
    c["pending_delete"] = gr.State(None)  # the chapter the delete question names
    # "ready" once the page load has filled the page in (the browser tests wait on it).
    c["page_ready"] = gr.Markdown("", visible="hidden", elem_id="page-ready")
    return c


def build(lib: Library) -> gr.Blocks:
    with gr.Blocks(title="Mnemosyne") as demo:
        c = _layout(lib)
        novel_dd = c["novel_dd"]

        def bible_view(novel):
            if novel is None:
                return "", "", ""
            b = novel.bible
            return b["title"], b["premise"], b["style"]

        def page_view(novel, cid=None, msg=""):
            """Everything the page shows for a novel (see page_outputs)."""
            return (gr.Dropdown(choices=_novel_choices(lib),
                                value=name_of(novel) if novel is not None else None),
                    *chapter_view(lib, novel, cid), *bible_view(novel), msg,
                    gr.Accordion(open=not lib.names()), trash_view(novel),
                    *writing_panel.sampling_view(novel))

        page_outputs = [novel_dd, *view_outputs(c), c["bible_title"], c["bible_premise"],
                        c["bible_style"], c["status"], c["new_novel_box"], c["trash_dd"],
                        c["temperature"], c["top_p"], c["max_tokens"]]
        at_status = page_outputs.index(c["status"])

        @action(len(page_outputs), at_status, on_error=lambda msg: page_view(None, None, msg))
        def on_load():
            last = recall(lib)
            names = lib.names()
            name = last.get("novel") if last.get("novel") in names else (
                names[0] if names else None)
            novel = lib.open(name) if name else None
            busy = novel is not None and novel.busy
            msg = "The model is still writing here; the text follows as it comes." if busy else ""
            return page_view(novel, last.get("chapter"), msg)

        loaded = demo.load(on_load, outputs=page_outputs)
        demo.load(None, js=writing_panel.AUTOSAVE_JS)

        @action(len(page_outputs) - 1, at_status - 1, lib=lib, needs=None,
                on_error=lambda msg, name: page_view(None, None, msg)[1:])
        def on_pick_novel(novel):
            return page_view(novel)[1:]

        picked_novel = novel_dd.input(on_pick_novel, novel_dd, page_outputs[1:])

        new = [c["new_title"], c["new_premise"], c["new_style"], c["new_name"]]

        @action(len(page_outputs) + len(new), at_status)
        def on_create(title, premise, style, name):
            name = lib.create(title, premise, style, name)
            novel = lib.open(name)
            novel.chapters.add("Chapter 1")
            return (*page_view(novel, None, ok(f"Created “{title.strip()}”.")), "", "", "", "")

        created = c["create_btn"].click(on_create, new, page_outputs + new)

        @action(2, 0, lib=lib)
        def on_save_bible(novel, title, premise, style):
            novel.set_bible(title, premise, style)
            return ok("Story bible saved."), gr.Dropdown(choices=_novel_choices(lib))

        c["bible_save"].click(on_save_bible, [novel_dd, c["bible_title"], c["bible_premise"],
                                              c["bible_style"]], [c["status"], novel_dd])

        chapters = chapters_panel.wire(lib, c)
        loaded.then(lambda: "ready", outputs=c["page_ready"], show_progress="hidden")
        writing = writing_panel.wire(lib, c, loaded)
        c["timer"].tick(lambda: lib.model.status(), outputs=c["model_status"],
                        show_progress="hidden")
        # The panels follow the novel through the events that open one, not through
        # novel_dd.change: after a page load and a "Create" raced, Gradio's dropdown kept
        # re-firing .change (a thousand panel refreshes in 100 s) and their progress
        # overlays hid every status message.
        opened = [loaded, picked_novel, created]
        memory_panel.wire(lib, c["mem"], novel_dd, c["chapter_radio"], c["editor"],
                          c["receipt_md"], c["receipt_acc"], opened)
        knn_panel.wire(lib, c["knn"], novel_dd, opened)
        matrix_panel.wire(lib, c["matrix"], novel_dd, opened)
        saved = writing.pop("saved")
        thoughts_panel.wire(lib, c["notes"], novel_dd, c["chapter_radio"], c["editor"],
                            c["head"], c["status"],
                            [*writing.values(), *chapters.values(), *opened], [saved])
    return demo


def css() -> str:
    return CSS_PATH.read_text() if CSS_PATH.is_file() else ""
