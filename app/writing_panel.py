"""The editor and the writing actions: autosave, Continue (streamed), Stop, Retry,
Undo/Redo, the versions of the last passage; the sampling settings and the context
receipt. Layout and wiring only; every action is a Novel call (engine/novel.py)."""
from __future__ import annotations

import functools

import gradio as gr

from app.actions import action, writer_message
from app.messages import err, ok
from app.views import (as_shown, chapter_list, need, receipt_markdown, save, seen,
                       versions_view)
from engine.errors import UserError
from engine.novel import StaleText
from engine.writer import Sampling

RANDOM_SEED = -1
# the sliders start at the engine's sampling defaults (chosen by bench prose), and at a
# passage shorter than its default
SAMPLING_DEFAULTS = {"temperature": Sampling.temperature, "top_p": Sampling.top_p,
                     "max_tokens": 120}
# Every change to the editor (typing, paste, cut, drop, IME) is saved by the hidden
# "autosave" button, at most ~0.8 s after the last change and at once when the editor
# loses focus: Gradio's own input event misses a mouse or Ctrl+V paste.
AUTOSAVE_JS = """
() => {
  if (window.__mnemosyneAutosave) return;
  window.__mnemosyneAutosave = true;
  let timer = null;
  const fire = () => {
    timer = null;
    const button = document.querySelector('#autosave');
    if (button) button.click();
  };
  const inEditor = (e) => e.target && e.target.closest && e.target.closest('#editor');
  document.addEventListener('input', (e) => {
    if (!inEditor(e)) return;
    clearTimeout(timer);
    timer = setTimeout(fire, 800);
  }, true);
  document.addEventListener('focusout', (e) => {
    if (inEditor(e) && timer !== null) { clearTimeout(timer); fire(); }
  }, true);
}
"""


def editor_layout() -> dict:
    """The chapter's textarea: the page's editing surface (assets/page.js draws the
    margin notes beside it and marks the model's last passage behind it)."""
    c = {}
    # lines == max_lines: Gradio never re-measures the box's height on a keystroke (on a
    # long chapter that alone cost more than a frame); editor.js follows new text.
    c["editor"] = gr.Textbox(label="Chapter", lines=24, max_lines=24, elem_id="editor",
                             placeholder="Open or create a novel, then type an opening "
                                         "and press Continue.", autoscroll=False)
    c["autosave_btn"] = gr.Button("Save", visible="hidden", elem_id="autosave")
    return c


def layout() -> dict:
    """The action bar (it stays in reach: sticky), the versions list and the status."""
    c = {}
    with gr.Row(elem_id="actions"):
        c["continue_btn"] = gr.Button("Continue ▸", variant="primary", elem_id="continue")
        c["stop_btn"] = gr.Button("Stop ■", variant="stop", elem_id="stop")
        c["retry_btn"] = gr.Button("Retry ↻", elem_id="retry")
        c["undo_btn"] = gr.Button("Undo", elem_id="undo")
        c["redo_btn"] = gr.Button("Redo", elem_id="redo")
        c["instruction"] = gr.Textbox(placeholder="An instruction for this Continue only",
                                      show_label=False, container=False, lines=1,
                                      max_lines=1, elem_id="instruction", scale=3)
    c["status"] = gr.Markdown("", elem_id="status")
    c["versions_dd"] = gr.Dropdown(label="Other versions of the last passage", choices=[],
                                   visible=False, elem_id="versions")
    return c


def sampling_layout() -> dict:
    c = {}
    with gr.Accordion("Sampling", open=True):
        c["temperature"] = gr.Slider(0.0, 2.0, value=SAMPLING_DEFAULTS["temperature"], step=0.05,
                                     label="Temperature",
                                     elem_id="temperature")
        c["top_p"] = gr.Slider(0.05, 1.0, value=SAMPLING_DEFAULTS["top_p"], step=0.01,
                               label="Top-p",
                               elem_id="top-p")
        c["max_tokens"] = gr.Slider(8, 1024, value=120, step=8, label="Max new tokens",
                                    elem_id="max-tokens")
        c["seed"] = gr.Number(value=RANDOM_SEED, precision=0, label="Seed (-1: random)",
                              elem_id="seed")
    return c


def receipt_layout() -> dict:
    c = {}
    with gr.Accordion("Context receipt", open=False, elem_id="receipt-panel") as c["receipt_acc"]:
        c["receipt_md"] = gr.Markdown("No Continue yet.", elem_id="receipt")
    return c


