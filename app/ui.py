"""The Gradio UI: layout and event wiring only. Every action goes through
engine.novel (Library and Novel); nothing here knows about models."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr

from app import knn_panel, matrix_panel, memory_panel, thoughts_panel
from app.messages import USER_ERRORS, err, ok
from engine.novel import Library, NovelError, StaleText
from engine.writer import Sampling

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "style.css"
RANDOM_SEED = -1
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 120}
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


def _last_path(lib: Library) -> Path:
    return lib.root / ".last-opened.json"


def _remember(lib: Library, novel: str | None, chapter: int | None) -> None:
    try:
        _last_path(lib).write_text(json.dumps({"novel": novel, "chapter": chapter}))
    except OSError:
        pass  # remembering the last page is a courtesy, never a failure


def _recall(lib: Library) -> dict:
    try:
        return json.loads(_last_path(lib).read_text())
    except (OSError, ValueError):
        return {}


def _novel_choices(lib: Library) -> list[tuple[str, str]]:
    """(title, folder name) for the novel picker: the writer knows their books by title."""
    out = []
    for name in lib.names():
        try:
            title = lib.open(name).bible["title"] or name
        except USER_ERRORS:
            title = f"{name} (cannot be opened)"
        out.append((title if title == name else f"{title} ({name})", name))
    return out


def _chapter_choices(novel) -> list[tuple[str, int]]:
    return [(f"{c['position']}. {c['title']} ({c['words']:,} words)", c["id"])
            for c in novel.chapters()]


def seen(novel, cid) -> dict:
    """What a tab last saw of a chapter: its saves are conditional on it (StaleText)."""
    return {"rev": novel.head(cid), "text": novel.text(cid)}


def _as_shown(text: str) -> str:
    """Text as a textarea gives it back (it turns every line break into \\n)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _save(novel, cid, text, base: dict | None) -> None:
    base = base or {}
    novel.save_text(cid, text, base_rev=base.get("rev"), base_text=base.get("text"))


def _version_label(v: dict) -> str:
    """One alternative passage as the versions list names it."""
    who = {"retry": "retried", "continue": "model", "prompt": "your words"}.get(
        v["action"], v["author"])
    preview = " ".join(v["preview"].split())
    preview = f"“{preview[:70]}{'…' if len(preview) > 70 else ''}”" if preview else "(empty)"
    return f"{'▸ ' if v['current'] else ''}{who}: {preview}"


