"""The Gradio UI: layout and event wiring only. Every action goes through
engine.novel (Library and Novel); nothing here knows about models."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr

from app import knn_panel, matrix_panel, memory_panel, thoughts_panel
from app.messages import USER_ERRORS, err, ok
from engine.novel import Library, NovelError
from engine.writer import Sampling

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "style.css"
RANDOM_SEED = -1


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


def _chapter_choices(novel) -> list[tuple[str, int]]:
    return [(f"{c['position']}. {c['title']} ({c['words']:,} words)", c["id"])
            for c in novel.chapters()]


def build(lib: Library) -> gr.Blocks:
    with gr.Blocks(title="Mnemosyne") as demo:
        with gr.Row(elem_id="topbar"):
            gr.Markdown("## Mnemosyne", elem_id="brand")
            model_status = gr.Markdown(lib.model.status(), elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                novel_dd = gr.Dropdown(label="Novel", choices=lib.names(), value=None,
                                       elem_id="novel-select", interactive=True)
                with gr.Accordion("New novel", open=not lib.names(),
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
                    yes_del = gr.Button("Delete for good", variant="stop", size="sm",
                                        elem_id="confirm-delete-yes")
                    no_del = gr.Button("Keep it", size="sm", elem_id="confirm-delete-no")
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
                with gr.Row(elem_id="actions"):
                    continue_btn = gr.Button("Continue ▸", variant="primary",
                                             elem_id="continue")
                    stop_btn = gr.Button("Stop ■", variant="stop", elem_id="stop")
                    retry_btn = gr.Button("Retry ↻", elem_id="retry")
                    undo_btn = gr.Button("Undo", elem_id="undo")
                    redo_btn = gr.Button("Redo", elem_id="redo")
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

        # -- helpers: compose updates -------------------------------------------
        def chapter_view(name, cid):
            """(chapter radio, editor, title) for a novel and a chapter id."""
            if not name:
                return gr.Radio(choices=[], value=None), gr.Textbox(value="", label="Chapter"), ""
            novel = lib.open(name)
            choices = _chapter_choices(novel)
            ids = [c[1] for c in choices]
            cid = cid if cid in ids else (ids[-1] if ids else None)
            if cid is None:
                return (gr.Radio(choices=[], value=None),
                        gr.Textbox(value="", label="Chapter (add one to start)"), "")
            ch = novel.store.chapter(cid)
            _remember(lib, name, cid)
            return (gr.Radio(choices=choices, value=cid),
                    gr.Textbox(value=ch["text"] or "", label=ch["title"],
                               interactive=not novel.busy), ch["title"])

        def bible_view(name):
            if not name:
                return "", "", ""
            b = lib.open(name).bible
            return b["title"], b["premise"], b["style"]

        def sampling(t, p, n, s):
            s = int(s) if s is not None else RANDOM_SEED
            return Sampling(temperature=t, top_p=p, max_new_tokens=int(n),
                            seed=None if s < 0 else s)

        # -- events: novels --------------------------------------------------------
        def on_load():
            last = _recall(lib)
            names = lib.names()
            name = last.get("novel") if last.get("novel") in names else (
                names[0] if names else None)
            try:
                view = chapter_view(name, last.get("chapter"))
            except USER_ERRORS as e:
                return (gr.Dropdown(choices=names, value=None), *chapter_view(None, None),
                        "", "", "", err(e))
            busy = name and lib.open(name).busy
            msg = "The model is still writing here; press Stop to halt it." if busy else ""
            return (gr.Dropdown(choices=names, value=name), *view, *bible_view(name), msg)

        page_outputs = [novel_dd, chapter_radio, editor, chapter_title, bible_title,
                        bible_premise, bible_style, status]
        loaded = demo.load(on_load, outputs=page_outputs)

        def on_pick_novel(name):
            try:
                return (*chapter_view(name, None), *bible_view(name), "")
            except USER_ERRORS as e:
                return (*chapter_view(None, None), "", "", "", err(e))

        picked_novel = novel_dd.input(on_pick_novel, novel_dd, page_outputs[1:])

        def on_create(title, premise, style, name):
            try:
                name = lib.create(title, premise, style, name)
                novel = lib.open(name)
                novel.add_chapter("Chapter 1")
            except USER_ERRORS as e:
                return (gr.Dropdown(), *[gr.update()] * 3, *[gr.update()] * 3, err(e),
                        *[gr.update()] * 5)
            return (gr.Dropdown(choices=lib.names(), value=name), *chapter_view(name, None),
                    *bible_view(name), ok(f"Created “{title.strip()}”."), "", "", "", "",
                    gr.Accordion(open=False))

        created = create_btn.click(on_create, [new_title, new_premise, new_style, new_name],
                         page_outputs + [new_title, new_premise, new_style, new_name,
                                         new_novel_box])

        def on_save_bible(name, title, premise, style):
            try:
                lib.open(name).set_bible(title, premise, style)
                return ok("Story bible saved.")
            except USER_ERRORS as e:
                return err(e)

        bible_save.click(on_save_bible, [novel_dd, bible_title, bible_premise, bible_style],
                         status)

        # -- events: chapters ----------------------------------------------------------
        chapter_outputs = [chapter_radio, editor, chapter_title, status]

        def chapter_action(fn, message):
            def handler(name, cid, *extra):
                try:
                    if not name:
                        raise NovelError("Open or create a novel first.")
                    novel = lib.open(name)
                    cid = fn(novel, cid, *extra)
                    return (*chapter_view(name, cid), ok(message) if message else "")
                except USER_ERRORS as e:
                    return gr.update(), gr.update(), gr.update(), err(e)
            return handler

        picked_chapter = chapter_radio.input(chapter_action(lambda n, cid: cid, ""),
                            [novel_dd, chapter_radio], chapter_outputs)
        add_btn.click(chapter_action(lambda n, cid: n.add_chapter(""), "Chapter added."),
                      [novel_dd, chapter_radio], chapter_outputs)

        def need(cid):
            if cid is None:
                raise NovelError("Pick a chapter first.")
            return cid

        rename_btn.click(chapter_action(lambda n, cid, t: n.rename_chapter(need(cid), t) or cid,
                                        "Chapter renamed."),
                         [novel_dd, chapter_radio, chapter_title], chapter_outputs)
        up_btn.click(chapter_action(lambda n, cid: n.move_chapter(need(cid), -1) or cid, ""),
                     [novel_dd, chapter_radio], chapter_outputs)
        down_btn.click(chapter_action(lambda n, cid: n.move_chapter(need(cid), 1) or cid, ""),
                       [novel_dd, chapter_radio], chapter_outputs)

        def ask_delete(name, cid):
            if not name or cid is None:
                return gr.Row(visible=False), "", err("Pick a chapter first.")
            title = lib.open(name).store.chapter(cid)["title"]
            return (gr.Row(visible=True), f"Delete **{title}** and all its history?", "")

        del_btn.click(ask_delete, [novel_dd, chapter_radio], [confirm_row, confirm_md, status])
        yes_del.click(chapter_action(lambda n, cid: n.delete_chapter(need(cid)), "Chapter deleted."),
                      [novel_dd, chapter_radio], chapter_outputs).then(
            lambda: gr.Row(visible=False), outputs=confirm_row)
        no_del.click(lambda: gr.Row(visible=False), outputs=confirm_row)

        def on_edit(name, cid, text):
            if not name or cid is None:
                return err("Open or add a chapter first: this text is not saved yet.")
            try:
                lib.open(name).save_text(cid, text)
                return ok("Saved.")
            except USER_ERRORS as e:
                return err(e)

        # Gradio's input event follows the keyboard; blur also catches a mouse paste.
        for event in (editor.input, editor.blur):
            event(on_edit, [novel_dd, chapter_radio, editor], status,
                  trigger_mode="always_last", show_progress="hidden")

        # -- events: writing ---------------------------------------------------------------
        def watch(novel, job):
            """Stream a running job's events to the editor, status and receipt."""
            last_receipt = novel.last_receipt
            for ev in job.events():
                if ev.receipt is not None:
                    last_receipt = ev.receipt
                st = ev.status
                if ev.done and ev.stats:
                    st += (f" · {ev.stats['new_tokens']} tokens at "
                           f"{ev.stats['tokens_per_s']} tok/s · seed {ev.stats['seed']}")
                # The chapter list (word counts) only changes when the passage ends.
                chapters = (gr.Radio(choices=_chapter_choices(novel)) if ev.done
                            else gr.update())
                yield (gr.Textbox(value=ev.text, interactive=ev.done),
                       ok(st) if ev.done else st, _receipt(last_receipt), chapters)

        def start(name, cid, t, p, n, s, retry=False):
            try:
                if not name or cid is None:
                    raise NovelError("Open a novel and pick a chapter first.")
                novel = lib.open(name)
                job = novel.start(cid, sampling(t, p, n, s), retry=retry)
            except USER_ERRORS as e:
                yield gr.Textbox(interactive=True), err(e), gr.update(), gr.update()
                return
            try:
                yield from watch(novel, job)
            except USER_ERRORS as e:
                yield gr.Textbox(interactive=True), err(e), gr.update(), gr.update()

        gen_inputs = [novel_dd, chapter_radio, temperature, top_p, max_tokens, seed]
        gen_outputs = [editor, status, receipt_md, chapter_radio]
        continued = continue_btn.click(start, gen_inputs, gen_outputs, show_progress="hidden")
        retried = retry_btn.click(lambda *a: (yield from start(*a, retry=True)), gen_inputs,
                                  gen_outputs, show_progress="hidden")

        def on_stop(name):
            if name:
                lib.open(name).stop()
            return "Stopping…"

        stop_btn.click(on_stop, novel_dd, status, concurrency_limit=None, queue=False)

        def history(verb):
            def handler(name, cid):
                try:
                    if not name:
                        raise NovelError("Open a novel first.")
                    novel = lib.open(name)
                    can_undo, can_redo = novel.can_undo_redo(need(cid))
                    if not (can_undo if verb == "undo" else can_redo):
                        return gr.update(), f"Nothing to {verb}."
                    return getattr(novel, verb)(cid), ok(f"{verb.capitalize()} done.")
                except USER_ERRORS as e:
                    return gr.update(), err(e)
            return handler

        undo_btn.click(history("undo"), [novel_dd, chapter_radio], [editor, status])
        redo_btn.click(history("redo"), [novel_dd, chapter_radio], [editor, status])

        # -- import / export -------------------------------------------------------------
        def on_import(name, files):
            try:
                if not name:
                    raise NovelError("Open or create a novel first.")
                if not files:
                    raise NovelError("Choose one or more .txt or .md files first.")
                novel = lib.open(name)
                paths = [f if isinstance(f, str) else f.name for f in files]
                ids = novel.import_files(paths, progress=gr.Progress().tqdm)
                return (*chapter_view(name, ids[-1]), ok(f"Imported {len(ids)} chapter(s)."))
            except USER_ERRORS as e:
                return gr.update(), gr.update(), gr.update(), err(e)

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
                            [continued, retried, picked_chapter, *opened])
    return demo


def _receipt(receipt: dict | None) -> str:
    if not receipt:
        return "No Continue yet."
    from engine.context import Receipt

    return Receipt(**receipt).markdown()


def css() -> str:
    return CSS_PATH.read_text() if CSS_PATH.is_file() else ""
