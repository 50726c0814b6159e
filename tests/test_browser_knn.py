"""The "Long memory (kNN)" panel in headless Chromium: turn memory on, set k and
layers, rebuild, see the stored token count; checked against the novel's files."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from ui_helpers import continue_and_wait, on_disk, start_chapter

OPENING = "The keeper of the north light kept a ledger of every ship that never came home. "


def _stored(projects, name):
    return on_disk(projects, name, lambda st: (st.get_setting("knn"), st.chapters()[0]["text"]))


def test_knn_panel_on_k_rebuild(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "North Light", OPENING)

    page.locator("#knn-panel").get_by_text("Long memory (kNN)", exact=True).first.click()
    expect(page.locator("#knn-rebuild")).to_be_visible()
    status, info = page.locator("#knn-status"), page.locator("#knn-info")
    expect(info).to_contain_text("0 tokens")

    page.locator("#knn-on input[type=checkbox]").check()
    expect(status).to_contain_text("Long memory on")
    # turning it on builds the store at once (not in the middle of the next Continue)
    from engine.tiny import byte_tokenizer  # the slow test model's tokenizer kind
    n = len(byte_tokenizer()(OPENING.strip(), add_special_tokens=False).input_ids)
    expect(status).to_contain_text(f"{n:,} tokens stored.", timeout=60_000)
    expect(info).to_contain_text(re.compile(rf"\b{n:,} tokens"))
    page.locator("#knn-k input[type=number]").fill("12")
    page.locator("#knn-layers textarea, #knn-layers input").first.fill("9-11")
    page.locator("#knn-apply").click()
    expect(status).to_contain_text("Long memory on: 9-11, k 12.")
    expect(page.locator("#knn-layers textarea, #knn-layers input").first).to_have_value("9-11")
    setting, text = _stored(projects, "North Light")
    assert setting == {"on": True, "layers": [9, 10, 11], "k": 12}
    assert text.strip() == OPENING.strip()

    page.locator("#knn-rebuild").click()
    expect(status).to_contain_text("Rebuilt", timeout=60_000)
    expect(info).to_contain_text(re.compile(rf"\b{n:,} tokens"))
    expect(info).to_contain_text("layers 9-11")

    page.reload()  # the app reopens the last novel; the panel reads it back
    expect(page.locator("#editor textarea")).to_have_value(OPENING)
    page.locator("#knn-panel").get_by_text("Long memory (kNN)", exact=True).first.click()
    expect(page.locator("#knn-on input[type=checkbox]")).to_be_checked()
    expect(page.locator("#knn-k input[type=number]")).to_have_value("12")
    expect(info).to_contain_text(f"{n:,} tokens")

    page.locator("#knn-on input[type=checkbox]").uncheck()
    expect(status).to_contain_text("Long memory off")
    assert _stored(projects, "North Light")[0]["on"] is False


def test_import_then_continue_with_long_memory_matches_the_engine(app_server, page, tmp_path,
                                                                   slow_model_dir):
    """A writer imports two chapters through the page, turns long memory on, rebuilds
    it and presses Continue with a fixed seed. The passage must be the one the engine
    writes alone, from the same files and seed: whatever else the app runs meanwhile
    (embedding catch-up, panel refreshes) must not change what the model reads."""
    import shutil

    from conftest import DATA
    from engine.models import ModelSlot, load
    from engine.novel import Library
    from engine.writer import Sampling
    from ui_helpers import create_novel, editor, status

    url, projects = app_server
    lines = DATA.read_text(encoding="utf-8").splitlines()
    book = tmp_path / "longbourn.txt"
    book.write_text("\n".join(lines[36:261]), encoding="utf-8")  # chapters 1 and 2
    create_novel(page, url, "Longbourn")
    expect(status(page)).to_contain_text("Created")
    page.get_by_text("Import and export", exact=True).first.click()
    page.locator("#import-files input[type=file]").set_input_files(str(book))
    page.locator("#import").click()
    expect(status(page)).to_contain_text("Imported 2 chapter(s).")
    expect(editor(page)).to_have_value(re.compile(r"Mr\. Bennet was among the earliest"))

    page.locator("#knn-panel").get_by_text("Long memory (kNN)", exact=True).first.click()
    page.locator("#knn-on input[type=checkbox]").check()  # indexes the two chapters now
    expect(page.locator("#knn-status")).to_contain_text("tokens stored.", timeout=120_000)
    page.locator("#knn-rebuild").click()
    expect(page.locator("#knn-status")).to_contain_text("Rebuilt", timeout=120_000)
    page.get_by_label("Seed (-1: random)").fill("7")
    page.get_by_label("Seed (-1: random)").press("Enter")
    before = editor(page).input_value()
    continue_and_wait(page, tokens=24)
    expect(status(page)).to_contain_text("seed 7")
    page.locator("#receipt-panel").get_by_text("Context receipt", exact=True).first.click()
    expect(page.locator("#receipt")).to_contain_text(re.compile(r"Long memory \(kNN\): [\d,]+ of [\d,]+ stored tokens readable"))
    # its heading stands on its own, not run into the last prompt block's list item
    expect(page.locator("#receipt strong", has_text="Read inside attention")).to_be_visible()
    expect(page.locator("#receipt li", has_text="Read inside attention")).to_have_count(0)
    after = editor(page).input_value()
    assert after.startswith(before) and len(after) > len(before)

    # the engine alone, on a copy of the novel's files with the passage undone
    copy = tmp_path / "copy"
    shutil.copytree(projects / "Longbourn", copy / "Longbourn")
    novel = Library(copy, ModelSlot.ready(load(str(slow_model_dir)))).open("Longbourn")
    try:
        cid = novel.chapters.id(None)
        assert novel.chapters.text(cid) == after
        novel.chapters.undo(cid)
        assert novel.chapters.text(cid) == before
        done = list(novel.continue_chapter(cid, Sampling(max_new_tokens=24, seed=7)))[-1]
        assert done.text == after
    finally:
        novel.close()