def sampling_view(novel):
    """(temperature, top-p, max tokens) as the novel keeps them (None: the defaults)."""
    kept = novel.settings.get("writing").to_dict() if novel is not None else {}
    prefs = {**SAMPLING_DEFAULTS, **{k: v for k, v in kept.items() if v is not None}}
    return prefs["temperature"], prefs["top_p"], prefs["max_tokens"]


def sampling(t, p, n, s) -> Sampling:
    s = int(s) if s is not None else RANDOM_SEED
    try:  # e.g. a seed typed past 2**63 would overflow the generator mid-write
        return Sampling(temperature=t, top_p=p, max_new_tokens=int(n),
                        seed=None if s < 0 else s).validate()
    except ValueError as e:
        raise UserError(str(e)) from e


def flush(novel, cid, text, base) -> None:
    """Save what the editor shows before an action reads the chapter: the last
    keystrokes may still be waiting for the autosave."""
    if text is not None and not novel.busy and as_shown(text) != as_shown(novel.chapters.text(cid)):
        save(novel, cid, text, base)


def wire(lib, c: dict, loaded) -> dict:
    """Events of the editor and its actions; ``loaded``: the page load (a page opened
    mid-passage follows it). Returns the events after which the margin notes follow."""
    act = functools.partial(action, lib=lib)
    novel_dd, chapter_radio, editor, status = (c["novel_dd"], c["chapter_radio"], c["editor"],
                                               c["status"])

    def on_sampling(novel, t, p, n):
        if novel is not None:
            novel.settings.set("writing", temperature=t, top_p=p, max_tokens=n)
        return gr.update()

    for slider in (c["temperature"], c["top_p"], c["max_tokens"]):
        slider.input(act(1, needs=None)(on_sampling),
                     [novel_dd, c["temperature"], c["top_p"], c["max_tokens"]], status,
                     trigger_mode="always_last", show_progress="hidden")

    not_saved = "Open or add a chapter first: this text is not saved yet."

    @act(5, 0, needs=not_saved, chapter=not_saved)
    def on_save(novel, cid, text, base):
        """The autosave: conditional on the revision this tab last saw."""
        try:
            save(novel, cid, text, base)
        except StaleText as e:  # another tab or process wrote first: show theirs
            return (err(e), seen(novel, cid), gr.Textbox(value=novel.chapters.text(cid)),
                    chapter_list(novel, cid), versions_view(novel, cid))
        # saved-N: how long the saved text is (the page's sanitizer keeps classes only), so
        # a page or a test can tell which save this was: the words are the same each time
        saved = f"<span class='ok saved-{len(as_shown(text))}'>Saved.</span>"
        return saved, seen(novel, cid), gr.update(), chapter_list(novel, cid), gr.update()

    saved = c["autosave_btn"].click(on_save, [novel_dd, chapter_radio, editor, c["head"]],
                            [status, c["head"], editor, chapter_radio, c["versions_dd"]],
                            trigger_mode="always_last", show_progress="hidden")

    # -- Continue / Retry: streamed -------------------------------------------------
    gen_outputs = [editor, status, c["receipt_md"], chapter_radio, c["head"], c["versions_dd"]]

    def watch(novel, job, cid):
        """Stream a running job's events to the page. The status is sent only when
        it changes, so a message such as "press Stop first" stays readable."""
        shown_status, shown_receipt, last = None, None, None
        try:
            for ev in job.events():
                last = ev
                if ev.done:
                    break
                fresh = ev.receipt is not None and ev.receipt is not shown_receipt
                yield (gr.Textbox(value=ev.text, interactive=False),
                       ev.status if ev.status != shown_status else gr.update(),
                       receipt_markdown(ev.receipt) if fresh else gr.update(),
                       *[gr.update()] * 3)
                shown_status = ev.status
                shown_receipt = ev.receipt if fresh else shown_receipt
            message = ""
            if last is not None and last.done:
                message = last.status
                if last.stats:
                    message += (f" · {last.stats['new_tokens']} tokens at "
                                f"{last.stats['tokens_per_s']} tok/s · seed "
                                f"{last.stats['seed']}")
                message = ok(message)
        except Exception as e:  # noqa: BLE001 - the editor is given back whatever failed
            message = writer_message(e, "Continue")
        receipt = (last.receipt if last is not None and last.receipt is not None
                   else novel.last_receipt)
        yield (gr.Textbox(value=novel.chapters.text(cid), interactive=True), message,
               receipt_markdown(receipt), chapter_list(novel, cid), seen(novel, cid),
               versions_view(novel, cid))

    def starter(retry: bool):
        pick = "Open a novel and pick a chapter first."

        @act(len(gen_outputs), 1, needs=pick, chapter=pick)
        def start(novel, cid, text, base, t, p, n, s, instruction=""):
            try:
                flush(novel, cid, text, base)
                chosen = sampling(t, p, n, s)
                # the instruction is read by this Continue only (never saved as a note)
                job = novel.start(cid, chosen, retry=retry,
                                  instruction="" if retry else instruction or "")
            except StaleText as e:
                yield (gr.Textbox(value=novel.chapters.text(cid)), err(e), gr.update(),
                       gr.update(), seen(novel, cid), versions_view(novel, cid))
                return
            yield from watch(novel, job, cid)
        return start

    gen_inputs = [novel_dd, chapter_radio, editor, c["head"], c["temperature"], c["top_p"],
                  c["max_tokens"], c["seed"], c["instruction"]]
    # trigger_mode "multiple": a second press while a passage streams must reach the
    # engine and be told "already writing", not be dropped by the page.
    continued = c["continue_btn"].click(starter(False), gen_inputs, gen_outputs,
                                        show_progress="hidden", trigger_mode="multiple")
    retried = c["retry_btn"].click(starter(True), gen_inputs, gen_outputs,
                                   show_progress="hidden", trigger_mode="multiple")
    # Enter in the instruction box continues too; the box is emptied once it has
    submitted = c["instruction"].submit(starter(False), gen_inputs, gen_outputs,
                                        show_progress="hidden", trigger_mode="multiple")
    for ev in (continued, submitted):
        ev.then(lambda: "", None, c["instruction"], show_progress="hidden")

    @act(len(gen_outputs), 1, needs=None)
    def attach(novel, cid):
        """A page opened while the model writes in this novel follows the passage."""
        job = novel.job if novel is not None else None
        if job is None or job.done.is_set():
            yield tuple(gr.update() for _ in gen_outputs)
            return
        job_cid = novel.writing_chapter  # None: it is just ending; follow it to the end
        if job_cid is not None and job_cid != cid:
            title = next((ch["title"] for ch in novel.chapters.list() if ch["id"] == job_cid),
                         "another chapter")
            yield (gr.update(), f"The model is writing in “{title}”; press Stop to halt it.",
                   *[gr.update()] * 4)
            return
        yield from watch(novel, job, cid)

    loaded.then(attach, [novel_dd, chapter_radio], gen_outputs, show_progress="hidden")

    @act(1, needs=None)
    def on_stop(novel):
        if novel is not None and novel.busy:
            novel.stop()
            return "Stopping…"
        return "Nothing is being written."

    c["stop_btn"].click(on_stop, novel_dd, status, concurrency_limit=None, queue=False)

    # -- Undo / Redo / versions ----------------------------------------------------------
    history_outputs = [editor, status, c["head"], c["versions_dd"], chapter_radio]

    def history(verb):
        @act(len(history_outputs), 1)
        def handler(novel, cid, text, base):
            try:
                flush(novel, need(cid), text, base)
                can_undo, can_redo = novel.chapters.can_undo_redo(cid)
                if not (can_undo if verb == "undo" else can_redo):
                    return gr.update(), f"Nothing to {verb}.", *[gr.update()] * 3
                text = getattr(novel.chapters, verb)(cid)
                return (text, ok(f"{verb.capitalize()} done."), seen(novel, cid),
                        versions_view(novel, cid), chapter_list(novel, cid))
            except StaleText as e:
                return (novel.chapters.text(cid), err(e), seen(novel, cid), versions_view(novel, cid),
                        gr.update())
        return handler

    history_inputs = [novel_dd, chapter_radio, editor, c["head"]]
    undone = c["undo_btn"].click(history("undo"), history_inputs, history_outputs)
    redone = c["redo_btn"].click(history("redo"), history_inputs, history_outputs)

    pick_version = "Pick a version first."

    @act(len(history_outputs), 1, needs=pick_version, chapter=pick_version)
    def on_version(novel, cid, rev):
        if rev is None:
            raise UserError(pick_version)
        text = novel.chapters.switch_version(cid, rev)
        return (text, ok("Showing the version you picked; Undo and Redo go on from here."),
                seen(novel, cid), versions_view(novel, cid), chapter_list(novel, cid))

    switched = c["versions_dd"].input(on_version, [novel_dd, chapter_radio, c["versions_dd"]],
                                      history_outputs)
    return {"continued": continued, "submitted": submitted, "retried": retried,
            "undone": undone, "redone": redone,
            "switched": switched, "saved": saved}
