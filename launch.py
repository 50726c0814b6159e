"""python launch.py: serve the Mnemosyne web app (default http://127.0.0.1:7860)."""
from __future__ import annotations

import argparse
import os
import sys
import threading

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Mnemosyne: a novel writer that remembers.")
    ap.add_argument("--projects-dir", default="projects", help="where novels are kept")
    ap.add_argument("--model", default=None,
                    help="a .gguf file, a model folder, a hub id, or 'tiny'; default: bundled")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--auth", default=None, help="user:password, required off loopback")
    args = ap.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or args.auth.startswith(":")):
        ap.error("--auth must look like user:password")
    if args.host not in LOOPBACK and not args.auth:
        ap.error(f"refusing to serve on {args.host} without --auth user:password: anyone on "
                 "the network could read and change your novels")
    return args


def _preload_embedder() -> None:
    """Load the memories' embedding model while the page opens: loaded on first use, it
    kept a fresh install's first memory search (or Continue) waiting for 30 s and more."""
    try:
        from engine.memory.semantic import embedder
        embedder()
    except Exception:  # noqa: BLE001 - the memory panel reports it when it is used
        pass


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from app.ui import build, css
    from engine.models import ModelSlot
    from engine.novel import Library

    lib = Library(args.projects_dir, ModelSlot(args.model).start())
    threading.Thread(target=_preload_embedder, daemon=True, name="embedder-loader").start()
    demo = build(lib)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, auth=auth, css=css(),
        inbrowser=bool(os.environ.get("DISPLAY")), show_error=True,
        footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
