"""Margin notes in the real UI: the model's note on a passage shows beside the chapter,
the writer edits it in place in the margin, and the edit persists after a reload (and never
enters the chapter); how often the model writes one is a setting kept with the novel.
The page itself (notes beside their paragraphs, the writer's own notes, the mark on the
model's words) is tests/test_browser_page.py."""
from __future__ import annotations

from playwright.sync_api import expect

from ui_helpers import (continue_and_wait, editor, model_note, on_disk, start_chapter, status,
                        wait_ready)


MODEL_NOTE = "The keeper hides the letter under the lamp."


def test_edit_a_thought_and_it_persists(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Notes Book")
    continue_and_wait(page)
    model_note(projects, "Notes Book", MODEL_NOTE)
    page.reload()
    wait_ready(page)
    margin = page.locator("#thoughts-list")
    expect(margin).to_contain_text("💭 The model's note", timeout=60_000)
    expect(margin).to_contain_text(MODEL_NOTE)

    note = margin.locator(".mg-note").filter(has_text=MODEL_NOTE).locator(".mg-text")
    expect(note).not_to_have_text("")
    note.click()
    page.keyboard.press("Control+A")
    edit = "Elena must not open the letter until the storm ends."
    page.keyboard.type(edit)
    page.keyboard.press("Enter")
    expect(status(page)).to_contain_text("Note saved")
    expect(margin).to_contain_text(edit)
    texts = on_disk(projects, "Notes Book", lambda st: [r["text"] for r in st.thoughts.list()])
    assert edit in texts

    page.reload()
    wait_ready(page)
    expect(page.locator("#thoughts-list")).to_contain_text(edit)
    assert edit not in editor(page).input_value()
    page.locator("#thoughts-show input").uncheck()
    expect(page.locator("#thoughts-list")).to_contain_text("hidden")
    expect(page.locator("#thoughts-list")).not_to_contain_text(edit)

    # how often the model writes a note: a setting kept with the novel
    page.locator("#thoughts").get_by_text("how the model writes them").first.click()
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
    wait_ready(page)
    page.locator("#thoughts").get_by_text("how the model writes them").first.click()
    expect(page.locator("#thoughts-every input")).to_have_value("each paragraph")
