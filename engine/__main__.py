"""python -m engine: the command line, a thin layer over Novel.

Every command exits non-zero with a one-line reason on bad input ("error: ..."), and
checks everything it can before it changes anything. A bug prints one line too
("internal error: ..."), with the traceback saved to a file (MNEMOSYNE_DEBUG=1 shows it).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from .score import float_in, int_in

BENCHES = ("speed", "recall", "perplexity", "sentiment", "continuity", "matrix")
TRAINERS = ("thoughts", "memory", "knn")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="a .gguf file, a model folder, a hub id, or 'tiny'; default: bundled")


def _slot(args):
    from .models import ModelSlot, load

    return ModelSlot(args.model, loader=lambda spec: load(spec))


def cmd_new(args) -> int:
    from .novel import Novel

    Novel.create(Path(args.project), args.title, args.premise, args.style).close()
    print(f"Created '{args.title}' in {args.project}")
    return 0


def cmd_import(args) -> int:
    from tqdm import tqdm

    from .novel import Novel

    novel = Novel.open(Path(args.project))
    encodings: dict = {}
    ids = novel.import_files(args.files, progress=lambda xs: tqdm(xs, desc="Importing",
                                                                   unit="chapter"),
                             encodings=encodings)
    for name, enc in encodings.items():
        if enc != "utf-8":
            print(f"Read {name} as {enc}.")
    print(f"Imported {len(ids)} chapter(s).")
    return 0


def cmd_list(args) -> int:
    from .novel import Novel

    novel = Novel.open(Path(args.project))
    chapters = novel.chapters()
    if args.json:
        print(json.dumps(chapters))
        return 0
    print(novel.bible["title"])
    for c in chapters:
        print(f"{c['position']:>4}  {c['title'][:60]:<60} {c['words']:>8} words")
    print(f"      {'total':<60} {sum(c['words'] for c in chapters):>8} words")
    return 0


def _writable(path: str) -> Path:
    """``path`` if a file can be written there (checked before anything runs)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"--receipt {path} is a folder; give a file name.")
    if not p.parent.is_dir():
        raise ValueError(f"--receipt {path}: the folder {p.parent} does not exist.")
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"--receipt {path} cannot be written (permission denied).")
    return p


def cmd_write(args) -> int:
    from .novel import Novel
    from .store import MAX_CHAPTER_CHARS, validate_text
    from .writer import Sampling

    # Everything is checked before anything changes: the values, the receipt's path,
    # the chapter, the model and the settings the Continue will run under.
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p,
                        max_new_tokens=args.tokens, seed=args.seed).validate()
    validate_text("The prompt", args.prompt or "", MAX_CHAPTER_CHARS)
    receipt_path = _writable(args.receipt) if args.receipt else None
    novel = Novel.open(Path(args.project), _slot(args))
    if novel.chapters():
        cid = novel.chapter_id(args.chapter)
    elif args.chapter not in (None, 1):
        raise ValueError(f"There is no chapter {args.chapter}: this novel has no chapters "
                         "yet (leave out --chapter to start Chapter 1).")
    else:
        cid = None
    lm = novel.model.get()  # a model that cannot load fails here, with nothing changed
    if args.budget is not None and args.budget > lm.context_length:
        raise ValueError(f"--budget must be 1..{lm.context_length} tokens for {lm.name}, "
                         f"not {args.budget}.")
    _check_memory_layers(novel)
    changes = {}
    if args.no_thoughts or args.plan_first:
        changes.update(on=not args.no_thoughts, plan_first=args.plan_first)
    mode = "self" if args.self_commentary else args.thought_mode
    if mode or args.thought_adapter is not None or args.note_every is not None:
        changes.update(mode=mode, adapter=args.thought_adapter, every=args.note_every)
    if changes:  # one call: the whole change is checked before it is saved
        novel.set_thought_settings(**changes)
    else:
        settings = novel.thought_settings()
        if settings["on"] and settings.get("mode") == "self":  # a stored adapter's check
            novel._self_commentary(lm, settings)
    if cid is None:
        cid = novel.add_chapter("Chapter 1")
    last = None
    try:
        for ev in novel.continue_chapter(cid, sampling, prompt=args.prompt or "",
                                         budget=args.budget):
            if ev.delta:
                sys.stdout.write(ev.delta)
                sys.stdout.flush()
            last = ev
    except KeyboardInterrupt:
        novel.stop()
        print("\n[stopped; the text so far is saved]", file=sys.stderr)
        return 130
    print()
    if last is not None:
        print(f"[{last.status} {json.dumps(last.stats)}]", file=sys.stderr)
        if receipt_path is not None:
            from .export import write_atomic
            write_atomic(receipt_path, json.dumps(last.receipt, indent=2))
    return 0


