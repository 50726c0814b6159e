"""The "Long memory (kNN)" panel: on/off, layers, k, what is stored, rebuild.
Layout and wiring only; every action is a Novel call (engine/memory/knn_project.py)."""
from __future__ import annotations

import functools

import gradio as gr

from app.actions import action
from app.messages import ok
from app.views import name_of
from engine.memory.knn_project import layers_text


def panel() -> dict:
    k = {}
    with gr.Accordion("Long memory (kNN)", open=False, elem_id="knn-panel"):
        gr.Markdown("The model re-reads the attention keys and values of every earlier "
                    "token of the book at these layers, past its context window.",
                    elem_classes=["hint"])
        k["on"] = gr.Checkbox(label="Use long memory", value=False, elem_id="knn-on")
        k["layers"] = gr.Textbox(label="Layers (e.g. 14-29; empty: default)",
                                 elem_id="knn-layers")
        k["k"] = gr.Slider(1, 128, value=32, step=1, label="Memories per query (k)",
                           elem_id="knn-k")
        k["apply"] = gr.Button("Apply", size="sm", elem_id="knn-apply")
        k["info"] = gr.Markdown("", elem_id="knn-info")
        k["rebuild"] = gr.Button("Rebuild memory", size="sm", elem_id="knn-rebuild")
        k["status"] = gr.Markdown("", elem_id="knn-status")
    return k


def _info_line(info: dict) -> str:
    size = info["bytes"] / 2**20
    where = f"layers {layers_text(info['layers'])}" if info.get("layers") else "not built yet"
    return (f"**Stored:** {info['tokens']:,} tokens · index {info['index']} · "
            f"{size:.1f} MB on disk · {where}")


def wire(lib, k: dict, novel_dd, opened: list) -> None:
    """``opened``: the events that open a novel (the panel then shows its settings)."""
    outs = [k["on"], k["layers"], k["k"], k["info"], k["status"]]

    def view(name, msg=""):
        if not name:
            return False, "", 32, "", msg
        novel = lib.open(name)
        s = novel.knn.settings()
        return (s["on"], layers_text(s["layers"]) if s["layers"] else "", s["k"],
                _info_line(novel.knn.info()), msg)

    # On an error the panel shows the novel's settings as they are, and the message.
    act = functools.partial(action, len(outs), 4, lib=lib,
                            on_error=lambda msg, name, *rest: view(name, msg))

    @act()
    def on_apply(novel, on, layers, kk, progress=gr.Progress()):
        novel.knn.set_settings(bool(on), layers or "", int(kk))
        s = novel.knn.settings()
        where = layers_text(s["layers"]) if s["layers"] else "default layers"
        msg = f"Long memory {'on' if on else 'off'}: {where}, k {s['k']}."
        if on and novel.busy:
            msg += " It is brought up to date after the passage being written."
        elif on:  # built now, with progress, not in the middle of the next Continue
            progress(0, desc="Indexing the manuscript")
            store = novel.knn.store(lambda done, total: progress(
                done / max(1, total), desc=f"Indexing {done:,}/{total:,} tokens"))
            msg += f" {len(store):,} tokens stored."
        return view(name_of(novel), ok(msg))

    @act()
    def on_rebuild(novel, progress=gr.Progress()):
        progress(0, desc="Indexing the manuscript")
        info = novel.knn.rebuild(lambda done, total: progress(
            done / max(1, total), desc=f"Indexing {done:,}/{total:,} tokens"))
        return view(name_of(novel), ok(f"Rebuilt: {info['tokens']:,} tokens."))

    for ev in opened:
        ev.then(action(len(outs), 4)(view), novel_dd, outs)
    k["apply"].click(on_apply, [novel_dd, k["on"], k["layers"], k["k"]], outs)
    k["on"].input(on_apply, [novel_dd, k["on"], k["layers"], k["k"]], outs)
    k["rebuild"].click(on_rebuild, novel_dd, outs)
