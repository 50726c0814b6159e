"""The rule of the house: all SQL lives in engine/store/ (its tables as objects,
``store.memories.add(...)``); every other module of engine/ and app/ calls those.

The scan reads each file's syntax tree: a string (plain, f-string, implicit or '+'
concatenation) that reads like an SQL statement, or a call to ``.execute``,
``.executemany``, ``.executescript`` or ``.query`` on anything, fails with file:line."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("engine", "app")
ALLOWED = ROOT / "engine" / "store"  # the one place SQL may be written
SQL_CALLS = {"execute", "executemany", "executescript", "query"}
# Upper-case keywords as SQL is written here; prose ("Select the sentence") never matches.
SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT(\s+OR\s+[A-Z]+)?\s+INTO|REPLACE\s+INTO"
                 r"|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX|VIEW"
                 r"|TRIGGER)|DROP\s+(TABLE|INDEX|VIEW)|ALTER\s+TABLE|PRAGMA\s+\w+"
                 r"|WITH\s+RECURSIVE|BEGIN\s+(IMMEDIATE|EXCLUSIVE|TRANSACTION)|VACUUM\b)\b",
                 re.S)


def _text(node) -> str | None:
    """The literal text of a string expression ('{}' for an f-string's holes)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    return None


def sql_sites(source: str, name: str = "<string>") -> list[tuple[int, str]]:
    """(line, what) of each SQL statement or database call in ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source, name)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in SQL_CALLS):
            found.add((node.lineno, f".{node.func.attr}(...) call"))
        elif isinstance(node, ast.FormattedValue):
            continue
        else:
            text = _text(node)
            if text is not None and (m := SQL.search(text)):
                found.add((node.lineno, f"SQL text {m.group(0)[:40]!r}"))
    return sorted(found)


def _files():
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if ALLOWED not in path.parents:
                yield path


def test_no_sql_outside_the_store():
    bad = [f"{path.relative_to(ROOT)}:{line}: {what}"
           for path in _files()
           for line, what in sql_sites(path.read_text(encoding="utf-8"), str(path))]
    assert not bad, ("SQL outside engine/store/ (add a named method to a table in "
                     "engine/store/tables.py and call that):\n" + "\n".join(bad))


def test_the_scan_sees_sql_in_every_form():
    source = '''
db.execute("DELETE FROM memories WHERE id=?", (1,))
rows = store.query("x")
a = "SELECT id, text " "FROM thoughts"
b = f"SELECT COUNT(*) FROM {table}"
c = "UPDATE chapters " + "SET position=?"
d = "INSERT OR REPLACE INTO associations (a, b) VALUES (?, ?)"
e = "PRAGMA user_version"
f = "WITH RECURSIVE shown(id) AS (...)"
'''
    assert sorted({line for line, _ in sql_sites(source)}) == [2, 3, 4, 5, 6, 7, 8, 9]


def test_the_scan_leaves_prose_and_other_calls_alone():
    source = '''
raise NovelError("Select the sentence to pin first.")
msg = "Update the settings, then delete from the list what you do not need."
store.memories.add("The creation of the table was a select affair.")
x = re.search("a", "b"); y = lm.encode("SELECT")
'''
    assert sql_sites(source) == []


def test_the_store_itself_is_where_sql_is():
    assert ALLOWED.is_dir() and any(sql_sites(p.read_text(encoding="utf-8"))
                                    for p in ALLOWED.glob("*.py"))
