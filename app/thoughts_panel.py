"""The margin-notes panel: the model's thoughts beside the chapter, editable.
Layout and wiring only; every action is a Novel call."""
from __future__ import annotations

import gradio as gr

from app.actions import action
from app.messages import ok
from engine.errors import UserError

EVERY = [("each passage", "passage"), ("each paragraph", "paragraph"),
         ("every 100 tokens", "100"), ("every 250 tokens", "250")]


def layout() -> dict:
    t = {}
    with gr.Accordion("Margin notes (the model's thoughts)", open=True, elem_id="thoughts"):
        with gr.Row():
            t["show"] = gr.Checkbox(label="Show margin notes", value=True,
                                    elem_id="thoughts-show")
            t["on"] = gr.Checkbox(label="The model writes notes", value=True,
                                  elem_id="thoughts-on")
            t["plan"] = gr.Checkbox(label="Plan first", value=False, elem_id="thoughts-plan")
        with gr.Row():
            t["every"] = gr.Dropdown(label="A note after", value="paragraph", choices=EVERY,
                                     elem_id="thoughts-every")
            t["mode"] = gr.Dropdown(label="Notes written by", value="prompt",
                                    choices=[("a summarising prompt", "prompt"),
                                             ("the model itself (tuned by 'train thoughts')",
                                              "self")], elem_id="thoughts-mode")
        t["notes"] = gr.Markdown("", elem_id="thoughts-list")
        t["pick"] = gr.Dropdown(label="Note", choices=[], elem_id="thought-pick")
        t["text"] = gr.Textbox(label="Edit the note (or write your own to steer the story)",
                               lines=2, elem_id="thought-text")
        with gr.Row():
            t["save"] = gr.Button("Save note", size="sm", elem_id="thought-save")
            t["add"] = gr.Button("Add as a new note at the end", size="sm",
                                 elem_id="thought-add")
            t["delete"] = gr.Button("Delete note", size="sm", variant="stop",
                                    elem_id="thought-delete")
        t["status"] = gr.Markdown("", elem_id="thought-status")
    return t


def _render(novel, cid, show: bool) -> str:
    if not show:
        return "*Margin notes are hidden.*"
    rows = novel.thoughts.list(cid)
    if not rows:
        return "*No notes yet: they appear after each Continue.*"
    text = novel.chapters.text(cid)
    out = []
    for r in rows:
        before = text[max(0, r["anchor"] - 60):r["anchor"]].replace("\n", " ").strip()
        out.append(f"**#{r['id']}** · after “…{before}”\n\n> 💭 {r['text']}")
    return "\n\n".join(out)


def wire(lib, t, novel_dd, chapter_radio, after: list) -> None:
    """``after``: events (Continue, Retry, chapter switch) that refresh the notes."""

    def refresh(name, cid, show, pick=None, msg=""):
        if not name or cid is None:
            return ("", gr.Dropdown(choices=[], value=None), "", msg, *[gr.update()] * 4)
        novel = lib.open(name)
        rows = novel.thoughts.list(cid)
        choices = [(f"#{r['id']}: {r['text'][:50]}", r["id"]) for r in rows]
        pick = pick if pick in [c[1] for c in choices] else None
        text = novel.thoughts.get(pick)["text"] if pick is not None else ""
        s = novel.thoughts.settings()
        return (_render(novel, cid, show), gr.Dropdown(choices=choices, value=pick), text, msg,
                s["on"], s["plan_first"], s["mode"], _every_choice(s["every"]))

    outs = [t["notes"], t["pick"], t["text"], t["status"], t["on"], t["plan"], t["mode"],
            t["every"]]
    ins = [novel_dd, chapter_radio, t["show"]]
    shown = action(len(outs), 3)(refresh)
    for ev in after:
        ev.then(shown, ins, outs, show_progress="hidden")
    t["show"].change(shown, ins, outs, show_progress="hidden")
    t["pick"].input(shown, ins + [t["pick"]], outs)

    def act(fn, message):
        pick_chapter = "Open a novel and pick a chapter first."

        @action(len(outs), 3, lib=lib, needs=pick_chapter, chapter=pick_chapter)
        def handler(novel, cid, show, pick, text):
            pick = fn(novel, cid, pick, text)
            return refresh(novel.folder.name, cid, show, pick, ok(message))
        return handler

    def need(pick):
        if pick is None:
            raise UserError("Pick a note first.")
        return pick

    full = ins + [t["pick"], t["text"]]
    t["save"].click(act(lambda n, cid, p, x: n.thoughts.edit(need(p), x) or p, "Note saved."),
                    full, outs)
    t["add"].click(act(lambda n, cid, p, x: n.thoughts.add(cid, x), "Note added."), full, outs)
    t["delete"].click(act(lambda n, cid, p, x: n.thoughts.delete(need(p)), "Note deleted."),
                      full, outs)

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
        box.input(settings, [novel_dd, *boxes], [t["status"], t["mode"], t["every"]])


def _every_choice(every) -> gr.Dropdown:
    """The cadence as the dropdown shows it (a token count set from the CLI included)."""
    value = str(every)
    choices = EVERY if value in {v for _, v in EVERY} else [*EVERY, (f"every {value} tokens",
                                                                     value)]
    return gr.Dropdown(choices=choices, value=value)
