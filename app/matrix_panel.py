"""The "Memory matrix" panel: on/off and shape, which chapters wrote most into the
matrix and which memories hold pinned slots, pin/unpin a memory's slots, reset; the
plot of slot usage over the chapters behind "Engineering details". Layout and wiring
only; every action is a Novel call (engine/memory/matrix_project.py)."""
from __future__ import annotations

import functools
import html
import math

import gradio as gr

from app.actions import action
from app.memory_panel import chapter_name
from app.messages import ok
from app.views import name_of
from engine.errors import UserError

SLOTS = [1024, 2048, 4096, 8192, 16384]
TOP_CHAPTERS = 8  # the summary names the chapters that wrote most; the rest are counted


def panel() -> dict:
    m = {}
    with gr.Accordion("Memory matrix", open=False, elem_id="matrix-panel"):
        gr.Markdown("A matrix inside the model that every passage is written into; the "
                    "model reads a sketch of it as extra memory tokens. Below: which "
                    "chapters wrote most into it, and which memories hold pinned slots "
                    "(those never change).", elem_classes=["hint"])
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
        m["summary"] = gr.HTML("", elem_id="matrix-summary")
        m["refresh"] = gr.Button("Update", size="sm", elem_id="matrix-refresh")
        with gr.Row():
            m["memory"] = gr.Dropdown([], label="A memory", elem_id="matrix-memory",
                                      allow_custom_value=False)
            m["pin"] = gr.Button("Pin its slots", size="sm", elem_id="matrix-pin")
            m["unpin"] = gr.Button("Unpin", size="sm", elem_id="matrix-unpin")
        m["reset"] = gr.Button("Reset (write the manuscript again from the seed)",
                               size="sm", variant="stop", elem_id="matrix-reset")
        m["status"] = gr.Markdown("", elem_id="matrix-status")
        with gr.Accordion("Engineering details", open=False, elem_id="matrix-details"):
            gr.Markdown("Slot usage: each row is a group of slots, each column a chapter "
                        "(by its number); darker means more written there. The grey bar: "
                        "how far the group moved from its start. 📌 marks pinned slots.",
                        elem_classes=["hint"])
            m["plot"] = gr.HTML("", elem_id="matrix-plot")
    return m


def summary(usage: dict, chapters: list[dict], pins: dict, memories: dict) -> str:
    """What a writer can use of the matrix: the chapters that wrote most into it (share
    of all that was written, best first) and the memories holding pinned slots."""
    if not usage["chapters"]:
        return ("<p class='hint'>Nothing written yet: the manuscript is written in a "
                "full segment (256 tokens) at a time.</p>")
    names = {c["position"]: chapter_name(c["position"], c["title"]) for c in chapters}
    totals = [sum(col) for col in zip(*usage["usage"])] or [0.0] * len(usage["chapters"])
    whole = sum(totals) or 1.0
    ranked = sorted(zip(usage["chapters"], totals), key=lambda x: -x[1])
    rows = "".join(
        f"<tr><td class='mx-ch'>{html.escape(names.get(pos, f'Chapter {pos}'))}</td>"
        f"<td class='mx-bar'><span style='width:{100 * t / ranked[0][1]:.0f}%'></span></td>"
        f"<td class='mx-pc'>{100 * t / whole:.0f}%</td></tr>"
        for pos, t in ranked[:TOP_CHAPTERS] if ranked[0][1] > 0)
    more = len(ranked) - TOP_CHAPTERS
    out = ["<div class='mx-sum'><p><b>Written into the matrix</b>, by chapter "
           "(share of all that was written):</p>",
           f"<table class='mx-chapters'>{rows}</table>"]
    if more > 0:
        out.append(f"<p class='hint'>and {more} more chapter{'s' if more > 1 else ''}, "
                   "each less.</p>")
    slots = usage["per_bucket"] * len(usage["pinned"])
    if pins:
        items = "".join(
            f"<li data-memory='{int(mid)}'>📌 "
            f"“{html.escape(_cut(memories.get(str(mid), '')))}” holds {len(s)} "
            f"slot{'s' if len(s) != 1 else ''}: {', '.join(str(int(x)) for x in sorted(s))}"
            "</li>" for mid, s in sorted(pins.items(), key=lambda x: int(x[0])))
        held = sum(len(s) for s in pins.values())
        out.append(f"<p><b>Pinned</b> ({held} of {slots:,} slots; they never change):</p>"
                   f"<ul class='mx-pins'>{items}</ul>")
    else:
        out.append("<p class='hint'>No memory holds pinned slots: pin one below and what "
                   "it says stays in the matrix unchanged.</p>")
    out.append("</div>")
    return "".join(out)


