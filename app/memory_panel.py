"""The "Memories" panel: the writer's facts, search over everything the novel remembers
(facts, passages, margin notes), pin/unpin, edit, delete, preview the next context.
Layout and wiring only; every action is a Novel call (engine/novel.py)."""
from __future__ import annotations

import re

import gradio as gr

from app.actions import action
from app.messages import ok
from app.views import receipt_markdown
from engine.errors import UserError

PREVIEW_CHARS = 90
# The list shows the writer's facts first, then passages of the book, then margin notes.
GROUPS = {"fact": 0, "passage": 1, "thought": 2}
NOUNS = {"fact": "Fact", "passage": "Passage", "thought": "Note"}
_KEY = re.compile(r"(passage|thought):(\d+)")


def panel() -> dict:
    """Layout of the Memories accordion; returns its components by name."""
    m = {}
    with gr.Accordion("Memories", open=False, elem_id="memories"):
        with gr.Row():
            m["query"] = gr.Textbox(label="Search memories", scale=3, elem_id="memory-search",
                                    placeholder="a word, a name, or what it was about")
            m["search"] = gr.Button("Search", size="sm", scale=1, elem_id="memory-search-btn")
        m["list"] = gr.Radio(label="Memories (📌 pinned)", choices=[], elem_id="memory-list")
        m["text"] = gr.Textbox(label="Selected memory", lines=2, elem_id="memory-text")
        with gr.Row():
            m["pin"] = gr.Button("Pin", size="sm", elem_id="memory-pin")
            m["unpin"] = gr.Button("Unpin", size="sm", elem_id="memory-unpin")
            m["save"] = gr.Button("Save edit", size="sm", elem_id="memory-save")
            m["delete"] = gr.Button("Delete", size="sm", variant="stop", elem_id="memory-delete")
        m["new"] = gr.Textbox(label="New fact", lines=2, elem_id="memory-new",
                              placeholder="Elena's eyes are grey; she never learned to swim.")
        with gr.Row():
            m["new_pin"] = gr.Checkbox(label="Pin it", value=True, elem_id="memory-new-pin")
            m["add"] = gr.Button("Add fact", size="sm", elem_id="memory-add")
        m["pin_sel"] = gr.Button("Pin the text selected in the chapter", size="sm",
                                 elem_id="pin-selection")
        m["preview"] = gr.Button("Preview context", size="sm", elem_id="preview-context")
        m["status"] = gr.Markdown("", elem_id="memory-status")
        m["selection"] = gr.State("")
    return m


def chapter_name(position: int, title: str) -> str:
    """'Chapter 3 “The Storm”', or the title alone when it already says 'Chapter 3'."""
    title = (title or "").strip()
    if not title:
        return f"Chapter {position}"
    if title.lower() == f"chapter {position}":
        return title
    return f"Chapter {position} “{title}”"


def _chapters_of(novel, keys) -> dict[str, str]:
    """{'passage:ID…' | 'thought:ID': chapter name} for the keys that name one."""
    ids = {"passage": set(), "thought": set()}
    for k in keys:
        if k and (hit := _KEY.match(k)):
            ids[hit.group(1)].add(int(hit.group(2)))
    names = {}
    for kind, table in (("passage", novel.store.passages), ("thought", novel.store.thoughts)):
        if not ids[kind]:
            continue
        for rid, r in table.chapters_of(ids[kind]).items():
            names[f"{kind}:{rid}"] = chapter_name(r["position"], r["title"])
    return names


def choices(novel, query: str = "") -> list[tuple[str, str]]:
    """(label, key) of the list: facts first, then passages, then margin notes, each
    named by what it is and where it is in the book; the keys stay the values."""
    rows = novel.memories.list(query or None)
    where = _chapters_of(novel, [r["key"] for r in rows] + [r.get("source") for r in rows])

    def kind(r):  # a kept passage or note counts as what it was
        k = r["key"].split(":")[0]
        if k == "memory":
            return r["kind"] if r["kind"] in GROUPS else "fact"
        return k if k in GROUPS else "fact"

    def chapter(r):
        for ref in (r["key"], r.get("source") or ""):
            if hit := _KEY.match(ref):
                if (name := where.get(hit.group(0))) is not None:
                    return name
        return None

    out = []
    for r in sorted(rows, key=lambda r: GROUPS[kind(r)]):  # stable: order kept per group
        noun, ch = NOUNS[kind(r)], chapter(r)
        head = f"{noun} in {ch}" if ch else noun
        text = " ".join(r["text"].split())
        cut = text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else "")
        out.append((f"{'📌 ' if r['pinned'] else ''}{head}: {cut}", r["key"]))
    return out


