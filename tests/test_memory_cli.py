"""python -m engine memory ...: pin/unpin/edit round trips, search, links, rebuild,
and the write receipt with recalled memories."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from engine.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def listed(capsys, project):
    rc, out, _ = run(capsys, "memory", "list", "--project", project, "--json")
    assert rc == 0
    return {m["id"]: m for m in json.loads(out)}


def test_memory_round_trip(tmp_path, capsys):
    p = str(tmp_path / "book")
    assert run(capsys, "new", "--project", p, "--title", "Salt")[0] == 0
    rc, out, _ = run(capsys, "memory", "add", "--project", p, "Elena's eyes are grey.", "--pin")
    assert rc == 0 and "pinned" in out
    run(capsys, "memory", "add", "--project", p, "Tomas lives in Varn.")
    mems = listed(capsys, p)
    assert [(m["kind"], m["pinned"], m["text"]) for m in mems.values()] == [
        ("fact", True, "Elena's eyes are grey."), ("fact", False, "Tomas lives in Varn.")]
    assert run(capsys, "memory", "unpin", "--project", p, "1")[0] == 0
    assert run(capsys, "memory", "pin", "--project", p, "2")[0] == 0
    mems = listed(capsys, p)
    assert not mems[1]["pinned"] and mems[2]["pinned"]
    assert run(capsys, "memory", "edit", "--project", p, "1", "Elena's eyes are green.")[0] == 0
    assert listed(capsys, p)[1]["text"] == "Elena's eyes are green."
    assert run(capsys, "memory", "link", "--project", p, "1", "2")[0] == 0
    rc, out, _ = run(capsys, "memory", "search", "--project", p, "what colour are her eyes",
                     "--json")
    assert rc == 0 and json.loads(out)[0]["id"] == 1
    rc, out, _ = run(capsys, "memory", "rebuild", "--project", p)
    assert rc == 0 and "2 items" in out
    assert run(capsys, "memory", "delete", "--project", p, "2")[0] == 0
    assert list(listed(capsys, p)) == [1]
    # Bad input: a one-line reason and a non-zero exit.
    rc, _, err = run(capsys, "memory", "pin", "--project", p, "42")
    assert rc == 2 and "no memory 42" in err
    rc, _, err = run(capsys, "memory", "add", "--project", p, "   ")
    assert rc == 2 and "empty" in err
    rc, _, err = run(capsys, "memory", "link", "--project", p, "1", "memory:77")
    assert rc == 2 and "no memory 77" in err


def test_write_receipt_records_recalled_memories(tmp_path, capsys):
    p = str(tmp_path / "book")
    run(capsys, "new", "--project", p, "--title", "Salt")
    run(capsys, "memory", "add", "--project", p, "The lighthouse lamp burns green.", "--pin")
    run(capsys, "memory", "add", "--project", p, "Captain Harrow's ship is the Morning Gull.")
    receipt = tmp_path / "receipt.json"
    rc, _, err = run(capsys, "write", "--project", p, "--model", "tiny", "--tokens", "4",
                     "--seed", "1", "--prompt", "Captain Harrow sailed his ship into the bay.",
                     "--receipt", str(receipt))
    assert rc == 0, err
    blocks = json.loads(receipt.read_text())["blocks"]
    pinned = [b for b in blocks if b["kind"] == "pinned"]
    recalled = [b for b in blocks if b["kind"] == "recalled"]
    assert [b["text"] for b in pinned] == ["[Remember: The lighthouse lamp burns green.]\n"]
    assert recalled and recalled[0]["key"] == "memory:2" and recalled[0]["score"] > 0.3
    assert "similar" in recalled[0]["why"]


def test_list_json_through_the_real_entry_point(tmp_path):
    p = str(tmp_path / "book")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for argv in (["new", "--project", p, "--title", "Salt"],
                 ["memory", "add", "--project", p, "A fact", "--pin"]):
        subprocess.run([sys.executable, "-m", "engine", *argv], cwd=ROOT, env=env, check=True,
                       capture_output=True)
    out = subprocess.run([sys.executable, "-m", "engine", "memory", "list", "--project", p,
                          "--json"], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout
    assert json.loads(out) == [{"id": 1, "key": "memory:1", "kind": "fact", "pinned": True,
                                "text": "A fact", "score": None}]
