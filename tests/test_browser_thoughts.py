"""Margin notes in the real UI: a note appears after Continue, the writer edits it,
and the edit persists after a reload (and never enters the chapter)."""
from __future__ import annotations

from playwright.sync_api import expect

from ui_helpers import continue_and_wait, editor, on_disk, start_chapter, type_text


def test_edit_a_thought_and_it_persists(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Notes Book")
    continue_and_wait(page)
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

    # how often the model writes a note: a setting kept with the novel
    page.locator("#thoughts-every input").click()
    page.get_by_role("option", name="each paragraph").click()
    for _ in range(50):
        every = on_disk(projects, "Notes Book",
                        lambda st: (st.get_setting("thoughts") or {}).get("every"))
        if every == "paragraph":
            break
        page.wait_for_timeout(200)
    assert every == "paragraph"
    page.reload()
    expect(page.locator("#thoughts-every input")).to_have_value("each paragraph")
