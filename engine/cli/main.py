"""The command line's parser and its one way of reporting errors (see engine/cli)."""
from __future__ import annotations

import argparse
import os
import sys

from . import bench, memory, novel


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint on one line: 'error: argument --tokens: must be ...'."""

    def error(self, message):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def parser(argv=None) -> argparse.ArgumentParser:
    """The command line's parser. With ``argv`` only the bench/train/score module that
    argv names is imported (for its flags); the others' help comes from their docstring
    (so --help, list and the rest run without torch). Without it, every module is."""
    ap = _Parser(prog="python -m engine",
                 description="Mnemosyne: a novel writer that remembers.")
    sub = ap.add_subparsers(dest="command", required=True)
    # In the order --help lists them.
    for add in (novel.add_new, novel.add_import, novel.add_list, novel.add_write,
                memory.add_memory, memory.add_thoughts, memory.add_knn, memory.add_matrix,
                novel.add_export):
        add(sub)
    for add in (bench.add_bench, bench.add_score, bench.add_train):
        add(sub, argv)
    return ap


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _crash_report(e: BaseException, argv) -> str:
    """Where the traceback of an unexpected error was saved, or how to see it."""
    import time
    import traceback

    from ..models import cache_dir
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
    from ..models import ModelError
    from ..store import ProjectError

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
