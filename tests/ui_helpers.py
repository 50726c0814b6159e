"""What a writer does in the browser, shared by the browser tests."""
from __future__ import annotations

import re

from playwright.sync_api import expect

OPENING = "The keeper climbed the stairs of the lighthouse."


def editor(page):
    return page.locator("#editor textarea")


def status(page):
    return page.locator("#status")


def type_text(locator, text):
    """Type as a writer does (Gradio saves on keyboard input, not on a scripted fill)."""
    locator.fill(text[:-8])
    locator.press_sequentially(text[-8:])


def wait_ready(page):
    """Until the page load has filled the page in."""
    expect(page.locator("#page-ready")).to_contain_text("ready")


def create_novel(page, url, title="The Lighthouse", name=""):
    page.goto(url)
    fields = page.locator("#new-title textarea, #new-title input").first
    wait_ready(page)  # the page load decides whether the form starts open
    if not fields.is_visible():  # folded once the library has novels
        page.locator("#new-novel").get_by_text("New novel", exact=True).first.click()
    boxes = [(fields, title),
             (page.locator("#new-premise textarea"), "A keeper guards a secret.")]
    if name:
        boxes.append((page.locator("#new-name textarea, #new-name input").first, name))
    for _ in range(5):  # a form just unfolded can still be re-rendered over a first fill
        for box, value in boxes:
            box.fill(value)
        page.wait_for_timeout(300)
        if all(box.input_value() == value for box, value in boxes):
            break
    page.locator("#create-novel").click()


def saved(page, text, timeout: int = 60_000):
    """Until the autosave has saved the editor's ``text`` (not an earlier part of it)."""
    n = len(text.replace("\r\n", "\n").replace("\r", "\n"))
    expect(page.locator(f"#status .saved-{n}")).to_have_count(1, timeout=timeout)


def start_chapter(page, url, title, text=OPENING):
    """A new novel whose first chapter holds the typed ``text``, saved."""
    create_novel(page, url, title)
    expect(status(page)).to_contain_text("Created")
    type_text(editor(page), text)
    saved(page, text)


def set_max_tokens(page, n: int):
    page.locator("#max-tokens input[type=number]").fill(str(n))
    page.locator("#max-tokens input[type=number]").press("Enter")


def continue_and_wait(page, tokens: int = 16, timeout: int = 120_000):
    """Press Continue and wait for the passage to finish."""
    set_max_tokens(page, tokens)
    page.locator("#continue").click()
    expect(status(page)).to_contain_text("tok/s", timeout=timeout)


def on_disk(projects, name, read):
    """``read(store)`` on the novel's own files: what the UI claims is checked there."""
    from engine.store import Store

    st = Store.open(projects / name)
    try:
        return read(st)
    finally:
        st.close()


def model_note(projects, name, text: str) -> None:
    """A margin note as a Continue records one: the model's, on its last passage, at the
    end of the first chapter. (The random test model's own notes rarely pass the note
    checks, so a test that needs one writes it; the page shows it after a reload.)"""
    from engine.thoughts import ThoughtBook

    def write(st):
        cid = st.chapters()[0]["id"]
        ThoughtBook(st).add(cid, len(st.chapter(cid)["text"]), text,
                            passage_id=max(st.passages.ids()), author="model")
    on_disk(projects, name, write)


def start_writing(page, before: str, grown: int = 8):
    """Press Continue with room to write; wait until the model has added ``grown``
    characters to ``before``."""
    set_max_tokens(page, 1024)
    page.locator("#continue").click()
    expect(editor(page)).to_have_value(re.compile(re.escape(before) + rf".{{{grown},}}", re.S),
                                       timeout=60_000)


def stop_writing(page) -> str:
    """Press Stop, wait until it has stopped; the chapter as it stands."""
    page.locator("#stop").click()
    expect(status(page)).to_contain_text("Stopped", timeout=30_000)
    return editor(page).input_value()
