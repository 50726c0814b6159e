"""The lab's subcommands: bench, score and train. One subcommand per module of
engine/evals and engine/train; only the module argv names is imported, for its flags."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from .common import _model_arg

BENCHES = ("speed", "recall", "perplexity", "sentiment", "continuity", "matrix", "prose")
TRAINERS = ("thoughts", "memory", "knn")


def cmd_bench(args) -> int:
    return importlib.import_module(f"engine.evals.{args.bench}").run(args)


def cmd_score(args) -> int:
    return importlib.import_module("engine.score").run(args)


def cmd_train(args) -> int:
    return importlib.import_module(f"engine.train.{args.what}").run(args)


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

    path = Path(__file__).resolve().parent.parent / package / f"{name}.py"
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
            importlib.import_module(f"engine.{package}.{name}").add_arguments(p)
        p.set_defaults(fn=fn)


# -- the parsers -----------------------------------------------------------------------
def add_bench(sub, argv) -> None:
    p = sub.add_parser("bench", help="benchmarks that print figures")
    _subcommands(p.add_subparsers(dest="bench", required=True), "evals", BENCHES, cmd_bench,
                 _chosen(argv, "bench"))


def add_score(sub, argv) -> None:
    if importlib.util.find_spec("engine.score") is not None:
        p = sub.add_parser("score", help="log-probabilities of a text continuing the novel")
        _model_arg(p)
        if argv is None or _chosen(argv, None) == "score":
            importlib.import_module("engine.score").add_arguments(p)
        p.set_defaults(fn=cmd_score)


def add_train(sub, argv) -> None:
    p = sub.add_parser("train", help="teach the model: thoughts (inline margin notes), memory, "
                                     "knn (the kNN memory's read gate)")
    _subcommands(p.add_subparsers(dest="what", required=True), "train", TRAINERS, cmd_train,
                 _chosen(argv, "train"))
