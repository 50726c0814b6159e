"""Shared fixtures: a tiny random model built in code, temporary projects, and a
running app server for the browser tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "pride_and_prejudice.txt"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_lm():
    from engine.models import load_tiny

    return load_tiny()


@pytest.fixture
def slot(tiny_lm):
    from engine.models import ModelSlot

    return ModelSlot.ready(tiny_lm)


@pytest.fixture
def library(tmp_path, slot):
    from engine.novel import Library

    return Library(tmp_path / "projects", slot)


@pytest.fixture
def novel(library):
    name = library.create("The Lighthouse", "A keeper guards a secret.", "Spare, wry.")
    return library.open(name)


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory):
    """A bigger random model saved as a local transformers folder: slow enough on a CPU
    (tens of tokens/s) that Stop can be pressed mid-stream, and it exercises folder loading."""
    from engine.tiny import tiny_model

    folder = tmp_path_factory.mktemp("slow-model")
    model, tok = tiny_model(layers=12, hidden=384, heads=6, kv_heads=2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, slow_model_dir):
    """python launch.py on a free port with a fresh projects folder, one per test module
    (tests use distinct novels); yields (url, projects dir)."""
    tmp_path = tmp_path_factory.mktemp("app")
    port = free_port()
    projects = tmp_path / "projects"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "launch.py", "--projects-dir", str(projects),
                             "--model", str(slow_model_dir), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240  # a loaded CI machine imports torch and gradio slowly
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "server.log").read_text())
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("the app did not start in 240 s")
    try:
        yield url, projects
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait up to 20 s (Playwright's default is 5): on two busy cores an
    # event behind a model call takes longer than that to show, and a test that
    # fails then is reporting the machine's load, not the app.
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    # Actions wait up to 90 s for the page to be ready: in a fresh CI checkout the first
    # use of the embedding model kept a memory-panel event (and its overlay) pending
    # for over 30 s, while on a warm machine the same step takes under a second.
    pg.set_default_timeout(90_000)
    yield pg
    ctx.close()
