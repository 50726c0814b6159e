"""python -m engine and launch.py as a user runs them: exit codes and one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import DATA, ROOT


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_new_import_list_write_export(tmp_path):
    proj = tmp_path / "pp"
    cli("new", "--project", proj, "--title", "Pride", "--premise", "Five sisters.")
    p = cli("import", "--project", proj, DATA)
    assert "Imported 61 chapter(s)" in p.stdout
    listing = json.loads(cli("list", "--project", proj, "--json").stdout)
    assert len(listing) == 61 and listing[0]["title"] == "Chapter 1"
    assert all(c["words"] > 300 for c in listing)
    assert "total" in cli("list", "--project", proj).stdout
    receipt = tmp_path / "receipt.json"
    p = cli("write", "--project", proj, "--chapter", 2, "--tokens", 12, "--seed", 5,
            "--model", "tiny", "--receipt", receipt)
    assert p.stdout.strip()  # the streamed text
    r = json.loads(receipt.read_text())
    assert r["blocks"][0]["kind"] == "bible" and r["blocks"][-1]["kind"] == "tail"
    assert "Chapter 2" in r["blocks"][-1]["text"]
    out = tmp_path / "book.md"
    cli("export", "--project", proj, "--format", "md", "--out", out)
    md = out.read_text()
    assert md.startswith("# Pride") and md.count("\n## Chapter") == 61
    assert p.stdout.strip()[-10:] in md  # the written text was saved into chapter 2


@pytest.fixture(scope="module")
def small_project(tmp_path_factory):
    from engine.novel import Novel

    proj = tmp_path_factory.mktemp("cli") / "novel"
    novel = Novel.create(proj, "T")
    novel.chapters.add("One", "Some words.")
    novel.chapters.add("Two", "More words.")
    novel.close()
    return proj


def snapshot(proj):
    from engine.novel import Novel

    novel = Novel.open(proj)
    try:
        return novel.chapters.list(), novel.chapters.manuscript()
    finally:
        novel.close()


@pytest.mark.parametrize("args,message", [
    (["write", "--project", "{p}", "--model", "/no/such/model.gguf"], "does not exist"),
    (["new", "--project", "{p}", "--title", "Again"], "already exists"),
    (["new", "--project", "{p}2", "--title", "  "], "title is empty"),
    (["list", "--project", "{p}-missing"], "No novel found"),
    (["write", "--project", "{p}", "--chapter", "9", "--model", "tiny"], "no chapter 9"),
    (["export", "--project", "{p}", "--format", "pdf"], "invalid choice"),
])
def test_bad_input_exits_nonzero_with_one_line(small_project, args, message):
    before = snapshot(small_project)
    p = cli(*[a.replace("{p}", str(small_project)) for a in args], check=False)
    assert p.returncode != 0
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert message in err[-1]
    if "usage" not in p.stderr:
        assert len(err) == 1, p.stderr
    assert snapshot(small_project) == before


def test_binary_import_changes_nothing(tmp_path):
    proj = tmp_path / "n"
    cli("new", "--project", proj, "--title", "T")
    bad = tmp_path / "x.txt"
    bad.write_bytes(bytes(range(256)) * 10)
    p = cli("import", "--project", proj, bad, check=False)
    assert p.returncode == 2 and "binary" in p.stderr
    assert json.loads(cli("list", "--project", proj, "--json").stdout) == []


def test_killed_mid_stream_keeps_the_text(tmp_path, slow_model_dir):
    proj = tmp_path / "n"
    cli("new", "--project", proj, "--title", "T")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "write", "--project", str(proj),
                             "--tokens", "3000", "--seed", "1", "--model", str(slow_model_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.set_blocking(proc.stdout.fileno(), False)
    printed, deadline = b"", time.time() + 120
    while len(printed) < 40 and time.time() < deadline:
        printed += proc.stdout.read() or b""
        time.sleep(0.2)
    time.sleep(1.2)  # the autosave interval has passed for what was printed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(printed) >= 40
    from engine.novel import Novel

    text = Novel.open(proj).chapters.text(Novel.open(proj).chapters.id(1))
    assert len(text) >= 20  # what streamed before the kill is on disk


@pytest.mark.parametrize("args,ok", [(["--host", "0.0.0.0"], False),
                                     (["--host", "0.0.0.0", "--auth", "nouser"], False)])
def test_launch_refuses_open_network_without_auth(args, ok):
    p = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert "auth" in p.stderr.strip().splitlines()[-1]
