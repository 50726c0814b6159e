"""The "Memory matrix" panel: on/off and shape, a plot of slot usage over the chapters
with pinned slots marked, pin/unpin a memory's slots, reset. Layout and wiring only;
every action is a Novel call (engine/memory/matrix_project.py)."""
from __future__ import annotations

import math

import gradio as gr

from app.messages import USER_ERRORS, err, ok

SLOTS = [1024, 2048, 4096, 8192, 16384]


def panel() -> dict:
    m = {}
    with gr.Accordion("Memory matrix", open=False, elem_id="matrix-panel"):
        gr.Markdown("A matrix inside the model that every passage is written into; the "
                    "model reads a sketch of it as extra memory tokens. Each row of the plot "
                    "is a group of slots, each column a chapter: darker means more written "
                    "there. 📌 marks slots pinned by a memory: they never change.",
                    elem_classes=["hint"])
        m["on"] = gr.Checkbox(label="Use the memory matrix", value=False, elem_id="matrix-on")
        with gr.Row():
            m["layer"] = gr.Number(label="Layer (empty: default)", precision=0,
                                   elem_id="matrix-layer")
            m["slots"] = gr.Dropdown(SLOTS, value=4096, label="Slots", elem_id="matrix-slots")
            m["rows"] = gr.Slider(8, 256, value=64, step=8, label="Memory tokens",
                                  elem_id="matrix-rows")
        m["adapter"] = gr.Textbox(label="Trained read path (optional: folder from "
                                  "'python -m engine train memory')", elem_id="matrix-adapter")
        m["apply"] = gr.Button("Apply", size="sm", elem_id="matrix-apply")
        m["info"] = gr.Markdown("", elem_id="matrix-info")
        m["plot"] = gr.HTML("", elem_id="matrix-plot")
        m["refresh"] = gr.Button("Update the plot", size="sm", elem_id="matrix-refresh")
        with gr.Row():
            m["memory"] = gr.Dropdown([], label="A memory", elem_id="matrix-memory",
                                      allow_custom_value=False)
            m["pin"] = gr.Button("Pin its slots", size="sm", elem_id="matrix-pin")
            m["unpin"] = gr.Button("Unpin", size="sm", elem_id="matrix-unpin")
        m["reset"] = gr.Button("Reset (write the manuscript again from the seed)",
                               size="sm", variant="stop", elem_id="matrix-reset")
        m["status"] = gr.Markdown("", elem_id="matrix-status")
    return m


def heatmap(usage: dict) -> str:
    """Slot groups x chapters as an HTML grid (no plotting dependency)."""
    chapters, grid = usage["chapters"], usage["usage"]
    if not chapters:
        return "<p class='hint'>Nothing written yet: a full segment (256 tokens) of the " \
               "manuscript is written at a time.</p>"
    peak = max((v for row in grid for v in row), default=0.0) or 1.0
    strength = usage["strength"]
    smax = max(strength) or 1.0
    per = usage["per_bucket"]
    head = "".join(f"<span class='mx-h'>{c}</span>" for c in chapters)
    rows = []
    for b, row in enumerate(grid):
        pinned = usage["pinned"][b]
        cells = "".join(
            f"<span class='mx-c' style='opacity:{0.06 + 0.94 * math.sqrt(v / peak):.3f}' "
            f"title='slots {b * per}-{(b + 1) * per - 1}, chapter {c}: {v:.1f} written'></span>"
            for c, v in zip(chapters, row))
        mark = f"<span class='mx-pin' title='{pinned} pinned slot(s)'>📌</span>" if pinned else ""
        bar = f"<span class='mx-s' style='width:{40 * strength[b] / smax:.0f}px' " \
              f"title='how far these slots moved from their start'></span>"
        rows.append(f"<div class='mx-r{' mx-pinned' if pinned else ''}' data-pinned='{pinned}'>"
                    f"<span class='mx-l'>{b * per}</span>{cells}{bar}{mark}</div>")
    return (f"<div class='mx' style='--cols:{len(chapters)}'><div class='mx-r mx-head'>"
            f"<span class='mx-l'>slot</span>{head}</div>{''.join(rows)}</div>")


