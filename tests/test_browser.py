"""The real UI in headless Chromium: what a writer does, click by click."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from ui_helpers import (OPENING, continue_and_wait, create_novel, editor, set_max_tokens,
                        start_chapter, start_writing, status, stop_writing)


def test_create_continue_stop_reload_undo(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "The Lighthouse")
    expect(page.locator("#chapters")).to_contain_text("Chapter 1")

    # Tokens stream in: the chapter grows past the opening while the model writes.
    start_writing(page, OPENING)
    written = stop_writing(page)
    assert written.startswith(OPENING) and len(written) > len(OPENING)
    # Stopped means stopped: nothing more arrives.
    page.wait_for_timeout(1500)
    assert editor(page).input_value() == written

    page.reload()
    expect(editor(page)).to_have_value(written)
    expect(page.locator("#chapters")).to_contain_text("Chapter 1")

    page.locator("#undo").click()
    expect(editor(page)).to_have_value(OPENING)
    page.locator("#redo").click()
    expect(editor(page)).to_have_value(written)


def test_retry_replaces_last_passage(app_server, page):
    url, _ = app_server
    start_chapter(page, url, "Retry Book")
    continue_and_wait(page)
    first = editor(page).input_value()
    assert len(first) > len(OPENING)
    page.locator("#retry").click()
    expect(editor(page)).not_to_have_value(first, timeout=60_000)
    expect(status(page)).to_contain_text("tok/s", timeout=60_000)
    second = editor(page).input_value()
    assert second.startswith(OPENING) and second != first
    # The old passage is not lost: undo walks back to the opening, redo to the retry.
    page.locator("#undo").click()
    expect(editor(page)).to_have_value(OPENING)


def test_bad_project_name_is_refused(app_server, page):
    url, projects = app_server
    page.goto(url)
    before = sorted(p.name for p in projects.iterdir())
    create_novel(page, url, "Escape", name="../../x")
    expect(status(page)).to_contain_text("not a valid project name")
    assert not (projects.parent.parent / "x").exists()
    assert sorted(p.name for p in projects.iterdir()) == before


def test_chapters_add_rename_reorder_delete(app_server, page):
    url, _ = app_server
    create_novel(page, url, "Chapters Book")
    # the new novel is open (not the last one's "Chapter 1") before a chapter is added
    expect(status(page)).to_contain_text("Created")
    expect(page.locator("#chapters")).to_contain_text("Chapter 1")
    page.locator("#add-chapter").click()
    expect(page.locator("#chapters")).to_contain_text("2. Chapter 2")
    title = page.locator("#chapter-title input, #chapter-title textarea").first
    expect(title).to_have_value("Chapter 2")  # the new chapter is open before renaming it
    title.fill("The Storm")
    page.locator("#rename-chapter").click()
    expect(page.locator("#chapters")).to_contain_text("2. The Storm")
    page.locator("#chapter-up").click()
    expect(page.locator("#chapters")).to_contain_text("1. The Storm")
    page.locator("#delete-chapter").click()
    expect(page.locator("#confirm-delete")).to_contain_text("The Storm")
    page.locator("#confirm-delete-no").click()
    expect(page.locator("#chapters")).to_contain_text("The Storm")
    page.locator("#delete-chapter").click()
    page.locator("#confirm-delete-yes").click()
    expect(status(page)).to_contain_text("moved to the trash")
    expect(page.locator("#chapters")).not_to_contain_text("The Storm")
