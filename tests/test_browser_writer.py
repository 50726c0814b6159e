"""The writer's path in headless Chromium, with the bugs found by trying it: a paste is
saved without a click elsewhere, Retry keeps the replaced passage reachable, Delete acts
on the chapter it names and goes to a trash, a page reopened mid-passage follows the
model, errors during streaming stay readable, a stale tab never overwrites newer text."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from ui_helpers import (OPENING, continue_and_wait, create_novel, editor, model_note, on_disk,
                        set_max_tokens, start_chapter, start_writing, status, stop_writing,
                        type_text, wait_ready)


def _head_text(projects, name, chapter=0):
    # as a textarea shows it: the random test model writes bare carriage returns
    text = on_disk(projects, name, lambda st: st.chapters()[chapter]["text"] or "")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _wait_on_disk(page, projects, name, predicate, chapter=0, tries=50):
    for _ in range(tries):
        text = _head_text(projects, name, chapter)
        if predicate(text):
            return text
        page.wait_for_timeout(200)
    return text


def _chapter(page, title):
    return page.locator("#chapters label").filter(has_text=title)


def test_paste_is_saved_without_leaving_the_editor(app_server, browser):
    url, projects = app_server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000},
                              permissions=["clipboard-read", "clipboard-write"])
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    create_novel(page, url, "Paste Book")
    expect(status(page)).to_contain_text("Created")
    pasted = "Rain on the lamp-room glass, and the keeper counting ships."
    editor(page).click()
    page.evaluate("t => navigator.clipboard.writeText(t)", pasted)
    page.keyboard.press("Control+V")
    expect(editor(page)).to_have_value(pasted)
    # No blur, no typing: the paste alone reaches disk within a second or two.
    assert _wait_on_disk(page, projects, "Paste Book", lambda t: t == pasted) == pasted
    expect(status(page)).to_contain_text("Saved")
    # The chapter list counts the words as they are saved.
    expect(page.locator("#chapters")).to_contain_text("(10 words)")
    ctx.close()


def test_a_chapter_over_the_limit_is_refused_at_once(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Limit Book")
    from engine.store import MAX_CHAPTER_CHARS
    editor(page).fill("x" * (MAX_CHAPTER_CHARS + 1))
    expect(status(page)).to_contain_text("too long", timeout=30_000)
    assert _head_text(projects, "Limit Book") == OPENING


def test_retry_keeps_the_replaced_passage_reachable(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Versions Book")
    start_writing(page, OPENING)
    first = stop_writing(page)
    set_max_tokens(page, 16)
    page.locator("#retry").click()
    expect(editor(page)).not_to_have_value(first, timeout=60_000)
    expect(status(page)).not_to_contain_text("Stopped", timeout=60_000)
    expect(status(page)).to_contain_text("tok/s", timeout=60_000)
    second = editor(page).input_value()
    assert second != first and second.startswith(OPENING)

    versions = page.locator("#versions")
    expect(versions).to_be_visible()
    page.locator("#versions input").click()
    options = page.get_by_role("option")
    expect(options).to_have_count(2)
    options.first.click()  # the stopped passage the Retry replaced
    expect(editor(page)).to_have_value(first)
    assert _wait_on_disk(page, projects, "Versions Book", lambda t: t == first) == first

    # Undo goes back to the opening; Redo brings a passage back.
    page.locator("#undo").click()
    expect(editor(page)).to_have_value(OPENING)
    page.locator("#redo").click()
    expect(editor(page)).to_have_value(re.compile(re.escape(OPENING) + r".+", re.S))


def test_delete_names_its_chapter_and_goes_to_the_trash(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Trash Book")
    page.locator("#add-chapter").click()
    expect(page.locator("#chapters")).to_contain_text("2. Chapter 2")
    title = page.locator("#chapter-title input, #chapter-title textarea").first
    title.fill("Throwaway")
    title.press("Enter")  # Enter in the title box renames
    expect(page.locator("#chapters")).to_contain_text("2. Throwaway")

    page.locator("#delete-chapter").click()
    expect(page.locator("#confirm-delete")).to_contain_text("Throwaway")
    _chapter(page, "Chapter 1").click()  # the selection changes: the question goes
    expect(editor(page)).to_have_value(OPENING)
    expect(page.locator("#confirm-delete")).to_be_hidden()

    _chapter(page, "Throwaway").click()
    page.locator("#delete-chapter").click()
    expect(page.locator("#confirm-delete")).to_contain_text("Throwaway")
    page.locator("#confirm-delete-yes").click()
    expect(status(page)).to_contain_text("moved to the trash")
    expect(page.locator("#chapters")).not_to_contain_text("Throwaway")
    expect(page.locator("#chapters")).to_contain_text("Chapter 1")
    assert _head_text(projects, "Trash Book") == OPENING

    page.locator("#trash").get_by_text("Deleted chapters").first.click()
    page.locator("#trash-list input").click()
    page.get_by_role("option", name=re.compile("Throwaway")).click()
    page.locator("#trash-restore").click()
    expect(status(page)).to_contain_text("restored")
    expect(page.locator("#chapters")).to_contain_text("Throwaway")


def test_reopened_page_follows_the_passage_and_stop_works(app_server, browser):
    url, projects = app_server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    start_chapter(page, url, "Reopen Book")
    start_writing(page, OPENING, grown=4)
    page.close()  # the tab closes mid-passage; the model goes on writing

    page = ctx.new_page()
    page.set_default_timeout(90_000)
    page.goto(url)
    expect(editor(page)).to_have_value(re.compile(re.escape(OPENING) + r".{4,}", re.S))
    before = len(editor(page).input_value())
    # The reopened page streams the rest: the editor keeps growing without a reload.
    page.wait_for_function(
        "n => document.querySelector('#editor textarea').value.length > n + 8", arg=before,
        timeout=60_000)
    expect(editor(page)).not_to_be_editable()
    page.locator("#stop").click()
    expect(status(page)).to_contain_text("Stopped", timeout=30_000)
    expect(editor(page)).to_be_editable()
    written = editor(page).input_value()
    assert _wait_on_disk(page, projects, "Reopen Book", lambda t: t == written) == written
    ctx.close()


def test_errors_while_the_model_writes_stay_readable(app_server, page):
    url, _ = app_server
    start_chapter(page, url, "Busy Book")
    set_max_tokens(page, 1024)
    page.locator("#continue").click()
    expect(status(page)).to_contain_text("Writing", timeout=60_000)
    page.locator("#undo").click()
    expect(status(page)).to_contain_text("press Stop first")
    page.wait_for_timeout(1500)  # streaming goes on; the message must not be replaced
    expect(status(page)).to_contain_text("press Stop first")
    page.locator("#continue").click()
    expect(status(page)).to_contain_text("already writing")
    page.wait_for_timeout(1500)
    expect(status(page)).to_contain_text("already writing")
    page.locator("#stop").click()
    expect(status(page)).to_contain_text("Stopped", timeout=30_000)


def test_a_stale_tab_never_overwrites_a_newer_passage(app_server, browser):
    url, projects = app_server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    one, two = ctx.new_page(), ctx.new_page()
    for p in (one, two):
        p.set_default_timeout(90_000)
    start_chapter(one, url, "Two Tabs")
    two.goto(url)
    expect(editor(two)).to_have_value(OPENING)
    continue_and_wait(one, 16)
    newer = editor(one).input_value()
    assert newer != OPENING
    # The stale tab still shows the opening; the writer types in it.
    editor(two).click()
    editor(two).press("End")
    editor(two).press_sequentially(" Stale words.")
    expect(status(two)).to_contain_text("changed", timeout=30_000)
    expect(editor(two)).to_have_value(newer)  # the tab now shows the newer text
    assert _head_text(projects, "Two Tabs") == newer
    ctx.close()


def test_page_remembers_the_novel_title_form_and_sampling(app_server, page):
    url, _ = app_server
    start_chapter(page, url, "Settings Book")
    page.locator("#temperature input[type=number]").fill("0.55")
    page.locator("#temperature input[type=number]").press("Enter")
    set_max_tokens(page, 64)
    page.wait_for_timeout(1500)
    page.reload()
    expect(page.locator("#novel-select input")).to_have_value(re.compile("Settings Book"))
    expect(page.locator("#max-tokens input[type=number]")).to_have_value("64")
    expect(page.locator("#temperature input[type=number]")).to_have_value("0.55")
    # Novels exist: the "New novel" form stays folded on load.
    expect(page.locator("#new-title")).to_be_hidden()
    type_text(editor(page), OPENING + " One two three.")
    expect(page.locator("#chapters")).to_contain_text(
        f"({len((OPENING + ' One two three.').split())} words)")


def test_the_whole_writers_path(app_server, browser, tmp_path):
    """Create, type, paste, Continue, Stop, Retry, reach the replaced passage, import a
    Windows-1252 file, delete with a selection change, close and reopen mid-passage."""
    url, projects = app_server
    ctx = browser.new_context(viewport={"width": 1280, "height": 900},
                              permissions=["clipboard-read", "clipboard-write"])
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    start_chapter(page, url, "Path Book")                         # create, type
    editor(page).press("End")
    page.evaluate("t => navigator.clipboard.writeText(t)", " A gull cried twice.")
    page.keyboard.press("Control+V")                              # paste
    typed = OPENING + " A gull cried twice."
    assert _wait_on_disk(page, projects, "Path Book", lambda t: t == typed) == typed

    start_writing(page, typed)                                    # Continue, Stop
    stopped = stop_writing(page)
    set_max_tokens(page, 16)
    page.get_by_label("Seed (-1: random)").fill("1e30")             # a bad seed: said at once
    page.get_by_label("Seed (-1: random)").press("Enter")
    page.locator("#retry").click()
    expect(status(page)).to_contain_text("seed must be")
    assert editor(page).input_value() == stopped
    page.get_by_label("Seed (-1: random)").fill("-1")
    page.get_by_label("Seed (-1: random)").press("Enter")
    page.locator("#retry").click()                                # Retry
    expect(editor(page)).not_to_have_value(stopped, timeout=60_000)
    expect(status(page)).to_contain_text("tok/s", timeout=60_000)
    page.locator("#versions input").click()                       # the replaced passage
    page.get_by_role("option").first.click()
    expect(editor(page)).to_have_value(stopped)

    legacy = tmp_path / "harbour.txt"                             # import, any encoding
    legacy.write_bytes("Chapter 2\n\nThe caf\u00e9 on the quay was shut.\n".encode("cp1252"))
    page.get_by_text("Import and export", exact=True).first.click()
    page.locator("#import-files input[type=file]").set_input_files(str(legacy))
    page.locator("#import").click()
    expect(status(page)).to_contain_text("Read harbour.txt as windows-1252")
    expect(editor(page)).to_have_value(re.compile("The caf\u00e9 on the quay"))
    # the file box is emptied: pressing Import again does not bring the file in twice
    page.locator("#import").click()
    expect(status(page)).to_contain_text("Choose one or more")
    expect(page.locator("#chapters label")).to_have_count(2)

    page.locator("#delete-chapter").click()                       # delete, selection moves
    expect(page.locator("#confirm-delete")).to_contain_text("Chapter 2")
    _chapter(page, "Chapter 1").click()
    expect(page.locator("#confirm-delete")).to_be_hidden()
    _chapter(page, "Chapter 2").click()
    page.locator("#delete-chapter").click()
    page.locator("#confirm-delete-yes").click()
    expect(status(page)).to_contain_text("“Chapter 2” moved to the trash")
    expect(editor(page)).to_have_value(stopped)
    assert _head_text(projects, "Path Book") == stopped

    start_writing(page, stopped, grown=4)                         # close mid-passage
    page.close()
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    page.goto(url)                                                # reopen: it follows
    wait_ready(page)
    expect(editor(page)).to_have_value(re.compile(re.escape(stopped) + r".{4,}", re.S))
    page.locator("#stop").click()
    expect(status(page)).to_contain_text("Stopped", timeout=30_000)
    expect(editor(page)).to_be_editable()
    final = editor(page).input_value()
    assert _wait_on_disk(page, projects, "Path Book", lambda t: t == final) == final
    ctx.close()


def test_notes_follow_undo_and_redo(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Undo Notes Book")
    continue_and_wait(page)
    model_note(projects, "Undo Notes Book", "The keeper hides the letter.")  # see model_note
    page.reload()
    wait_ready(page)
    notes = page.locator("#thoughts-list")
    expect(notes).to_contain_text("The keeper hides the letter.", timeout=60_000)
    page.locator("#undo").click()
    expect(editor(page)).to_have_value(OPENING)
    expect(notes).not_to_contain_text("The keeper hides")  # the passage's notes go with it
    page.reload()
    wait_ready(page)  # Redo is pressed on the loaded page, not before it
    expect(page.locator("#thoughts-list")).not_to_contain_text("The keeper hides")
    page.locator("#redo").click()
    expect(page.locator("#thoughts-list")).to_contain_text("The keeper hides the letter.")