def wire(lib, m: dict, novel_dd, opened: list) -> None:
    """``opened``: the events that open a novel (the panel then shows its matrix)."""
    outs = [m["on"], m["layer"], m["slots"], m["rows"], m["adapter"], m["info"], m["plot"],
            m["memory"], m["status"]]

    def memory_choices(novel):
        pins = novel.matrix_pins()
        return [(("📌 " if str(x["id"]) in pins else "") + f"{x['id']}: {x['text'][:70]}",
                 x["id"]) for x in novel.memories() if x["id"] is not None]

    def view(name, msg="", plot=None):
        if not name:
            return (False, None, 4096, 64, "", "", "", gr.update(choices=[], value=None), msg)
        novel = lib.open(name)
        s, i = novel.matrix_settings(), novel.matrix_info()
        info = (f"**{'On' if s['on'] else 'Off'}** · layer {s['layer'] if s['layer'] is not None else 'default'}"
                f" · {s['slots']:,} slots · {s['rows']} memory tokens · read path "
                f"{'trained adapter' if s['adapter'] else 'CountSketch'} · "
                f"{i['segments']} segments written · {i['pinned']} slots pinned")
        if i.get("notice"):
            info += f"\n\n⚠ {i['notice']}"
        return (s["on"], s["layer"], s["slots"], s["rows"], s["adapter"] or "", info,
                gr.update() if plot is None else plot,
                gr.update(choices=memory_choices(novel), value=None), msg)

    def plot_of(novel, progress):
        progress(0, desc="Writing the manuscript into the matrix")
        return heatmap(novel.matrix_usage(lambda d, t: progress(
            d / max(1, t), desc=f"Writing segment {d}/{t}")))

    def on_apply(name, on, layer, slots, rows, adapter, progress=gr.Progress()):
        if not name:
            return view(name, err("Open a novel first."))
        try:
            novel = lib.open(name)
            layer = None if layer is None or (isinstance(layer, float) and math.isnan(layer)) \
                else int(layer)
            novel.set_matrix_settings(bool(on), layer, int(slots), int(rows), adapter or "")
            plot = plot_of(novel, progress) if on else None
        except USER_ERRORS as e:
            return view(name, err(e))
        return view(name, ok(f"Memory matrix {'on' if on else 'off'}."), plot)

    def on_refresh(name, progress=gr.Progress()):
        if not name:
            return view(name, err("Open a novel first."))
        try:
            plot = plot_of(lib.open(name), progress)
        except USER_ERRORS as e:
            return view(name, err(e))
        return view(name, "", plot)

    def on_pin(name, memory_id, pin, progress=gr.Progress()):
        if not name or memory_id is None:
            return view(name, err("Choose a memory first." if name else "Open a novel first."))
        try:
            novel = lib.open(name)
            if pin:
                slots = novel.pin_matrix(memory_id)
                msg = ok(f"Memory {memory_id} now holds slots {', '.join(map(str, slots))}; "
                         "they will not change.")
            else:
                novel.unpin_matrix(memory_id)
                msg = ok(f"Memory {memory_id}'s slots are free again.")
            plot = plot_of(novel, progress)
        except USER_ERRORS as e:
            return view(name, err(e))
        return view(name, msg, plot)

    def on_reset(name, progress=gr.Progress()):
        if not name:
            return view(name, err("Open a novel first."))
        try:
            novel = lib.open(name)
            novel.reset_matrix()
            plot = plot_of(novel, progress)
        except USER_ERRORS as e:
            return view(name, err(e))
        return view(name, ok("The matrix was written again from the manuscript; pins kept."),
                    plot)

    for ev in opened:
        ev.then(view, novel_dd, outs)
    settings = [novel_dd, m["on"], m["layer"], m["slots"], m["rows"], m["adapter"]]
    m["apply"].click(on_apply, settings, outs)
    m["on"].input(on_apply, settings, outs)
    m["refresh"].click(on_refresh, novel_dd, outs)
    m["pin"].click(lambda n, x, p=gr.Progress(): on_pin(n, x, True, p), [novel_dd, m["memory"]], outs)
    m["unpin"].click(lambda n, x, p=gr.Progress(): on_pin(n, x, False, p), [novel_dd, m["memory"]],
                     outs)
    m["reset"].click(on_reset, novel_dd, outs)