def _check_memory_layers(novel) -> None:
    """The memory layers stored for this novel exist in the loaded model (a matrix or
    kNN setting made under another model would fail mid-Continue)."""
    if (novel.store.get_setting("matrix") or {}).get("on"):
        novel.matrix_settings()  # resolves the matrix layer against the model: ValueError
    knn = novel.knn_settings()
    depth = knn.get("depth") or 0
    if knn["on"] and depth and any(not 0 <= int(x) < depth for x in knn["layers"] or ()):
        raise ValueError(f"The kNN memory reads layers {knn['layers']}, but this model has "
                         f"layers 0..{depth - 1}; set them again in the memory panel.")


def _memory_ref(ref: str, keys: bool = False) -> str:
    """A memory id ('3' or 'memory:3'), or with ``keys`` a passage/thought key too."""
    r = (ref or "").strip()
    if r.removeprefix("memory:").isdigit():
        return r
    if keys and r.startswith(("passage:", "thought:")):
        return r
    raise ValueError(f"'{ref}' is not a memory id; see 'memory list'.")


def cmd_memory(args) -> int:
    from .novel import Novel

    novel = Novel.open(Path(args.project))
    act = args.action
    if act in ("list", "search"):
        if act == "search" and not (args.query or "").strip():
            raise ValueError("search needs a query: memory search 'what to look for'")
        rows = novel.memories(args.query, limit=args.limit)
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
        mid = novel.add_memory(" ".join(args.text), pin=args.pin)
        print(f"Added memory {mid}{' (pinned)' if args.pin else ''}.")
    elif act in ("pin", "unpin"):
        mid = getattr(novel, act)(_memory_ref(args.ref, keys=act == "pin"))
        print(f"Memory {mid} {act}ned.")
    elif act == "edit":
        novel.edit_memory(_memory_ref(args.ref), " ".join(args.text))
        print(f"Memory {args.ref} edited.")
    elif act == "delete":
        novel.delete_memory(_memory_ref(args.ref))
        print(f"Memory {args.ref} deleted.")
    elif act == "link":
        novel.link(args.a, args.b)
        print(f"Linked {args.a} and {args.b}.")
    elif act == "rebuild":
        stats = novel.rebuild_memory()
        print(f"Rebuilt semantic memory: {stats['items']} items embedded.")
    return 0


def cmd_matrix(args) -> int:
    from .novel import Novel

    novel = Novel.open(Path(args.project), _slot(args))
    act = args.action
    if act in ("pin", "unpin") and args.ref:
        args.ref = _memory_ref(args.ref)
    if act in ("on", "set") and (args.layer is not None or args.adapter):
        novel.model.get()  # the layer is checked against the model, the adapter loaded
    if act in ("on", "off", "set"):
        on = act == "on" or (act == "set" and novel.matrix_settings()["on"])
        novel.set_matrix_settings(on, args.layer, args.slots, args.rows, args.adapter)
    elif act in ("pin", "unpin") and not args.ref:
        raise ValueError(f"{act} needs a memory id: matrix {act} 3")
    elif act == "pin":
        print(f"Memory {args.ref}: slots {novel.pin_matrix(args.ref)} pinned.")
    elif act == "unpin":
        novel.unpin_matrix(args.ref)
        print(f"Memory {args.ref}: slots unpinned.")
    elif act == "reset":
        novel.reset_matrix()
    if act in ("usage", "reset") or (act == "show" and novel.matrix_settings()["on"]):
        usage = novel.matrix_usage(progress=_bar("memory matrix") if not args.json else None)
    else:
        usage = None
    out = {"settings": novel.matrix_settings(), "info": novel.matrix_info(),
           "pins": novel.matrix_pins(), **({"usage": usage} if act == "usage" else {})}
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


