"""The "Memory matrix" panel in headless Chromium: turn it on, see the plot of what was
written, pin a memory's slots, reload, reset; checked against the novel's files."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from ui_helpers import on_disk, start_chapter

TEXT = ("The keeper of the north light kept a ledger of every ship that never came home, "
        "and in its margins he drew the faces of their sailors from memory. ") * 5
FACT = "The keeper's brother drowned off the north light."


def _open(page):
    page.locator("#matrix-panel").get_by_text("Memory matrix", exact=True).first.click()
    expect(page.locator("#matrix-apply")).to_be_visible()
    # the slot plot is behind "Engineering details" (the summary is for the writer)
    page.locator("#matrix-details").get_by_text("Engineering details", exact=True).click()


def _pins(projects, name):
    return on_disk(projects, name, lambda st: st.get_setting("matrix_pins"))


def test_matrix_panel_plot_pin_reload_reset(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Ledger", TEXT)
    page.locator("#memories").get_by_text("Memories", exact=True).first.click()
    page.locator("#memory-new textarea").fill(FACT)
    page.locator("#memory-new-pin input[type=checkbox]").uncheck()
    page.locator("#memory-add").click()
    expect(page.locator("#memory-status")).to_contain_text("Fact added")

    _open(page)
    status, info, plot = (page.locator("#matrix-status"), page.locator("#matrix-info"),
                          page.locator("#matrix-plot"))
    expect(info).to_contain_text("Off", timeout=60_000)  # the panel has shown this novel
    page.locator("#matrix-on input[type=checkbox]").check()
    expect(status).to_contain_text("Memory matrix on", timeout=60_000)
    n = len(TEXT.strip().encode()) // 256  # byte tokenizer: full 256-token segments
    expect(info).to_contain_text(f"{n} segments written")
    expect(plot.locator(".mx-r")).to_have_count(65)       # header + 64 slot groups
    expect(plot.locator(".mx-pinned")).to_have_count(0)

    page.locator("#matrix-memory input").click()
    page.get_by_role("option", name=re.compile("drowned")).click()
    expect(page.locator("#matrix-memory input")).to_have_value(re.compile("drowned"))
    page.locator("#matrix-pin").click()
    expect(status).to_contain_text("now holds slots", timeout=60_000)
    pins = _pins(projects, "Ledger")
    assert list(pins) == ["1"] and len(pins["1"]) == 4
    groups = {s // 64 for s in pins["1"]}
    expect(plot.locator(".mx-pinned")).to_have_count(len(groups))

    page.reload()
    _open(page)
    expect(page.locator("#matrix-on input[type=checkbox]")).to_be_checked()
    page.locator("#matrix-refresh").click()
    expect(plot.locator(".mx-pinned")).to_have_count(len(groups), timeout=60_000)
    expect(info).to_contain_text("4 slots pinned")

    page.locator("#matrix-reset").click()
    expect(status).to_contain_text("written again", timeout=60_000)
    assert list(_pins(projects, "Ledger")) == ["1"]
    expect(info).to_contain_text(f"{n} segments written")
