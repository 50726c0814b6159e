"""Issue 13, the command line: every bad input gets one clear line on stderr, exits
non-zero, and changes nothing (python -m engine run as a user runs it)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT

PARA = "The keeper climbed the stair at dusk and lit the lamp, as he had every night. "


def cli(*args, check=True, env=None):
    import os

    p = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def refused(p, *words):
    """Exit non-zero, one line on stderr starting 'error:', naming ``words``."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def state(proj):
    """Everything a refused command must leave alone: the database's rows and the
    project's files (names and sizes)."""
    # no public way: every row and column of every table (thought_history and novel too),
    # which no table object lists in full, read on a connection of the test's own
    con = sqlite3.connect(proj / "novel.db")
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        con.close()
    files = sorted((str(p.relative_to(proj)), p.stat().st_size) for p in proj.rglob("*")
                   if p.is_file() and not p.name.startswith("novel.db"))
    return rows, files


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    from engine.novel import Novel

    folder = tmp_path_factory.mktemp("hard") / "novel"
    novel = Novel.create(folder, "T")
    novel.chapters.add("One", "\n\n".join([PARA] * 3))
    novel.close()
    return folder


@pytest.fixture
def empty(tmp_path):
    cli("new", "--project", tmp_path / "e", "--title", "Empty")
    return tmp_path / "e"


# -- 8: encodings ------------------------------------------------------------------------
def test_utf16_and_windows_1252_files_import_and_say_which_encoding(empty, tmp_path):
    text = "Chapter 1\r\n\r\n“Hello,” she said. It’s a café — naïve.\r\n"
    word = tmp_path / "unicode.txt"  # Word's "Unicode Text": UTF-16 LE with a BOM
    word.write_bytes(text.encode("utf-16"))
    legacy = tmp_path / "legacy.txt"
    legacy.write_bytes(text.replace("Chapter 1", "Chapter 2").encode("cp1252"))
    p = cli("import", "--project", empty, word, legacy)
    assert "Read unicode.txt as utf-16-le." in p.stdout
    assert "Read legacy.txt as windows-1252." in p.stdout
    assert "Imported 2 chapter(s)" in p.stdout
    md = cli("export", "--project", empty).stdout
    assert md.count("“Hello,” she said. It’s a café — naïve.") == 2 and "\r" not in md


def test_a_nul_byte_past_the_first_64_kib_is_binary(empty, tmp_path):
    bad = tmp_path / "late.txt"
    bad.write_bytes(b"Plain words. " * 6000 + b"\x00\x01\x02 trailing")  # NUL at ~78 KB
    before = state(empty)
    refused(cli("import", "--project", empty, bad, check=False), "binary")
    assert state(empty) == before


# -- 16: export never over the novel ---------------------------------------------------
def test_export_refuses_to_write_inside_a_project(proj, empty):
    before = state(proj)
    db = (proj / "novel.db").read_bytes()
    for out in (proj / "novel.db", proj / "memory" / "book.md", empty / "book.md",
                empty / "novel.db"):
        refused(cli("export", "--project", proj, "--out", out, check=False),
                "inside the project folder")
    assert (proj / "novel.db").read_bytes() == db and state(proj) == before
    assert not (empty / "book.md").exists()


def test_export_is_atomic(proj, tmp_path, monkeypatch, capsys):
    """A failure while writing leaves the old export whole (and no temporary file)."""
    from engine.__main__ import main
    from engine.chapters import Chapters

    out = tmp_path / "book.md"
    assert main(["export", "--project", str(proj), "--out", str(out)]) == 0
    good = out.read_text()
    assert good.startswith("# T")
    monkeypatch.setattr(Chapters, "export", lambda self, fmt: "# T\n\nhalf a book \ud800")
    assert main(["export", "--project", str(proj), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert out.read_text() == good
    assert [p.name for p in tmp_path.iterdir()] == ["book.md"]


# -- 19, 20: score ------------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--window", "0"], ["--window", "1 or more"]),
    (["--window", "-5"], ["--window"]),
    (["--block", "-1"], ["--block"]),
    (["--memory", "knn", "--knn-layers", "99"], ["--knn-layers", "0..3"]),
    (["--memory", "knn", "--knn-k", "0"], ["--knn-k", "1..1024"]),
    (["--text-file", "{empty}"], ["no text to score"]),
])
def test_score_refuses_what_would_give_a_wrong_figure(proj, tmp_path, args, words):
    text = tmp_path / "f.txt"
    text.write_text(PARA)
    (tmp_path / "empty.txt").write_text("\n \n")
    args = [a.replace("{empty}", str(tmp_path / "empty.txt")) for a in args]
    before = state(proj)
    p = cli("score", "--project", proj, "--model", "tiny", "--text-file", text, *args,
            check=False)
    refused(p, *words)
    assert state(proj) == before  # no kNN store was built with a layer the model lacks


# -- 20, 21: write values ------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--budget", "-1"], ["--budget"]),
    (["--budget", "0"], ["--budget"]),
    (["--tokens", "0"], ["--tokens", "1..4096"]),
    (["--tokens", "-1"], ["--tokens", "1..4096"]),
    (["--tokens", "1000000000"], ["--tokens", "1..4096"]),
    (["--seed", "-5"], ["--seed", "0..2**63-1"]),
    (["--seed", str(2**70)], ["--seed", "0..2**63-1"]),
    (["--temperature", "nan"], ["--temperature", "[0, 5]"]),
    (["--temperature", "-3"], ["--temperature", "[0, 5]"]),
    (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["--chapter", "0"], ["--chapter"]),
    (["--note-every", "3"], ["--note-every", "16 to 4,096"]),
])
def test_write_refuses_out_of_range_values_before_anything_runs(proj, args, words):
    before = state(proj)
    refused(cli("write", "--project", proj, "--model", "tiny", *args, check=False), *words)
    assert state(proj) == before  # no text, no generation-log row, no setting


