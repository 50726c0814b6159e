"""What the writer sees when a page action fails: a UserError's own message; anything
else (a bug) is "Internal error, details in the log", logged with its traceback.

The handlers are called as Gradio calls them (the functions wired to the page's
buttons, found by elem_id), without a browser."""
from __future__ import annotations

import logging

import pytest

from app.actions import INTERNAL, action, configure_logging
from engine.errors import UserError
from engine.novel import NovelError

LOGGER = "mnemosyne"


@pytest.fixture
def page(library):
    from app.ui import build

    return build(library)


def handler(demo, elem_id, event="click"):
    """The function Gradio runs when the component ``elem_id`` fires ``event``."""
    ids = {i for i, b in demo.blocks.items() if getattr(b, "elem_id", None) == elem_id}
    fns = [f.fn for f in demo.fns.values() if any(t in ids and ev == event
                                                  for t, ev in f.targets)]
    assert len(fns) == 1, (elem_id, event, fns)
    return fns[0]


def update(x):
    """A gr.update() (a dict) or a component given as an update."""
    return x if isinstance(x, dict) else x.get_config() if hasattr(x, "get_config") else x


def test_an_internal_error_is_logged_and_not_shown_as_the_writers(page, novel, monkeypatch,
                                                                 caplog):
    name = novel.folder.name

    def broken(self, title, premise, style):
        raise ValueError("a bug deep inside: not the writer's doing")

    monkeypatch.setattr(type(novel), "set_bible", broken)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        status, picker = handler(page, "bible-save")(name, "T", "P", "S")
    assert INTERNAL in status and "not the writer's doing" not in status
    assert picker == {"__type__": "update"}  # the other output is left as it is
    logged = [r for r in caplog.records if r.name == LOGGER and r.exc_info]
    assert logged, caplog.text
    assert "a bug deep inside" in caplog.text and "Traceback" in caplog.text
    assert "in broken" in caplog.text  # the traceback reaches the failing frame


def test_a_user_error_shows_its_message_and_logs_nothing(page, novel, monkeypatch, caplog):
    def refused(self, title, premise, style):
        raise NovelError("The title is too long.")

    monkeypatch.setattr(type(novel), "set_bible", refused)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        status, _ = handler(page, "bible-save")(novel.folder.name, "T", "P", "S")
    assert "The title is too long." in status and INTERNAL not in status
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_no_open_novel_is_the_writers_error(page):
    status, _ = handler(page, "bible-save")(None, "T", "P", "S")
    assert "Open a novel first." in status


def test_the_streamed_continue_shows_an_internal_error_and_gives_the_editor_back(
        page, novel, monkeypatch, caplog):
    cid = novel.chapters.add("One", "The keeper climbed the stairs.")
    cont = handler(page, "continue")
    args = (novel.folder.name, cid, novel.chapters.text(cid), None, 0.8, 0.95, 8, 1)

    def broken_start(self, *a, **kw):
        raise KeyError("bug before the first token")

    monkeypatch.setattr(type(novel), "start", broken_start)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        outs = list(cont(*args))
    assert INTERNAL in outs[-1][1]
    assert "bug before the first token" in caplog.text and "Traceback" in caplog.text

    # Failing mid-stream (the engine's job raised): the editor is given back, editable.
    class Job:
        chapter_id = None

        def events(self):
            raise RuntimeError("bug while streaming")
            yield  # noqa: unreachable - a generator

    monkeypatch.setattr(type(novel), "start", lambda self, *a, **kw: Job())
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        outs = list(cont(*args))
    editor, status = update(outs[-1][0]), outs[-1][1]
    assert INTERNAL in status
    assert editor.get("interactive") is True and editor.get("value") == novel.chapters.text(cid)
    assert "bug while streaming" in caplog.text and "Traceback" in caplog.text

    # A writer's error from the engine is shown as is.
    def refused(self, *a, **kw):
        raise NovelError("The model is already writing in this novel; wait or press Stop.")

    monkeypatch.setattr(type(novel), "start", refused)
    outs = list(cont(*args))
    assert "already writing" in outs[-1][1] and INTERNAL not in outs[-1][1]


def test_the_decorator_fills_the_outputs_it_is_told(library, novel):
    seen = []

    @action(3, 1, lib=library, chapter="Pick a chapter first.", others={2: None})
    def fn(n, cid):
        seen.append((n, cid))
        if cid == 2:
            raise UserError("No such chapter.")
        if cid == 3:
            raise TypeError("bug")
        return "a", "b", "c"

    name = novel.folder.name
    assert fn(name, 1) == ("a", "b", "c") and seen == [(novel, 1)]  # the novel, opened
    out = fn(None, 1)
    assert out[0] == {"__type__": "update"} and "Open a novel first." in out[1] \
        and out[2] is None
    assert "Pick a chapter first." in fn(name, None)[1]
    assert "No such chapter." in fn(name, 2)[1]
    assert INTERNAL in fn(name, 3)[1]

    @action(2, 0, lib=library, needs=None,
            on_error=lambda msg, name, x: (msg, f"view of {name}"))
    def gen(n, x):
        yield "first", x
        raise RuntimeError("bug after the first update")

    assert list(gen(None, 1))[0] == ("first", 1)
    last = list(gen(name, 1))[-1]
    assert INTERNAL in last[0] and last[1] == f"view of {name}"


def test_a_full_disk_is_the_writers_error(library, caplog):
    import errno

    @action(1)
    def write():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/memory/index.faiss")

    @action(1)
    def missing():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")

    assert "No space left on device" in write() and INTERNAL not in write()
    assert INTERNAL in missing()


def test_the_log_file_holds_the_traceback(tmp_path):
    path = configure_logging(tmp_path)
    log = logging.getLogger(LOGGER)
    try:
        assert path == tmp_path / "mnemosyne.log"

        @action(1)
        def broken():
            return {}["missing key"]

        shown = broken()
        assert str(path) in shown  # the writer is told where the details are
        for h in log.handlers:
            h.flush()
        text = path.read_text()
        assert "KeyError: 'missing key'" in text and "Traceback" in text
        configure_logging(tmp_path)  # again: the same file, no second handler
        assert sum(isinstance(h, logging.FileHandler) for h in log.handlers) == 1
    finally:
        configure_logging(None)  # stderr only: the file of this test is let go
    assert not any(isinstance(h, logging.FileHandler) for h in log.handlers)
