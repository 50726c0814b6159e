"""python launch.py: serve the Mnemosyne web app (default http://127.0.0.1:7860)."""
from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import sys
import threading
import time
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ASSETS = Path(__file__).resolve().parent / "assets"
HEAD_SCRIPTS = ("editor.js",)  # the editor follows new text; Ctrl+Enter / Esc
# Gradio's temporary files (uploads, downloads): checked every FREQUENCY seconds, and
# deleted once older than AGE (all of them when the server stops).
CACHE_FREQUENCY_S, CACHE_AGE_S = 900, 3600


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Mnemosyne: a novel writer that remembers.")
    ap.add_argument("--projects-dir", default="projects", help="where novels are kept")
    ap.add_argument("--model", default=None,
                    help="a .gguf file, a model folder, a hub id, or 'tiny'; default: bundled")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--auth", default=None, help="user:password, required off loopback")
    args = ap.parse_args(argv)
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user.strip():
            ap.error("--auth must look like user:password")
        if not password.strip():
            # Gradio would serve a login page that nobody can pass.
            ap.error("--auth needs a password after the ':' (user:password); an empty one "
                     "would lock everybody out")
        if user != user.strip():
            # The login form strips the name it is given: ' bob' could never log in.
            ap.error("--auth: the user name must not start or end with a space")
    if args.host not in LOOPBACK and not args.auth:
        ap.error(f"refusing to serve on {args.host} without --auth user:password: anyone on "
                 "the network could read and change your novels")
    return args


class LoginThrottle:
    """Checks one user:password for Gradio's ``auth`` (pass ``.check``) and slows
    guessing down.

    After each failed login for a name, the next attempt for it waits twice as long
    (``base_s``, then doubling, at most ``max_delay_s``); after ``lock_after`` failures
    in a row the name is refused outright for ``lockout_s`` (even with the right
    password), and once that is over each further failure locks it again. A success
    clears the name's count. Attempts for one name are taken one at a time, so firing
    many in parallel waits as long as firing them in a row. Names other than the real
    user share one counter (the table cannot grow without bound). Gradio passes no
    request to ``auth``, so the count is per name, not per client. The waits are asyncio
    sleeps: a blocking sleep would stall every other request of the server.

    Gradio awaits ``auth`` only when ``inspect.iscoroutinefunction`` says it is a
    coroutine function: an object with an async ``__call__`` is called without being
    awaited, and the coroutine it returns is truthy, so every password would pass.
    Hence a method, ``check``, and no ``__call__``.
    """

    def __init__(self, user: str, password: str, base_s: float = 0.1,
                 max_delay_s: float = 4.0, lock_after: int = 10, lockout_s: float = 600.0,
                 clock=time.monotonic):
        self._user, self._password = user, password.encode()
        self.base_s, self.max_delay_s = base_s, max_delay_s
        self.lock_after, self.lockout_s = lock_after, lockout_s
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _slot(self, user: str) -> str:
        return "user" if user == self._user else "other"

    def delay(self, failures: int) -> float:
        """Seconds an attempt waits after ``failures`` failed ones in a row."""
        if failures <= 0:
            return 0.0
        return min(self.max_delay_s, self.base_s * 2 ** (failures - 1))

    async def check(self, user: str, password: str) -> bool:
        slot = self._slot(user)
        lock = self._locks.setdefault(slot, asyncio.Lock())
        async with lock:
            if self._clock() < self._locked_until.get(slot, 0.0):
                return False
            await asyncio.sleep(self.delay(self._failures.get(slot, 0)))
            ok = (user == self._user) & hmac.compare_digest(password.encode(), self._password)
            if ok:
                self._failures.pop(slot, None)
                return True
            n = self._failures.get(slot, 0) + 1
            if n >= self.lock_after:  # and again at each failure after the lockout
                self._locked_until[slot] = self._clock() + self.lockout_s
            self._failures[slot] = n
            return False


def head() -> str:
    """HTML for the page head: the app's scripts, inline."""
    parts = []
    for name in HEAD_SCRIPTS:
        path = ASSETS / name
        if path.is_file():
            parts.append(f"<script>\n{path.read_text(encoding='utf-8')}\n</script>")
    return "\n".join(parts)


def launch_options(args) -> dict:
    """Everything launch.py passes to Gradio's launch() besides the app itself."""
    from app.ui import css
    from engine.importing import MAX_IMPORT_BYTES

    auth = LoginThrottle(*args.auth.split(":", 1)).check if args.auth else None
    return dict(server_name=args.host, server_port=args.port, auth=auth, css=css(),
                head=head(), inbrowser=bool(os.environ.get("DISPLAY")), show_error=True,
                footer_links=[],
                # An upload bigger than an import accepts is refused by the server
                # before it is written anywhere.
                max_file_size=MAX_IMPORT_BYTES)


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
    from app.actions import configure_logging
    from app.ui import build
    from engine.models import ModelSlot
    from engine.novel import Library

    # transformers is imported here, once, before the model and the embedder load in
    # two threads: its lazy module imported from both at once can fail in one of them
    # ("cannot import name 'AutoModelForCausalLM'", seen in a browser run)
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    lib = Library(args.projects_dir, ModelSlot(args.model).start())
    # Internal errors of the page go to stderr and <projects dir>/mnemosyne.log.
    configure_logging(lib.root)
    threading.Thread(target=_preload_embedder, daemon=True, name="embedder-loader").start()
    demo = build(lib)
    # Blocks(delete_cache=...) as a setting of the served app: uploads and downloads do
    # not pile up in the temporary folder.
    demo.delete_cache = (CACHE_FREQUENCY_S, CACHE_AGE_S)
    demo.queue(default_concurrency_limit=4).launch(**launch_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