def test_write_budget_over_the_model_context_is_refused(proj):
    before = state(proj)
    refused(cli("write", "--project", proj, "--model", "tiny", "--budget", "100000",
                check=False), "--budget", "1..2048")
    assert state(proj) == before


def test_sampling_validate_names_the_range_and_resolved_still_clamps():
    from engine.writer import Sampling

    for bad, word in ((dict(max_new_tokens=0), "1..4096"), (dict(seed=-5), "2**63-1"),
                      (dict(seed=2**70), "2**63-1"), (dict(temperature=float("nan")), "[0, 5]"),
                      (dict(top_p=0.0), "(0, 1]"), (dict(max_new_tokens=10**9), "1..4096")):
        with pytest.raises(ValueError, match=word.replace("*", r"\*").replace("(", r"\(")
                           .replace("[", r"\[")):
            Sampling(**bad).validate()
    s = Sampling(seed=2**63 - 1, temperature=0, top_p=1, max_new_tokens=4096)
    assert s.validate() is s
    assert Sampling(max_new_tokens=10**9).resolved().max_new_tokens == 4096  # UI sliders


# -- 21: matrix layer --------------------------------------------------------------------
def test_matrix_on_with_a_layer_the_model_lacks_is_refused(proj):
    before = state(proj)
    refused(cli("matrix", "--project", proj, "on", "--layer", "99", "--model", "tiny",
                check=False), "0..3")
    refused(cli("matrix", "--project", proj, "on", "--layer", "-1", "--model", "tiny",
                check=False), "--layer")
    assert state(proj) == before


# -- 22: nothing changes before everything is checked ---------------------------------------
def test_write_on_an_empty_novel_adds_no_chapter_when_it_fails(empty, tmp_path):
    before = state(empty)
    (tmp_path / "nomodel").mkdir()
    refused(cli("write", "--project", empty, "--chapter", "999", "--model", "tiny",
                check=False), "no chapter 999")
    refused(cli("write", "--project", empty, "--no-thoughts", "--model", tmp_path / "nomodel",
                check=False), "config.json")
    assert state(empty) == before  # no chapter, and the no-thoughts setting was not saved


def test_an_unwritable_receipt_is_refused_before_the_text_is_written(proj):
    before = state(proj)
    refused(cli("write", "--project", proj, "--model", "tiny", "--tokens", "3",
                "--receipt", "/proc/nope/x", check=False), "--receipt", "/proc/nope")
    assert state(proj) == before


def test_a_good_write_still_writes_its_receipt(tmp_path):
    proj = tmp_path / "w"
    cli("new", "--project", proj, "--title", "T")
    receipt = tmp_path / "r.json"
    cli("write", "--project", proj, "--model", "tiny", "--tokens", "3", "--no-thoughts",
        "--seed", str(2**63 - 1), "--receipt", receipt)
    assert json.loads(receipt.read_text())["blocks"]
    assert len(json.loads(cli("list", "--project", proj, "--json").stdout)) == 1


# -- 23: clear messages ------------------------------------------------------------------
def test_a_model_folder_with_only_a_config_gets_one_line(proj, tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    before = state(proj)
    line = refused(cli("write", "--project", proj, "--model", folder, check=False),
                   "has a config.json but no weights", "model.safetensors")
    assert line.startswith(f"error: {folder}")
    assert state(proj) == before


@pytest.mark.parametrize("action", ["delete", "edit", "unpin", "pin"])
def test_a_bad_memory_id_says_what_to_do(proj, action):
    extra = ["new text"] if action == "edit" else []
    p = cli("memory", action, "--project", proj, "abc", *extra, check=False)
    assert refused(p) == "error: 'abc' is not a memory id; see 'memory list'."


def test_matrix_pin_with_a_bad_id_says_what_to_do(proj):
    p = cli("matrix", "--project", proj, "pin", "abc", "--model", "tiny", check=False)
    assert refused(p) == "error: 'abc' is not a memory id; see 'memory list'."


# -- 20: the last resort ---------------------------------------------------------------
def test_an_unexpected_error_is_one_line_with_where_the_details_are(proj, tmp_path,
                                                                    monkeypatch, capsys):
    from engine import __main__ as cli_main
    from engine.cli import novel as cli_novel  # where the list command lives

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setenv("MNEMOSYNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNEMOSYNE_DEBUG", raising=False)
    monkeypatch.setattr(cli_novel, "cmd_list", boom)
    assert cli_main.main(["list", "--project", str(proj)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("internal error: KeyError: 'surprise', details: ")
    report = err[0].split("details: ")[1]
    assert "Traceback" in open(report).read() and "surprise" in open(report).read()
    monkeypatch.setenv("MNEMOSYNE_DEBUG", "1")  # the developer's way: the traceback itself
    with pytest.raises(KeyError):
        cli_main.main(["list", "--project", str(proj)])
    monkeypatch.delenv("MNEMOSYNE_DEBUG")
    assert cli_main.main(["export", "--project", str(tmp_path / "none")]) == 2  # user error
    assert capsys.readouterr().err.startswith("error: ")