def build(lib: Library) -> gr.Blocks:
    with gr.Blocks(title="Mnemosyne") as demo:
        with gr.Row(elem_id="topbar"):
            gr.Markdown("## Mnemosyne", elem_id="brand")
            model_status = gr.Markdown(lib.model.status(), elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                novel_dd = gr.Dropdown(label="Novel", choices=_novel_choices(lib), value=None,
                                       elem_id="novel-select", interactive=True)
                with gr.Accordion("New novel", open=False,
                                  elem_id="new-novel") as new_novel_box:
                    new_title = gr.Textbox(label="Title", elem_id="new-title")
                    new_premise = gr.Textbox(label="Premise", lines=3, elem_id="new-premise")
                    new_style = gr.Textbox(label="Style notes", lines=2, elem_id="new-style")
                    new_name = gr.Textbox(label="Project folder name (optional)",
                                          placeholder="derived from the title",
                                          elem_id="new-name")
                    create_btn = gr.Button("Create novel", variant="primary",
                                           elem_id="create-novel")
                chapter_radio = gr.Radio(label="Chapters", choices=[], elem_id="chapters")
                with gr.Row():
                    add_btn = gr.Button("+ Chapter", size="sm", elem_id="add-chapter")
                    up_btn = gr.Button("↑", size="sm", elem_id="chapter-up")
                    down_btn = gr.Button("↓", size="sm", elem_id="chapter-down")
                    del_btn = gr.Button("Delete", size="sm", variant="stop",
                                        elem_id="delete-chapter")
                with gr.Row(visible=False, elem_id="confirm-delete") as confirm_row:
                    confirm_md = gr.Markdown()
                    yes_del = gr.Button("Move to trash", variant="stop", size="sm",
                                        elem_id="confirm-delete-yes")
                    no_del = gr.Button("Keep it", size="sm", elem_id="confirm-delete-no")
                with gr.Accordion("Deleted chapters", open=False, elem_id="trash"):
                    trash_dd = gr.Dropdown(label="In the trash", choices=[],
                                           elem_id="trash-list")
                    restore_btn = gr.Button("Restore", size="sm", elem_id="trash-restore")
                with gr.Row():
                    chapter_title = gr.Textbox(label="Chapter title", scale=3,
                                               elem_id="chapter-title")
                    rename_btn = gr.Button("Rename", size="sm", scale=1,
                                           elem_id="rename-chapter")
                with gr.Accordion("Import and export", open=False):
                    import_files = gr.File(label="Import .txt / .md (split on chapter headings)",
                                           file_count="multiple", file_types=[".txt", ".md"],
                                           elem_id="import-files")
                    import_btn = gr.Button("Import", size="sm", elem_id="import")
                    with gr.Row():
                        export_md = gr.Button("Export Markdown", size="sm", elem_id="export-md")
                        export_txt = gr.Button("Export text", size="sm", elem_id="export-txt")
                    export_file = gr.File(label="Download", visible=False, elem_id="export-file")
            with gr.Column(scale=3, min_width=420):
                editor = gr.Textbox(label="Chapter", lines=24, max_lines=60, elem_id="editor",
                                    placeholder="Open or create a novel, then type an opening "
                                                "and press Continue.", autoscroll=True)
                autosave_btn = gr.Button("Save", visible="hidden", elem_id="autosave")
                with gr.Row(elem_id="actions"):
                    continue_btn = gr.Button("Continue ▸", variant="primary",
                                             elem_id="continue")
                    stop_btn = gr.Button("Stop ■", variant="stop", elem_id="stop")
                    retry_btn = gr.Button("Retry ↻", elem_id="retry")
                    undo_btn = gr.Button("Undo", elem_id="undo")
                    redo_btn = gr.Button("Redo", elem_id="redo")
                versions_dd = gr.Dropdown(label="Other versions of the last passage",
                                          choices=[], visible=False, elem_id="versions")
                status = gr.Markdown("", elem_id="status")
                notes = thoughts_panel.layout()
            with gr.Column(scale=1, min_width=260):
                with gr.Accordion("Sampling", open=True):
                    temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Top-p",
                                      elem_id="top-p")
                    max_tokens = gr.Slider(8, 1024, value=120, step=8, label="Max new tokens",
                                           elem_id="max-tokens")
                    seed = gr.Number(value=RANDOM_SEED, precision=0, label="Seed (-1: random)",
                                     elem_id="seed")
                with gr.Accordion("Story bible", open=False):
                    bible_title = gr.Textbox(label="Title", elem_id="bible-title")
                    bible_premise = gr.Textbox(label="Premise", lines=4, elem_id="bible-premise")
                    bible_style = gr.Textbox(label="Style notes", lines=3, elem_id="bible-style")
                    bible_save = gr.Button("Save bible", size="sm", elem_id="bible-save")
                with gr.Accordion("Context receipt", open=False,
                                  elem_id="receipt-panel") as receipt_acc:
                    receipt_md = gr.Markdown("No Continue yet.", elem_id="receipt")
                mem = memory_panel.panel()
                knn = knn_panel.panel()
                matrix = matrix_panel.panel()
        timer = gr.Timer(2.0)
        head = gr.State(None)            # seen(): what this tab last showed (stale saves)
        pending_delete = gr.State(None)  # the chapter the delete question names
        # "ready" once the page load has filled the page in (the browser tests wait on it).
        page_ready = gr.Markdown("", visible="hidden", elem_id="page-ready")

        # -- helpers: compose updates -------------------------------------------
        view_outputs = [chapter_radio, editor, chapter_title, head, versions_dd]

        def versions_view(novel, cid):
            """The alternatives to the passage shown (a Retry keeps the one it replaced)."""
            versions = novel.versions(cid) if cid is not None else []
            if len(versions) < 2:
                return gr.Dropdown(choices=[], value=None, visible=False)
            choices = [(f"{i}. {_version_label(v)}", v["id"]) for i, v in enumerate(versions, 1)]
            current = next((v["id"] for v in versions if v["current"]), None)
            return gr.Dropdown(choices=choices, value=current, visible=True,
                               label=f"Other versions of the last passage ({len(versions)})")

        def chapter_view(name, cid):
            """(chapter list, editor, title, head revision, versions) for a chapter id."""
            if not name:
                return (gr.Radio(choices=[], value=None), gr.Textbox(value="", label="Chapter"),
                        "", None, gr.Dropdown(choices=[], value=None, visible=False))
            novel = lib.open(name)
            chapters = novel.chapters()
            ids = [c["id"] for c in chapters]
            cid = cid if cid in ids else (ids[-1] if ids else None)
            if cid is None:
                return (gr.Radio(choices=[], value=None),
                        gr.Textbox(value="", label="Chapter (add one to start)"), "", None,
                        gr.Dropdown(choices=[], value=None, visible=False))
            title = next(c["title"] for c in chapters if c["id"] == cid)
            _remember(lib, name, cid)
            return (gr.Radio(choices=_chapter_choices(novel), value=cid),
                    gr.Textbox(value=novel.text(cid), label=title, interactive=not novel.busy),
                    title, seen(novel, cid), versions_view(novel, cid))

        def bible_view(name):
            if not name:
                return "", "", ""
            b = lib.open(name).bible
            return b["title"], b["premise"], b["style"]

        def trash_view(name):
            items = lib.open(name).trash() if name else []
            return gr.Dropdown(choices=[(f"{t['title']} ({t['words']:,} words)", t["id"])
                                        for t in items], value=None,
                               label=f"In the trash ({len(items)})")

        def sampling_view(name):
            prefs = {**SAMPLING_DEFAULTS, **(lib.open(name).writing_settings() if name else {})}
            return prefs["temperature"], prefs["top_p"], prefs["max_tokens"]

        def page_view(name, cid=None, msg=""):
            """Everything the page shows for a novel (see page_outputs)."""
            return (gr.Dropdown(choices=_novel_choices(lib), value=name),
                    *chapter_view(name, cid), *bible_view(name), msg,
                    gr.Accordion(open=not lib.names()), trash_view(name), *sampling_view(name))

        def sampling(t, p, n, s):
            s = int(s) if s is not None else RANDOM_SEED
            try:  # e.g. a seed typed past 2**63 would overflow the generator mid-write
                return Sampling(temperature=t, top_p=p, max_new_tokens=int(n),
                                seed=None if s < 0 else s).validate()
            except ValueError as e:
                raise NovelError(str(e)) from e

        def flush(novel, cid, text, base):
            """Save what the editor shows before an action reads the chapter: the last
            keystrokes may still be waiting for the autosave."""
            if text is not None and not novel.busy and _as_shown(text) != _as_shown(
                    novel.text(cid)):
                _save(novel, cid, text, base)

        # -- events: novels --------------------------------------------------------
        page_outputs = [novel_dd, *view_outputs, bible_title, bible_premise, bible_style,
                        status, new_novel_box, trash_dd, temperature, top_p, max_tokens]

        def on_load():
            last = _recall(lib)
            names = lib.names()
            name = last.get("novel") if last.get("novel") in names else (
                names[0] if names else None)
            try:
                busy = bool(name) and lib.open(name).busy
                msg = "The model is still writing here; the text follows as it comes." if busy else ""
                return page_view(name, last.get("chapter"), msg)
            except USER_ERRORS as e:
                return page_view(None, None, err(e))

        loaded = demo.load(on_load, outputs=page_outputs)
        demo.load(None, js=AUTOSAVE_JS)

        def on_pick_novel(name):
            try:
                return page_view(name)[1:]
            except USER_ERRORS as e:
                return page_view(None, None, err(e))[1:]

        picked_novel = novel_dd.input(on_pick_novel, novel_dd, page_outputs[1:])

        def on_create(title, premise, style, name):
            try:
                name = lib.create(title, premise, style, name)
                lib.open(name).add_chapter("Chapter 1")
            except USER_ERRORS as e:
                return (*[gr.update()] * 9, err(e), *[gr.update()] * 9)
            return (*page_view(name, None, ok(f"Created “{title.strip()}”.")), "", "", "", "")

        created = create_btn.click(on_create, [new_title, new_premise, new_style, new_name],
                                   page_outputs + [new_title, new_premise, new_style, new_name])

        def on_save_bible(name, title, premise, style):
            try:
                lib.open(name).set_bible(title, premise, style)
                return ok("Story bible saved."), gr.Dropdown(choices=_novel_choices(lib))
            except USER_ERRORS as e:
                return err(e), gr.update()

        bible_save.click(on_save_bible, [novel_dd, bible_title, bible_premise, bible_style],
                         [status, novel_dd])

        def on_sampling(name, t, p, n):
            if name:
                try:
                    lib.open(name).set_writing_settings(temperature=t, top_p=p, max_tokens=n)
                except USER_ERRORS as e:
                    return err(e)
            return gr.update()

        for slider in (temperature, top_p, max_tokens):
            slider.input(on_sampling, [novel_dd, temperature, top_p, max_tokens], status,
                         trigger_mode="always_last", show_progress="hidden")

        # -- events: chapters ----------------------------------------------------------
        chapter_outputs = [*view_outputs, status]

        def chapter_action(fn, message):
            def handler(name, cid, *extra):
                try:
                    if not name:
                        raise NovelError("Open or create a novel first.")
                    cid = fn(lib.open(name), cid, *extra)
                    return (*chapter_view(name, cid), ok(message) if message else "")
                except USER_ERRORS as e:
                    return (*[gr.update()] * len(view_outputs), err(e))
            return handler

        def need(cid):
            if cid is None:
                raise NovelError("Pick a chapter first.")
            return cid

        def on_pick_chapter(name, cid, pending):
            # Another chapter picked: a pending delete question no longer applies. (The
            # same one, e.g. a pick processed after the Delete press that followed it,
            # keeps the question.)
            other = pending is not None and pending != cid
            return (*chapter_action(lambda n, c: c, "")(name, cid),
                    gr.Row(visible=False) if other else gr.update(),
                    None if other else pending)

        picked_chapter = chapter_radio.input(on_pick_chapter,
                                             [novel_dd, chapter_radio, pending_delete],
                                             chapter_outputs + [confirm_row, pending_delete])
        add_btn.click(chapter_action(lambda n, cid: n.add_chapter(""), "Chapter added."),
                      [novel_dd, chapter_radio], chapter_outputs)
        rename = chapter_action(lambda n, cid, t: n.rename_chapter(need(cid), t) or cid,
                                "Chapter renamed.")
        rename_btn.click(rename, [novel_dd, chapter_radio, chapter_title], chapter_outputs)
        chapter_title.submit(rename, [novel_dd, chapter_radio, chapter_title], chapter_outputs)
        up_btn.click(chapter_action(lambda n, cid: n.move_chapter(need(cid), -1) or cid, ""),
                     [novel_dd, chapter_radio], chapter_outputs)
        down_btn.click(chapter_action(lambda n, cid: n.move_chapter(need(cid), 1) or cid, ""),
                       [novel_dd, chapter_radio], chapter_outputs)

        def ask_delete(name, cid):
            if not name or cid is None:
                return gr.Row(visible=False), "", err("Pick a chapter first."), None
            title = next(c["title"] for c in lib.open(name).chapters() if c["id"] == cid)
            return (gr.Row(visible=True), f"Move **{title}** to the trash? (You can restore "
                    "it from “Deleted chapters”.)", "", cid)

        del_btn.click(ask_delete, [novel_dd, chapter_radio],
                      [confirm_row, confirm_md, status, pending_delete])

        def on_delete(name, pending):
            """Deletes the chapter the question named, whatever is selected now."""
            try:
                if not name or pending is None:
                    raise NovelError("Nothing to delete: press Delete on a chapter first.")
                novel = lib.open(name)
                title = next((c["title"] for c in novel.chapters() if c["id"] == pending), None)
                if title is None:
                    raise NovelError("That chapter is already gone.")
                novel.delete_chapter(pending)
                msg = ok(f"“{title}” moved to the trash; restore it from “Deleted chapters”.")
                return (*chapter_view(name, None), msg, gr.Row(visible=False), None,
                        trash_view(name))
            except USER_ERRORS as e:
                return (*[gr.update()] * len(view_outputs), err(e), gr.Row(visible=False), None,
                        gr.update())

        deleted = yes_del.click(on_delete, [novel_dd, pending_delete],
                                chapter_outputs + [confirm_row, pending_delete, trash_dd])
        no_del.click(lambda: (gr.Row(visible=False), None), outputs=[confirm_row, pending_delete])

        def on_restore(name, cid):
            try:
                if not name or cid is None:
                    raise NovelError("Pick a chapter in the trash first.")
                novel = lib.open(name)
                cid = novel.restore_chapter(cid)
                return (*chapter_view(name, cid), ok("Chapter restored."), trash_view(name))
            except USER_ERRORS as e:
                return (*[gr.update()] * len(view_outputs), err(e), gr.update())

        restored = restore_btn.click(on_restore, [novel_dd, trash_dd], chapter_outputs + [trash_dd])

        def on_save(name, cid, text, base):
            """The autosave: conditional on the revision this tab last saw."""
            if not name or cid is None:
                return err("Open or add a chapter first: this text is not saved yet."), *[
                    gr.update()] * 4
            novel = lib.open(name)
            try:
                _save(novel, cid, text, base)
            except StaleText as e:  # another tab or process wrote first: show theirs
                return (err(e), seen(novel, cid), gr.Textbox(value=novel.text(cid)),
                        gr.Radio(choices=_chapter_choices(novel), value=cid),
                        versions_view(novel, cid))
            except USER_ERRORS as e:
                return err(e), *[gr.update()] * 4
            return (ok("Saved."), seen(novel, cid), gr.update(),
                    gr.Radio(choices=_chapter_choices(novel), value=cid), gr.update())

        saved = autosave_btn.click(on_save, [novel_dd, chapter_radio, editor, head],
                                   [status, head, editor, chapter_radio, versions_dd],
                                   trigger_mode="always_last", show_progress="hidden")

        # -- events: writing ---------------------------------------------------------------
        gen_outputs = [editor, status, receipt_md, chapter_radio, head, versions_dd]

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
                           _receipt(ev.receipt) if fresh else gr.update(),
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
            except USER_ERRORS as e:
                message = err(e)
            receipt = (last.receipt if last is not None and last.receipt is not None
                       else novel.last_receipt)
            yield (gr.Textbox(value=novel.text(cid), interactive=True), message,
                   _receipt(receipt), gr.Radio(choices=_chapter_choices(novel), value=cid),
                   seen(novel, cid), versions_view(novel, cid))

        def start(name, cid, text, base, t, p, n, s, retry=False):
            try:
                if not name or cid is None:
                    raise NovelError("Open a novel and pick a chapter first.")
                novel = lib.open(name)
                flush(novel, cid, text, base)
                job = novel.start(cid, sampling(t, p, n, s), retry=retry)
                job.chapter_id = cid  # a page reopened mid-passage attaches to this chapter
            except StaleText as e:
                yield (gr.Textbox(value=novel.text(cid)), err(e), gr.update(),
                       gr.update(), seen(novel, cid), versions_view(novel, cid))
                return
            except USER_ERRORS as e:
                yield gr.update(), err(e), gr.update(), gr.update(), gr.update(), gr.update()
                return
            yield from watch(novel, job, cid)

        gen_inputs = [novel_dd, chapter_radio, editor, head, temperature, top_p, max_tokens, seed]
        # trigger_mode "multiple": a second press while a passage streams must reach the
        # engine and be told "already writing", not be dropped by the page.
        continued = continue_btn.click(start, gen_inputs, gen_outputs, show_progress="hidden",
                                       trigger_mode="multiple")
        retried = retry_btn.click(lambda *a: (yield from start(*a, retry=True)), gen_inputs,
                                  gen_outputs, show_progress="hidden", trigger_mode="multiple")

        def attach(name, cid):
            """A page opened while the model writes in this novel follows the passage."""
            job = lib.open(name).job if name else None
            if job is None or job.done.is_set():
                yield tuple(gr.update() for _ in gen_outputs)
                return
            job_cid = getattr(job, "chapter_id", cid)
            if job_cid != cid:
                title = next((c["title"] for c in lib.open(name).chapters()
                              if c["id"] == job_cid), "another chapter")
                yield (gr.update(), f"The model is writing in “{title}”; press Stop to halt it.",
                       *[gr.update()] * 4)
                return
            yield from watch(lib.open(name), job, cid)

        loaded.then(lambda: "ready", outputs=page_ready, show_progress="hidden")
        loaded.then(attach, [novel_dd, chapter_radio], gen_outputs, show_progress="hidden")

        def on_stop(name):
            if name and lib.open(name).busy:
                lib.open(name).stop()
                return "Stopping…"
            return "Nothing is being written."

        stop_btn.click(on_stop, novel_dd, status, concurrency_limit=None, queue=False)

        def history(verb):
            def handler(name, cid, text, base):
                try:
                    if not name:
                        raise NovelError("Open a novel first.")
                    novel = lib.open(name)
                    flush(novel, need(cid), text, base)
                    can_undo, can_redo = novel.can_undo_redo(cid)
                    if not (can_undo if verb == "undo" else can_redo):
                        return gr.update(), f"Nothing to {verb}.", *[gr.update()] * 3
                    text = getattr(novel, verb)(cid)
                    return (text, ok(f"{verb.capitalize()} done."), seen(novel, cid),
                            versions_view(novel, cid),
                            gr.Radio(choices=_chapter_choices(novel), value=cid))
                except StaleText as e:
                    return (novel.text(cid), err(e), seen(novel, cid), versions_view(novel, cid),
                            gr.update())
                except USER_ERRORS as e:
                    return gr.update(), err(e), *[gr.update()] * 3
            return handler

        history_inputs = [novel_dd, chapter_radio, editor, head]
        history_outputs = [editor, status, head, versions_dd, chapter_radio]
        undone = undo_btn.click(history("undo"), history_inputs, history_outputs)
        redone = redo_btn.click(history("redo"), history_inputs, history_outputs)

        def on_version(name, cid, rev):
            try:
                if not name or cid is None or rev is None:
                    raise NovelError("Pick a version first.")
                novel = lib.open(name)
                text = novel.switch_version(cid, rev)
                return (text, ok("Showing the version you picked; Undo and Redo go on from "
                                 "here."), seen(novel, cid), versions_view(novel, cid),
                        gr.Radio(choices=_chapter_choices(novel), value=cid))
            except USER_ERRORS as e:
                return gr.update(), err(e), *[gr.update()] * 3

        switched = versions_dd.input(on_version, [novel_dd, chapter_radio, versions_dd],
                                     history_outputs)

        # -- import / export -------------------------------------------------------------
        def on_import(name, files):
            try:
                if not name:
                    raise NovelError("Open or create a novel first.")
                if not files:
                    raise NovelError("Choose one or more .txt or .md files first.")
                novel = lib.open(name)
                paths = [f if isinstance(f, str) else f.name for f in files]
                encodings: dict = {}
                ids = novel.import_files(paths, progress=gr.Progress().tqdm,
                                         encodings=encodings)
                read = "".join(f" Read {f} as {e}." for f, e in encodings.items()
                               if e != "utf-8")
                return (*chapter_view(name, ids[-1]),
                        ok(f"Imported {len(ids)} chapter(s).{read}"))
            except USER_ERRORS as e:
                return (*[gr.update()] * len(view_outputs), err(e))

        import_btn.click(on_import, [novel_dd, import_files], chapter_outputs)

        def exporter(fmt):
            def handler(name):
                try:
                    if not name:
                        raise NovelError("Open a novel first.")
                    text = lib.open(name).export(fmt)
                    out = Path(tempfile.mkdtemp(prefix="mnemosyne-")) / f"{name}.{fmt}"
                    out.write_text(text, encoding="utf-8")
                    return gr.File(value=str(out), visible=True), ok(f"Exported {out.name}.")
                except USER_ERRORS as e:
                    return gr.File(visible=False), err(e)
            return handler

        export_md.click(exporter("md"), novel_dd, [export_file, status])
        export_txt.click(exporter("txt"), novel_dd, [export_file, status])

        timer.tick(lambda: lib.model.status(), outputs=model_status, show_progress="hidden")
        # The panels follow the novel through the events that open one, not through
        # novel_dd.change: after a page load and a "Create" raced, Gradio's dropdown kept
        # re-firing .change (a thousand panel refreshes in 100 s) and their progress
        # overlays hid every status message.
        opened = [loaded, picked_novel, created]
        memory_panel.wire(lib, mem, novel_dd, chapter_radio, editor, receipt_md, receipt_acc, opened)
        knn_panel.wire(lib, knn, novel_dd, opened)
        matrix_panel.wire(lib, matrix, novel_dd, opened)
        thoughts_panel.wire(lib, notes, novel_dd, chapter_radio,
                            [continued, retried, picked_chapter, undone, redone, switched,
                             deleted, restored, *opened])
    return demo


def _receipt(receipt: dict | None) -> str:
    if not receipt:
        return "No Continue yet."
    from engine.context import Receipt

    return Receipt(**receipt).markdown()


def css() -> str:
    return CSS_PATH.read_text() if CSS_PATH.is_file() else ""
