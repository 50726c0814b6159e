"""python -m engine knn: the kNN memory's settings and rebuild from the command line,
like the memory panel (show, on, off, set --layers/--k, rebuild)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from engine.cli.main import main
from engine.novel import Novel


@pytest.fixture
def project(tmp_path):
    """A one-chapter novel, made by the CLI in its own process."""
    folder, text = tmp_path / "book", tmp_path / "harbour.txt"
    text.write_text("The boats came in at dawn, and the gulls followed them. " * 8)
    for args in (["new", "--project", folder, "--title", "Harbour"],
                 ["import", "--project", folder, text]):
        subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT,
                       check=True, capture_output=True, timeout=300)
    return str(folder)


@pytest.fixture(autouse=True)
def _transformers_imported():
    """Each in-process call opens the novel with a fresh model slot whose loader thread
    imports transformers; a slot left loading by the call before would then race it
    through transformers' lazy import (a separate CLI process never meets that)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def knn(project, capsys, *args, err=False):
    """(exit code, stdout and stderr together); with ``err``, (code, stdout, stderr)."""
    rc = main(["knn", "--project", project, *args])
    out = capsys.readouterr()
    return (rc, out.out, out.err) if err else (rc, out.out + out.err)


def shown(project, capsys) -> dict:
    rc, out, _ = knn(project, capsys, "show", "--json", err=True)
    assert rc == 0
    return json.loads(out)


def test_on_set_off_change_the_stored_settings(project, capsys):
    before = shown(project, capsys)
    assert before["settings"]["on"] is False and before["info"]["tokens"] == 0
    rc, out = knn(project, capsys, "on", "--layers", "1-2", "--k", "4", "--model", "tiny")
    assert rc == 0 and "kNN memory on: layers 1,2, k 4" in out, out
    rc, out = knn(project, capsys, "set", "--k", "8")
    assert rc == 0 and "kNN memory on: layers 1,2, k 8" in out  # set keeps it on
    assert shown(project, capsys)["settings"] | {"depth": 0} == {
        "on": True, "layers": [1, 2], "k": 8, "depth": 0}
    rc, out = knn(project, capsys, "set", "--layers", "", "--model", "tiny")
    assert rc == 0 and shown(project, capsys)["settings"]["layers"] != [1, 2]  # default
    assert knn(project, capsys, "off")[0] == 0
    assert shown(project, capsys)["settings"]["on"] is False
    novel = Novel.open(project)
    try:
        assert novel.knn.settings()["k"] == 8  # the novel's own setting, as the page reads
    finally:
        novel.close()


def test_bad_values_are_refused_and_change_nothing(project, capsys):
    knn(project, capsys, "on", "--k", "4")
    for args, said in ((["set"], "needs --layers or --k"),
                       (["on", "--layers", "99", "--model", "tiny"], "layers must lie in 0..3")):
        rc, out = knn(project, capsys, *args)
        assert rc == 2 and said in out, (args, out)
    for args, said in ((["set", "--k", "0"], "must be 1..1024"),
                       (["on", "--layers", "x-y"], "not a layer number")):
        with pytest.raises(SystemExit) as bad_flag:  # argparse refuses it: nothing runs
            main(["knn", "--project", project, *args])
        assert bad_flag.value.code == 2 and said in capsys.readouterr().err
    s = shown(project, capsys)["settings"]
    assert s["on"] is True and s["k"] == 4


def test_rebuild_indexes_the_book_quietly_in_json(project, capsys):
    knn(project, capsys, "on", "--layers", "1", "--model", "tiny")
    rc, out, err = knn(project, capsys, "rebuild", "--json", "--model", "tiny", err=True)
    assert rc == 0 and "kNN memory" not in err  # no progress bar in --json mode
    got = json.loads(out)  # nothing but the JSON
    assert got["info"]["tokens"] > 100 and got["info"]["layers"] == [1]
    rc, out = knn(project, capsys, "show")
    assert rc == 0 and f"{got['info']['tokens']:,} tokens stored" in out


def test_knn_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "knn" in capsys.readouterr().out
