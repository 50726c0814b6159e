"""The house rules of the code's shape (issue 14): no import circle inside engine/ and
app/, nothing at run time imports engine/train, and the command line runs its light
commands without torch."""
from __future__ import annotations

import ast
import json
import subprocess
import sys

from conftest import ROOT

# Python started with torch made unimportable, then the CLI's main on argv.
NO_TORCH = ("import sys; sys.modules['torch'] = None; "
            "from engine.__main__ import main; sys.exit(main(sys.argv[1:]))")


def cli_without_torch(*args):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_help_runs_without_torch():
    p = cli_without_torch("--help")
    assert p.returncode == 0, p.stderr
    assert "Mnemosyne: a novel writer that remembers." in p.stdout
    for command in ("new", "list", "write", "bench", "score", "train"):
        assert command in p.stdout
    for command, names in (("bench", ("speed", "recall", "perplexity", "sentiment",
                                      "continuity", "matrix", "prose")),
                           ("train", ("thoughts", "memory", "knn"))):
        p = cli_without_torch(command, "--help")
        assert p.returncode == 0, p.stderr
        assert all(n in p.stdout for n in names)
        assert "kNN memory's read gate" in p.stdout or command == "bench"


def test_list_runs_without_torch(novel):
    """A novel written in with the tiny model (its kNN and matrix settings stored) lists
    without torch."""
    from engine.writer import Sampling

    cid = novel.chapters.add("The Storm", "The lamp went out at midnight.")
    for _ in novel.continue_chapter(cid, Sampling(max_new_tokens=4, seed=1)):
        pass
    words = novel.chapters.list()[0]["words"]
    folder = novel.folder
    novel.close()
    p = cli_without_torch("list", "--project", folder)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "The Lighthouse"
    assert "The Storm" in p.stdout and f"{words} words" in p.stdout
    p = cli_without_torch("list", "--project", folder, "--json")
    assert p.returncode == 0, p.stderr
    assert [c["title"] for c in json.loads(p.stdout)] == ["The Storm"]


# -- imports, read from the source (every import statement, at any depth) -------------------
PACKAGES = ("engine", "app")


def _modules() -> dict:
    """{dotted module name: path} of every .py file under engine/ and app/."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imported(name: str, path, node, modules) -> set:
    """The modules of ``modules`` an import statement of module ``name`` (at ``path``)
    reaches: relative imports resolved, ``from pkg import mod`` counted as mod."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        if node.level:
            base = name.split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict:
    """{module: set of modules it imports} inside engine/ and app/, from every import
    statement of each file (module level or inside a function)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _imported(name, path, node, modules)
        graph[name] = deps
    return graph


def strongly_connected(graph: dict) -> list[list[str]]:
    """The components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _cycle(graph: dict, comp: list[str]) -> list[str]:
    """One import circle through the component's first module: a -> b -> ... -> a."""
    inside, start = set(comp), comp[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & inside):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return comp


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_circle_inside_engine_and_app():
    graph = import_graph()
    assert "engine.memory.attention" in graph and "app.ui" in graph
    assert "engine.memory.knn" in graph["engine.memory.attention"]  # imports are seen
    circles = [" -> ".join(_cycle(graph, comp)) for comp in strongly_connected(graph)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_nothing_at_run_time_imports_train():
    """engine/train is a leaf: what loads a trained adapter lives beside what it adapts
    (engine/adapters.py, memory/knn_gate.py, memory/matrix_adapter.py). Only training,
    the benchmarks and the CLI's ``train`` command (importlib, when it runs) reach it."""
    graph = import_graph()
    allowed = ("engine.train", "engine.evals")
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items()
                 if not (m == "engine.train" or m.startswith(tuple(a + "." for a in allowed)))
                 for d in deps if d == "engine.train" or d.startswith("engine.train."))
    assert not bad, "\n".join(bad)


# -- sizes: small modules, a small facade ------------------------------------------------------
MAX_FILE_LINES = 500
MAX_NOVEL_LINES = 200


def test_no_source_file_over_500_lines():
    big = sorted(f"{p.relative_to(ROOT)}: {n} lines"
                 for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                 if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES)
    assert not big, "split these by concern:\n" + "\n".join(big)


def test_the_novel_facade_stays_small():
    """Novel only wires its rooms; what it does lives in them (chapters, memories,
    thoughts, knn, matrix, settings, the pipeline)."""
    tree = ast.parse((ROOT / "engine" / "novel.py").read_text(encoding="utf-8"))
    novel = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Novel")
    lines = novel.end_lineno - novel.lineno + 1
    assert lines < MAX_NOVEL_LINES, f"Novel is {lines} lines"
    from engine.novel import Novel
    public = [m for m in vars(Novel) if not m.startswith("_")]
    assert len(public) <= 16, public  # was 62 public methods, grouped by name prefix
