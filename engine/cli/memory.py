"""The memories' subcommands: memory (facts, pins, recall, links), thoughts (margin
notes), knn (the long memory read inside attention) and matrix (the in-model memory
matrix)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..score import int_in
from ..settings import KNN, Matrix, add_flags
from .common import _model_arg, _slot


def _memory_ref(ref: str, keys: bool = False) -> str:
    """A memory id ('3' or 'memory:3'), or with ``keys`` a passage/thought key too."""
    r = (ref or "").strip()
    if r.removeprefix("memory:").isdigit():
        return r
    if keys and r.startswith(("passage:", "thought:")):
        return r
    raise ValueError(f"'{ref}' is not a memory id; see 'memory list'.")


def cmd_memory(args) -> int:
    from ..novel import Novel

    novel = Novel.open(Path(args.project))
    act = args.action
    if act in ("list", "search"):
        if act == "search" and not (args.query or "").strip():
            raise ValueError("search needs a query: memory search 'what to look for'")
        rows = novel.memories.list(args.query, limit=args.limit)
        if args.json:
            print(json.dumps([{k: m[k] for k in ("id", "key", "kind", "pinned", "text", "score")}
                              for m in rows]))
            return 0
        for m in rows:
            score = f"{m['score']:.2f}" if m["score"] is not None else "    "
            print(f"{m['key']:<16} {'📌' if m['pinned'] else '  '} {m['kind']:<10} {score} "
                  f"{m['text'][:100]}")
        return 0
    if act == "add":
        mid = novel.memories.add(" ".join(args.text), pin=args.pin)
        print(f"Added memory {mid}{' (pinned)' if args.pin else ''}.")
    elif act in ("pin", "unpin"):
        mid = getattr(novel.memories, act)(_memory_ref(args.ref, keys=act == "pin"))
        print(f"Memory {mid} {act}ned.")
    elif act == "edit":
        novel.memories.edit(_memory_ref(args.ref), " ".join(args.text))
        print(f"Memory {args.ref} edited.")
    elif act == "delete":
        novel.memories.delete(_memory_ref(args.ref))
        print(f"Memory {args.ref} deleted.")
    elif act == "link":
        novel.memories.link(args.a, args.b)
        print(f"Linked {args.a} and {args.b}.")
    elif act == "rebuild":
        stats = novel.memories.rebuild()
        print(f"Rebuilt semantic memory: {stats['items']} items embedded.")
    return 0


def cmd_matrix(args) -> int:
    from ..novel import Novel

    novel = Novel.open(Path(args.project), _slot(args))
    act = args.action
    if act in ("pin", "unpin") and args.ref:
        args.ref = _memory_ref(args.ref)
    if act in ("on", "set") and (args.layer is not None or args.adapter):
        novel.model.get()  # the layer is checked against the model, the adapter loaded
    if act in ("on", "off", "set"):
        on = act == "on" or (act == "set" and novel.matrix.settings()["on"])
        novel.matrix.set_settings(on, args.layer, args.slots, args.rows, args.adapter)
    elif act in ("pin", "unpin") and not args.ref:
        raise ValueError(f"{act} needs a memory id: matrix {act} 3")
    elif act == "pin":
        print(f"Memory {args.ref}: slots {novel.matrix.pin(args.ref)} pinned.")
    elif act == "unpin":
        novel.matrix.unpin(args.ref)
        print(f"Memory {args.ref}: slots unpinned.")
    elif act == "reset":
        novel.matrix.reset()
    if act in ("usage", "reset") or (act == "show" and novel.matrix.settings()["on"]):
        usage = novel.matrix.usage(progress=_bar("memory matrix") if not args.json else None)
    else:
        usage = None
    out = {"settings": novel.matrix.settings(), "info": novel.matrix.info(),
           "pins": novel.matrix.pins(), **({"usage": usage} if act == "usage" else {})}
    if args.json:
        print(json.dumps(out))
    else:
        s, i = out["settings"], out["info"]
        print(f"memory matrix {'on' if s['on'] else 'off'}: layer {s['layer']}, {s['slots']} "
              f"slots, {s['rows']} memory tokens, adapter {s['adapter'] or 'none (CountSketch)'}")
        print(f"  {i['segments']} segments written, {i['pinned']} slots pinned"
              + (f"; {i['notice']}" if i.get("notice") else ""))
        if usage:
            print(f"  chapters {usage['chapters']}; slot groups of {usage['per_bucket']}")
    return 0


def cmd_knn(args) -> int:
    """What the memory panel's kNN part does: show, on, off, set (--layers, --k),
    rebuild (with a progress bar on a terminal, none with --json)."""
    from ..novel import Novel

    novel = Novel.open(Path(args.project), _slot(args))
    act = args.action
    if act == "set" and args.layers is None and args.k is None:
        raise ValueError("knn set needs --layers or --k, e.g. knn set --k 8")
    if act in ("on", "set") and args.layers not in (None, ""):
        novel.model.get()  # the layers are checked against the model's depth
    if act in ("on", "off", "set"):
        novel.knn.set_settings(on=None if act == "set" else act == "on", layers=args.layers,
                               k=args.k)
    elif act == "rebuild":
        novel.knn.rebuild(progress=None if args.json else _bar("kNN memory"))
    out = {"settings": novel.knn.settings(), "info": novel.knn.info()}
    if args.json:
        print(json.dumps(out))
        return 0
    s, i = out["settings"], out["info"]
    layers = ",".join(map(str, s["layers"])) if s["layers"] else "the model's default"
    print(f"kNN memory {'on' if s['on'] else 'off'}: layers {layers}, k {s['k']}")
    print(f"  {i['tokens']:,} tokens stored ({i['index']} index, {i['bytes']:,} bytes)"
          + ("; rebuilt" if act == "rebuild" else ""))
    return 0


def _bar(desc):
    """A progress callable(done, total) drawing a tqdm bar on stderr."""
    from tqdm.auto import tqdm
    bar = {}

    def report(done, total):
        if "b" not in bar:
            bar["b"] = tqdm(total=total, desc=desc, leave=False)
        bar["b"].n = done
        bar["b"].refresh()
        if done >= total:
            bar.pop("b").close()
    return report


def cmd_thoughts(args) -> int:
    from ..novel import Novel

    args.text = " ".join(args.text)
    novel = Novel.open(Path(args.project))
    if args.action == "list":
        rows = novel.thoughts.list(novel.chapters.id(args.chapter) if args.chapter else None)
        if args.json:
            print(json.dumps([{k: r[k] for k in ("id", "chapter_id", "anchor", "text")}
                              for r in rows]))
        else:
            for r in rows:
                print(f"{r['id']:>5}  ch {r['chapter_id']:<4} @{r['anchor']:<7} {r['text']}")
        return 0
    if args.action == "add":
        if not args.text:
            raise ValueError("thoughts add needs the text of the note.")
        tid = novel.thoughts.add(novel.chapters.id(args.chapter), args.text, args.anchor)
        print(f"Added thought {tid}.")
    elif args.action == "edit":
        if args.id is None or not args.text:
            raise ValueError("thoughts edit needs --id and the new text.")
        novel.thoughts.edit(args.id, args.text)
        print(f"Edited thought {args.id}.")
    else:
        if args.id is None:
            raise ValueError("thoughts delete needs --id.")
        novel.thoughts.delete(args.id)
        print(f"Deleted thought {args.id}.")
    return 0


# -- the parsers -----------------------------------------------------------------------
def add_memory(sub) -> None:
    p = sub.add_parser("memory", help="pinned facts, semantic recall and associations")
    mem = p.add_subparsers(dest="action", required=True)
    for name, hlp in (("list", "memories (pinned first); --query to search"),
                      ("search", "memories, passages and thoughts like the query"),
                      ("add", "add a fact; --pin to keep it always in context"),
                      ("pin", "pin a memory id (or a passage:ID#N / thought:ID key)"),
                      ("unpin", "unpin a memory"), ("edit", "replace a memory's text"),
                      ("delete", "delete a memory"), ("link", "associate two memories"),
                      ("rebuild", "re-embed everything (derived data only)")):
        mp = mem.add_parser(name, help=hlp)
        mp.add_argument("--project", required=True)
        if name in ("list", "search"):
            mp.add_argument("query", nargs="?" if name == "list" else None, default=None)
            mp.add_argument("--query", dest="query", default=argparse.SUPPRESS)
            mp.add_argument("--limit", type=int_in(1, 100_000),
                            default=200 if name == "list" else 10)
            mp.add_argument("--json", action="store_true")
        if name in ("pin", "unpin", "edit", "delete"):
            mp.add_argument("ref")
        if name in ("add", "edit"):
            mp.add_argument("text", nargs="+")
        if name == "add":
            mp.add_argument("--pin", action="store_true")
        if name == "link":
            mp.add_argument("a")
            mp.add_argument("b")
    p.set_defaults(fn=cmd_memory)


def add_thoughts(sub) -> None:
    p = sub.add_parser("thoughts", help="the model's margin notes: list, add, edit, delete")
    p.add_argument("--project", required=True)
    p.add_argument("action", choices=("list", "add", "edit", "delete"))
    p.add_argument("text", nargs="*", default=[], help="the note (add, edit), before any option")
    p.add_argument("--id", type=int_in(1), default=None)
    p.add_argument("--chapter", type=int_in(1), default=None,
                   help="1-based; add: default the last")
    p.add_argument("--anchor", type=int_in(0), default=None,
                   help="character offset; default: end")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_thoughts)


def add_knn(sub) -> None:
    p = sub.add_parser("knn", help="the long memory read inside attention: show, on/off, "
                       "set, rebuild")
    p.add_argument("--project", required=True)
    p.add_argument("action", choices=("show", "on", "off", "set", "rebuild"))
    # --layers --k: the novel's KNN section, checked by its fields
    add_flags(p, KNN, only=("layers", "k"))
    p.add_argument("--json", action="store_true")
    _model_arg(p)
    p.set_defaults(fn=cmd_knn)


def add_matrix(sub) -> None:
    p = sub.add_parser("matrix", help="the in-model memory matrix: show, on/off, pin, reset")
    p.add_argument("--project", required=True)
    p.add_argument("action", choices=("show", "on", "off", "set", "pin", "unpin", "reset",
                                      "usage"))
    p.add_argument("ref", nargs="?", default=None, help="pin/unpin: a memory id")
    # --layer --slots --rows --adapter: the novel's Matrix section, checked by its fields
    add_flags(p, Matrix, only=("layer", "slots", "rows", "adapter"))
    p.add_argument("--json", action="store_true")
    _model_arg(p)
    p.set_defaults(fn=cmd_matrix)