def cmd_export(args) -> int:
    from .novel import Novel

    from .export import check_out_path, write_atomic

    novel = Novel.open(Path(args.project))
    out = check_out_path(args.out, args.project) if args.out else None
    text = novel.export_with_notes() if args.format == "notes" else novel.export(args.format)
    if out is not None:
        write_atomic(out, text)
        print(f"Wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_thoughts(args) -> int:
    from .novel import Novel

    args.text = " ".join(args.text)
    novel = Novel.open(Path(args.project))
    if args.action == "list":
        rows = novel.list_thoughts(novel.chapter_id(args.chapter) if args.chapter else None)
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
        tid = novel.add_thought(novel.chapter_id(args.chapter), args.text, args.anchor)
        print(f"Added thought {tid}.")
    elif args.action == "edit":
        if args.id is None or not args.text:
            raise ValueError("thoughts edit needs --id and the new text.")
        novel.edit_thought(args.id, args.text)
        print(f"Edited thought {args.id}.")
    else:
        if args.id is None:
            raise ValueError("thoughts delete needs --id.")
        novel.delete_thought(args.id)
        print(f"Deleted thought {args.id}.")
    return 0


def cmd_bench(args) -> int:
    return importlib.import_module(f".evals.{args.bench}", __package__).run(args)


def cmd_score(args) -> int:
    return importlib.import_module(".score", __package__).run(args)


def cmd_train(args) -> int:
    return importlib.import_module(f".train.{args.what}", __package__).run(args)


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint on one line: 'error: argument --tokens: must be ...'."""

    def error(self, message):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _every(text):
    from .thoughts import parse_every
    try:
        return str(parse_every(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser(argv=None) -> argparse.ArgumentParser:
    """The command line's parser. With ``argv`` only the bench/train/score module that
    argv names is imported (for its flags); the others' help comes from their docstring
    (so --help, list and the rest run without torch). Without it, every module is."""
    from .writer import MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE

    ap = _Parser(prog="python -m engine",
                 description="Mnemosyne: a novel writer that remembers.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("new", help="create a novel")
    p.add_argument("--project", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--premise", default="")
    p.add_argument("--style", default="")
    p.set_defaults(fn=cmd_new)

    p = sub.add_parser("import", help="import .txt/.md files, split on chapter headings")
    p.add_argument("--project", required=True)
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("list", help="chapters with word counts")
    p.add_argument("--project", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("write", help="continue a chapter, streaming the text")
    p.add_argument("--project", required=True)
    p.add_argument("--chapter", type=int_in(1), default=None, help="1-based; default: the last")
    p.add_argument("--tokens", type=int_in(1, MAX_NEW_TOKENS), default=200,
                   help=f"new tokens, 1..{MAX_NEW_TOKENS}")
    p.add_argument("--seed", type=int_in(0, MAX_SEED, "2**63-1"), default=None,
                   help="0..2**63-1; default: a fresh one, recorded")
    p.add_argument("--temperature", type=float_in(0.0, MAX_TEMPERATURE), default=0.8,
                   help=f"0..{MAX_TEMPERATURE:g}")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True), default=0.95,
                   help="in (0, 1]")
    p.add_argument("--budget", type=int_in(1), default=None,
                   help="prompt token budget (at most the model's context length)")
    p.add_argument("--prompt", default="", help="your own words, added before the model writes")
    p.add_argument("--receipt", default=None, help="write the context receipt here (JSON)")
    p.add_argument("--no-thoughts", action="store_true", help="no margin note (kept as a setting)")
    p.add_argument("--plan-first", action="store_true", help="the note plans the passage first")
    p.add_argument("--note-every", type=_every, default=None, metavar="passage|paragraph|N",
                   help="a margin note after each paragraph (default), each passage, or "
                        "every N tokens (kept as a setting)")
    p.add_argument("--thought-mode", choices=("prompt", "self"), default=None,
                   help="who writes the notes: a summarising prompt, or the model itself "
                        "tuned by 'train thoughts' (kept as a setting)")
    p.add_argument("--self-commentary", action="store_true", help="--thought-mode self")
    p.add_argument("--thought-adapter", default=None,
                   help="self mode: the adapter folder ('' for the model's default one)")
    _model_arg(p)
    p.set_defaults(fn=cmd_write)

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

    p = sub.add_parser("matrix", help="the in-model memory matrix: show, on/off, pin, reset")
    p.add_argument("--project", required=True)
    p.add_argument("action", choices=("show", "on", "off", "set", "pin", "unpin", "reset",
                                      "usage"))
    p.add_argument("ref", nargs="?", default=None, help="pin/unpin: a memory id")
    p.add_argument("--layer", type=int_in(0), default=None,
                   help="within the model's layers (checked against it)")
    p.add_argument("--slots", type=int_in(64, 65536), default=None,
                   help="a multiple of 64, 64..65536")
    p.add_argument("--rows", type=int_in(1, 1024), default=None,
                   help="memory tokens read per layer, 1..1024")
    p.add_argument("--adapter", default=None, help="a trained adapter ('' for none)")
    p.add_argument("--json", action="store_true")
    _model_arg(p)
    p.set_defaults(fn=cmd_matrix)

    p = sub.add_parser("export", help="the manuscript as Markdown or plain text")
    p.add_argument("--project", required=True)
    p.add_argument("--format", choices=("md", "txt", "notes"), default="md",
                   help="notes: Markdown with the margin notes set apart")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    _subcommands(p.add_subparsers(dest="bench", required=True), "evals", BENCHES, cmd_bench,
                 _chosen(argv, "bench"))

    if importlib.util.find_spec("engine.score") is not None:
        p = sub.add_parser("score", help="log-probabilities of a text continuing the novel")
        _model_arg(p)
        if argv is None or _chosen(argv, None) == "score":
            importlib.import_module(".score", __package__).add_arguments(p)
        p.set_defaults(fn=cmd_score)

    p = sub.add_parser("train", help="teach the model: thoughts (inline margin notes), memory, "
                                     "knn (the kNN memory's read gate)")
    _subcommands(p.add_subparsers(dest="what", required=True), "train", TRAINERS, cmd_train,
                 _chosen(argv, "train"))
    return ap


def _chosen(argv, command: str | None):
    """The word after ``command`` in argv (with None: the command itself), ignoring
    options; True when argv is None (every module is imported)."""
    if argv is None:
        return True
    words = [a for a in argv if not a.startswith("-")]
    if command is None:
        return words[0] if words else None
    return words[1] if len(words) > 1 and words[0] == command else None


def _doc_line(package: str, name: str) -> str:
    """The first line of engine/PACKAGE/NAME.py's docstring, read without importing it."""
    import ast

    path = Path(__file__).resolve().parent / package / f"{name}.py"
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return (doc.strip().splitlines() or [""])[0]


def _subcommands(sub, package: str, names, fn, chosen=True) -> None:
    """One subcommand per module engine/PACKAGE/NAME.py (add_arguments(parser), run(args)),
    its help the first line of the module's docstring. Only the ``chosen`` one (True:
    all) is imported, for its flags."""
    for name in names:
        p = sub.add_parser(name, help=_doc_line(package, name))
        _model_arg(p)
        if chosen is True or chosen == name:
            importlib.import_module(f".{package}.{name}", __package__).add_arguments(p)
        p.set_defaults(fn=fn)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _crash_report(e: BaseException, argv) -> str:
    """Where the traceback of an unexpected error was saved, or how to see it."""
    import time
    import traceback

    from .models import cache_dir
    try:
        folder = cache_dir() / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"python -m engine {' '.join(map(str, argv))}\n\n"
                        + "".join(traceback.format_exception(e)), encoding="utf-8")
        return str(path)
    except OSError:
        return "run with MNEMOSYNE_DEBUG=1"


def main(argv=None) -> int:
    from .models import ModelError
    from .store import ProjectError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(argv).parse_args(argv)
    try:
        return args.fn(args)
    except (ProjectError, ModelError, ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback in a file
        if os.environ.get("MNEMOSYNE_DEBUG", "") not in ("", "0"):
            raise
        print(f"internal error: {type(e).__name__}: {_one_line(e)}, details: "
              f"{_crash_report(e, argv)}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
