"""The margin notes: the model's thoughts (and the writer's own) beside the paragraphs
they belong to, read and edited in place on the page (assets/page.js draws them; see
app/page.py), and how the model writes them. Layout and wiring only; every action is a
Novel call."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from app import page
from app.actions import action
from app.messages import ok
from app.views import seen
from app.writing_panel import flush

EVERY = [("each passage", "passage"), ("each paragraph", "paragraph"),
         ("every 100 tokens", "100"), ("every 250 tokens", "250")]
PAGE_JS = Path(__file__).resolve().parent.parent / "assets" / "page.js"
EMPTY_MARGIN = '<div class="mg-root"></div>'  # page.js draws the notes in it


def margin_layout() -> dict:
    """The margin beside the chapter: its notes, and the hidden channel to the page."""
    t = {}
    t["show"] = gr.Checkbox(label="Show margin notes", value=True, elem_id="thoughts-show",
                            container=False, interactive=True)
    t["margin"] = gr.HTML(EMPTY_MARGIN, elem_id="thoughts-list", elem_classes=["margin"],
                          js_on_load=PAGE_JS.read_text(encoding="utf-8"))
    t["data"] = gr.Textbox(page.page_data(None, None), visible="hidden", elem_id="page-data")
    t["cmd"] = gr.Textbox("", visible="hidden", elem_id="note-cmd")
    t["apply"] = gr.Button("Apply note", visible="hidden", elem_id="note-apply")
    return t


def settings_layout(t: dict) -> dict:
    """How the model writes its notes (kept with the novel)."""
    with gr.Accordion("Margin notes: how the model writes them", open=False,
                      elem_id="thoughts"):
        with gr.Row():
            t["on"] = gr.Checkbox(label="The model writes notes", value=True,
                                  elem_id="thoughts-on")
            t["plan"] = gr.Checkbox(label="Plan first", value=False, elem_id="thoughts-plan")
        t["every"] = gr.Dropdown(label="A note after", value="paragraph", choices=EVERY,
                                 elem_id="thoughts-every")
        t["mode"] = gr.Dropdown(label="Notes written by", value="prompt",
                                choices=[("a summarising prompt", "prompt"),
                                         ("the model itself (tuned by 'train thoughts')",
                                          "self")], elem_id="thoughts-mode")
    return t


def wire(lib, t, novel_dd, chapter_radio, editor, head, status, after: list,
         data_after: list = ()) -> None:
    """``after``: events (Continue, Retry, chapter switch, undo) that refresh the notes
    and their settings; ``data_after``: events (the autosave) that refresh the notes."""

    def refresh(name, cid):
        if not name or cid is None:
            return page.page_data(None, None), *[gr.update()] * 4
        novel = lib.open(name)
        s = novel.thoughts.settings()
        return (page.page_data(novel, cid), s["on"], s["plan_first"], s["mode"],
                _every_choice(s["every"]))

    def refresh_data(name, cid):
        return page.page_data(lib.open(name), cid) if name and cid is not None else \
            page.page_data(None, None)

    outs = [t["data"], t["on"], t["plan"], t["mode"], t["every"]]
    ins = [novel_dd, chapter_radio]
    shown = action(len(outs), 0, others={0: gr.update()})(refresh)
    for ev in after:
        ev.then(shown, ins, outs, show_progress="hidden")
    data_shown = action(1, 0, others={0: gr.update()})(refresh_data)
    for ev in data_after:
        ev.then(data_shown, ins, t["data"], show_progress="hidden")

    pick_chapter = "Open a novel and pick a chapter first."

    def on_note(novel, cid, raw, text, base):
        """A note edited, deleted or added in the margin. The chapter is saved first: a
        new note's place is counted in the text the writer sees."""
        cmd = page.command(raw)
        flush(novel, cid, text, base)
        message = page.apply(novel, cid, cmd)
        return page.page_data(novel, cid), ok(message), seen(novel, cid)

    def resend(msg, name, cid, *rest):
        """An error: say so, and draw the margin as it stands on disk."""
        try:
            data = page.page_data(lib.open(name), cid) if name and cid is not None else \
                gr.update()
        except Exception:  # noqa: BLE001 - the message is what matters here
            data = gr.update()
        return data, msg, gr.update()

    t["apply"].click(action(3, 1, lib=lib, needs=pick_chapter, chapter=pick_chapter,
                            on_error=resend)(on_note),
                     [novel_dd, chapter_radio, t["cmd"], editor, head],
                     [t["data"], status, head], show_progress="hidden")

    def as_it_was(msg, name, *rest):
        """An error (e.g. self mode with no tuned adapter): say so, show what is set."""
        s = lib.open(name).thoughts.settings()
        return msg, s["mode"], _every_choice(s["every"])

    @action(3, 0, lib=lib, needs=None, on_error=as_it_was)
    def settings(novel, on, plan, mode, every):
        if novel is not None:
            novel.thoughts.set_settings(on=on, plan_first=plan, mode=mode, every=every)
        return "", gr.update(), gr.update()

    boxes = [t["on"], t["plan"], t["mode"], t["every"]]
    for box in boxes:
        box.input(settings, [novel_dd, *boxes], [status, t["mode"], t["every"]])


def _every_choice(every) -> gr.Dropdown:
    """The cadence as the dropdown shows it (a token count set from the CLI included)."""
    value = str(every)
    choices = EVERY if value in {v for _, v in EVERY} else [*EVERY, (f"every {value} tokens",
                                                                     value)]
    return gr.Dropdown(choices=choices, value=value)