def _cut(text: str, limit: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + "…"


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
    outs = [m["on"], m["layer"], m["slots"], m["rows"], m["adapter"], m["info"], m["summary"],
            m["plot"], m["memory"], m["status"]]

    def memory_choices(novel):
        pins = novel.matrix.pins()
        return [(("📌 " if str(x["id"]) in pins else "") + f"“{_cut(x['text'])}”", x["id"])
                for x in novel.memories.list() if x["id"] is not None]

    def view(name, msg="", plot=None):
        if not name:
            return (False, None, 4096, 64, "", "", "", "", gr.update(choices=[], value=None),
                    msg)
        novel = lib.open(name)
        s, i = novel.matrix.settings(), novel.matrix.info()
        info = (f"**{'On' if s['on'] else 'Off'}** · layer {s['layer'] if s['layer'] is not None else 'default'}"
                f" · {s['slots']:,} slots · {s['rows']} memory tokens · read path "
                f"{'trained adapter' if s['adapter'] else 'CountSketch'} · "
                f"{i['segments']} segments written · {i['pinned']} slots pinned")
        if i.get("notice"):
            info += f"\n\n⚠ {i['notice']}"
        shown = (gr.update(), gr.update()) if plot is None else plot
        return (s["on"], s["layer"], s["slots"], s["rows"], s["adapter"] or "", info,
                *shown, gr.update(choices=memory_choices(novel), value=None), msg)

    def plot_of(novel, progress):
        """(the writer's summary, the engineering plot) of the matrix as it is now."""
        progress(0, desc="Writing the manuscript into the matrix")
        usage = novel.matrix.usage(lambda d, t: progress(
            d / max(1, t), desc=f"Writing segment {d}/{t}"))
        texts = {str(x["id"]): x["text"] for x in novel.memories.list() if x["id"] is not None}
        return (summary(usage, novel.chapters.list(), novel.matrix.pins(), texts),
                heatmap(usage))

    # On an error the panel shows the novel's matrix as it is, and the message.
    act = functools.partial(action, len(outs), len(outs) - 1, lib=lib,
                            on_error=lambda msg, name, *rest: view(name, msg))

    @act()
    def on_apply(novel, on, layer, slots, rows, adapter, progress=gr.Progress()):
        layer = None if layer is None or (isinstance(layer, float) and math.isnan(layer)) \
            else int(layer)
        novel.matrix.set_settings(bool(on), layer, int(slots), int(rows), adapter or "")
        plot = plot_of(novel, progress) if on else None
        return view(name_of(novel), ok(f"Memory matrix {'on' if on else 'off'}."), plot)

    @act()
    def on_refresh(novel, progress=gr.Progress()):
        return view(name_of(novel), "", plot_of(novel, progress))

    def pinner(pin: bool):
        @act()
        def on_pin(novel, memory_id, progress=gr.Progress()):
            if memory_id is None:
                raise UserError("Choose a memory first.")
            what = html.escape(f"“{_cut(novel.memories.get(memory_id)['text'], 50)}”")
            if pin:
                slots = novel.matrix.pin(memory_id)
                msg = ok(f"{what} now holds slots {', '.join(map(str, sorted(slots)))}; "
                         "they will not change.")
            else:
                novel.matrix.unpin(memory_id)
                msg = ok(f"{what} no longer holds slots: they are free again.")
            return view(name_of(novel), msg, plot_of(novel, progress))
        return on_pin

    @act()
    def on_reset(novel, progress=gr.Progress()):
        novel.matrix.reset()
        return view(name_of(novel), ok("The matrix was written again from the manuscript; "
                                       "pins kept."), plot_of(novel, progress))

    for ev in opened:
        ev.then(action(len(outs), len(outs) - 1)(view), novel_dd, outs)
    settings = [novel_dd, m["on"], m["layer"], m["slots"], m["rows"], m["adapter"]]
    m["apply"].click(on_apply, settings, outs)
    m["on"].input(on_apply, settings, outs)
    m["refresh"].click(on_refresh, novel_dd, outs)
    m["pin"].click(pinner(True), [novel_dd, m["memory"]], outs)
    m["unpin"].click(pinner(False), [novel_dd, m["memory"]], outs)
    m["reset"].click(on_reset, novel_dd, outs)
