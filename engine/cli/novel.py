"""The novel's subcommands: new, import, list, write, export."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..score import float_in, int_in
from ..settings import Thoughts, add_flags
from ..settings import changes as settings_changes
from .common import _model_arg, _slot

# write's flags for the Thoughts fields (the flag names predate the section's)
THOUGHT_FLAGS = {"plan_first": "plan-first", "every": "note-every", "mode": "thought-mode",
                 "adapter": "thought-adapter"}


def cmd_new(args) -> int:
    from ..novel import Novel

    Novel.create(Path(args.project), args.title, args.premise, args.style).close()
    print(f"Created '{args.title}' in {args.project}")
    return 0


def cmd_import(args) -> int:
    from tqdm import tqdm

    from ..novel import Novel

    novel = Novel.open(Path(args.project))
    encodings: dict = {}
    ids = novel.chapters.import_files(args.files, progress=lambda xs: tqdm(xs, desc="Importing",
                                                                   unit="chapter"),
                             encodings=encodings)
    for name, enc in encodings.items():
        if enc != "utf-8":
            print(f"Read {name} as {enc}.")
    print(f"Imported {len(ids)} chapter(s).")
    return 0


def cmd_list(args) -> int:
    from ..novel import Novel

    novel = Novel.open(Path(args.project))
    chapters = novel.chapters.list()
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
    from ..novel import Novel
    from ..store import MAX_CHAPTER_CHARS, validate_text
    from ..writer import Sampling

    # Everything is checked before anything changes: the values, the receipt's path,
    # the chapter, the model and the settings the Continue will run under.
    chosen = {"temperature": args.temperature, "top_p": args.top_p}  # None: the defaults
    sampling = Sampling(max_new_tokens=args.tokens, seed=args.seed,
                        **{k: v for k, v in chosen.items() if v is not None}).validate()
    validate_text("The prompt", args.prompt or "", MAX_CHAPTER_CHARS)
    receipt_path = _writable(args.receipt) if args.receipt else None
    novel = Novel.open(Path(args.project), _slot(args))
    if novel.chapters.list():
        cid = novel.chapters.id(args.chapter)
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
    changes = settings_changes(args, Thoughts)  # --plan-first, --thought-*, --note-every
    if args.no_thoughts or args.plan_first:  # a plan is a note: --plan-first turns them on
        changes.update(on=not args.no_thoughts, plan_first=bool(args.plan_first))
    if args.self_commentary:
        changes["mode"] = "self"
    if changes:  # one call: the whole change is checked before it is saved
        novel.thoughts.set_settings(**changes)
    else:
        settings = novel.thoughts.settings()
        if settings["on"] and settings.get("mode") == "self":  # a stored adapter's check
            novel.thoughts.self_commentary(lm, settings)
    if cid is None:
        cid = novel.chapters.add("Chapter 1")
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
            from ..export import write_atomic
            write_atomic(receipt_path, json.dumps(last.receipt, indent=2))
    return 0


def _check_memory_layers(novel) -> None:
    """The memory layers stored for this novel exist in the loaded model (a matrix or
    kNN setting made under another model would fail mid-Continue)."""
    if novel.settings.get("matrix").on:
        novel.matrix.settings()  # resolves the matrix layer against the model: ValueError
    knn = novel.knn.settings()
    depth = knn.get("depth") or 0
    if knn["on"] and depth and any(not 0 <= int(x) < depth for x in knn["layers"] or ()):
        raise ValueError(f"The kNN memory reads layers {knn['layers']}, but this model has "
                         f"layers 0..{depth - 1}; set them again in the memory panel.")


def cmd_export(args) -> int:
    from ..export import BINARY, check_out_path, suffix, write_atomic
    from ..novel import Novel

    novel = Novel.open(Path(args.project))
    out_arg = args.out
    if out_arg is None and args.format in BINARY:  # bytes are not for a terminal
        stem = Path(args.project).expanduser().resolve().name
        out_arg = f"{stem}{'-notes' if args.format == 'docx-notes' else ''}{suffix(args.format)}"
    out = check_out_path(out_arg, args.project) if out_arg else None
    data = novel.chapters.export(args.format)
    if out is None:
        sys.stdout.write(data)
        return 0
    write_atomic(out, data)
    what = BINARY[args.format][1] if args.format in BINARY else args.format
    chapters = len(novel.chapters.list())
    print(f"Wrote {out_arg} ({what}, {chapters} chapter(s), {len(data):,} "
          f"{'bytes' if isinstance(data, bytes) else 'characters'}).")
    return 0


# -- the parsers (fn is looked up when the parser is built, so a test may replace it) --
def add_new(sub) -> None:
    p = sub.add_parser("new", help="create a novel")
    p.add_argument("--project", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--premise", default="")
    p.add_argument("--style", default="")
    p.set_defaults(fn=cmd_new)


def add_import(sub) -> None:
    p = sub.add_parser("import", help="import .txt/.md/.docx/.epub files, split on chapter "
                       "headings (an EPUB also on its contents)")
    p.add_argument("--project", required=True)
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_import)


def add_list(sub) -> None:
    p = sub.add_parser("list", help="chapters with word counts")
    p.add_argument("--project", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)


def add_write(sub) -> None:
    from ..writer import MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE

    p = sub.add_parser("write", help="continue a chapter, streaming the text")
    p.add_argument("--project", required=True)
    p.add_argument("--chapter", type=int_in(1), default=None, help="1-based; default: the last")
    p.add_argument("--tokens", type=int_in(1, MAX_NEW_TOKENS), default=200,
                   help=f"new tokens, 1..{MAX_NEW_TOKENS}")
    p.add_argument("--seed", type=int_in(0, MAX_SEED, "2**63-1"), default=None,
                   help="0..2**63-1; default: a fresh one, recorded")
    p.add_argument("--temperature", type=float_in(0.0, MAX_TEMPERATURE), default=None,
                   help=f"0..{MAX_TEMPERATURE:g}; default: the engine's (writer.Sampling)")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True), default=None,
                   help="in (0, 1]; default: the engine's")
    p.add_argument("--budget", type=int_in(1), default=None,
                   help="prompt token budget (at most the model's context length)")
    p.add_argument("--prompt", default="", help="your own words, added before the model writes")
    p.add_argument("--receipt", default=None, help="write the context receipt here (JSON)")
    # the margin notes: the Thoughts section's fields, but for the two shortcuts
    p.add_argument("--no-thoughts", action="store_true", help="no margin note (kept as a setting)")
    add_flags(p, Thoughts, only=THOUGHT_FLAGS, names=THOUGHT_FLAGS, note=" (kept as a setting)")
    p.add_argument("--self-commentary", action="store_true", help="--thought-mode self")
    _model_arg(p)
    p.set_defaults(fn=cmd_write)


def add_export(sub) -> None:
    from ..export import ALL

    p = sub.add_parser("export", help="the manuscript as Markdown, text, Word or EPUB")
    p.add_argument("--project", required=True)
    p.add_argument("--format", choices=ALL, default="md",
                   help="notes: Markdown with the margin notes set apart; docx: standard "
                   "manuscript format; docx-notes: the same with each margin note a Word "
                   "comment; epub: EPUB 3 e-book")
    p.add_argument("--out", default=None,
                   help="file to write; default: standard output for md/txt/notes, "
                   "PROJECT.docx / PROJECT-notes.docx / PROJECT.epub in this folder")
    p.set_defaults(fn=cmd_export)