def wire(lib, m, novel_dd, chapter_radio, editor, receipt_md, receipt_acc,
         opened: list) -> None:
    """Events of the memory panel: each one is a Novel call and a refreshed list;
    ``opened``: the events that open a novel."""
    outs = [m["list"], m["text"], m["status"]]
    shows = action(len(outs), 2, lib=lib, needs=None)  # the list as it is, None: empty

    def listing(novel, query, key=None, msg=""):
        if novel is None:
            return gr.Radio(choices=[], value=None), "", msg
        found = choices(novel, query)
        key = key if key in [c[1] for c in found] else None
        if not key:
            text = ""
        elif key.startswith("memory:"):
            text = novel.memories.get(key)["text"]
        else:
            text = novel.memories.semantic.text_of(key) or ""
        return gr.Radio(choices=found, value=key), text, msg

    def change(fn, message):
        @action(len(outs), 2, lib=lib)
        def handler(novel, query, key, text, *extra):
            new = fn(novel, key, text, *extra)  # None: the same memory stays selected,
            key = key if new is None else new    # "": none (it was deleted)
            return listing(novel, query, key, ok(message))
        return handler

    def need(key):
        if not key:
            raise UserError("Pick a memory in the list first.")
        return key

    def add(novel, key, text, new, pin):
        return f"memory:{novel.memories.add(new, pin=bool(pin))}"

    base = [novel_dd, m["query"], m["list"], m["text"]]
    m["pin"].click(change(lambda n, k, t: f"memory:{n.memories.pin(need(k))}", "Pinned: it will "
                          "always be in the context."), base, outs)
    m["unpin"].click(change(lambda n, k, t: f"memory:{n.memories.unpin(need(k))}", "Unpinned."),
                     base, outs)
    m["save"].click(change(lambda n, k, t: n.memories.edit(need(k), t), "Memory saved."),
                    base, outs)
    m["delete"].click(change(lambda n, k, t: n.memories.delete(need(k)) or "", "Memory deleted."),
                      base, outs)
    m["add"].click(change(add, "Fact added."), base + [m["new"], m["new_pin"]], outs).then(
        lambda st: "" if "class='ok'" in (st or "") else gr.update(), m["status"], m["new"])
    m["pin_sel"].click(change(lambda n, k, t, cid, sel: f"memory:{n.memories.pin_sentence(sel, cid)}",
                              "Selected text pinned."),
                       base + [chapter_radio, m["selection"]], outs)

    def on_select(evt: gr.SelectData):
        return evt.value if isinstance(evt.value, str) else ""

    editor.select(on_select, None, m["selection"])

    refresh = shows(lambda novel, query: listing(novel, query))
    for ev in opened:
        ev.then(refresh, [novel_dd, m["query"]], outs)
    m["search"].click(refresh, [novel_dd, m["query"]], outs)
    m["query"].submit(refresh, [novel_dd, m["query"]], outs)
    m["list"].input(shows(lambda novel, q, key: listing(novel, q, key)),
                    [novel_dd, m["query"], m["list"]], outs)

    pick = "Open a novel and pick a chapter first."

    @action(3, 2, lib=lib, needs=pick, chapter=pick)
    def preview(novel, cid):
        receipt = novel.preview_context(cid)
        return (receipt_markdown(receipt), gr.Accordion(open=True),
                ok("The next Continue reads this context."))

    m["preview"].click(preview, [novel_dd, chapter_radio], [receipt_md, receipt_acc,
                                                            m["status"]])
