"""Margin notes in the real UI: a note appears after Continue, the writer edits it,
and the edit persists after a reload (and never enters the chapter)."""
from __future__ import annotations

from playwright.sync_api import expect

from test_browser import OPENING, create_novel, editor, status, type_text


def test_edit_a_thought_and_it_persists(app_server, page):
    url, _ = app_server
    create_novel(page, url, "Notes Book")
    expect(status(page)).to_contain_text("Created")
    type_text(editor(page), OPENING)
    expect(status(page)).to_contain_text("Saved")
    page.locator("#max-tokens input[type=number]").fill("16")
    page.locator("#max-tokens input[type=number]").press("Enter")
    page.locator("#continue").click()
    expect(status(page)).to_contain_text("tok/s", timeout=120_000)
    expect(page.locator("#thoughts-list")).to_contain_text("💭", timeout=60_000)

    page.locator("#thought-pick input").click()
    page.get_by_role("option").first.click()
    # The picked note loads into the editor box before the writer changes it.
    expect(page.locator("#thought-text textarea")).not_to_have_value("")
    edit = "Elena must not open the letter until the storm ends."
    type_text(page.locator("#thought-text textarea"), edit)
    page.locator("#thought-save").click()
    expect(page.locator("#thought-status")).to_contain_text("Note saved")
    expect(page.locator("#thoughts-list")).to_contain_text(edit)

    page.reload()
    expect(page.locator("#thoughts-list")).to_contain_text(edit)
    assert edit not in editor(page).input_value()
    page.locator("#thoughts-show input").uncheck()
    expect(page.locator("#thoughts-list")).to_contain_text("hidden")
