"""The "Long memory (kNN)" panel in headless Chromium: turn memory on, set k and
layers, rebuild, see the stored token count; checked against the novel's files."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from ui_helpers import on_disk, start_chapter

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
    from engine.tiny import byte_tokenizer  # the slow test model's tokenizer kind
    n = len(byte_tokenizer()(OPENING.strip(), add_special_tokens=False).input_ids)
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
