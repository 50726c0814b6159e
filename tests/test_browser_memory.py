"""The memory panel in headless Chromium: add, pin/unpin, edit, preview the context,
reload, delete; what the UI shows is checked against what the novel stored."""
from __future__ import annotations

from playwright.sync_api import expect

from ui_helpers import create_novel, on_disk

FACT = "Elena's eyes are grey; she never learned to swim."
EDITED = "Elena's eyes are green; she swims like a seal."


def _open_panel(page):
    page.locator("#memories").get_by_text("Memories", exact=True).first.click()
    expect(page.locator("#memory-add")).to_be_visible()


def _stored(projects, name):
    return on_disk(projects, name, lambda st: st.query(
        "SELECT id, pinned, text FROM memories ORDER BY id"))


def test_memory_panel_round_trip(app_server, page):
    url, projects = app_server
    calls = []
    page.on("request", lambda r: calls.append(r.url) if "queue/join" in r.url else None)
    create_novel(page, url, "Salt Book")
    expect(page.locator("#status")).to_contain_text("Created")
    # Once the novel is open the page goes quiet: a load racing "Create" once set the
    # novel dropdown re-firing its change event, ~10 panel refreshes a second, forever.
    page.wait_for_timeout(1000)
    before = len(calls)
    page.wait_for_timeout(3000)
    assert len(calls) - before <= 3, f"{len(calls) - before} events in 3 s of idling"
    _open_panel(page)
    mem_list, status = page.locator("#memory-list"), page.locator("#memory-status")

    page.locator("#memory-new textarea").fill(FACT)
    page.locator("#memory-add").click()
    expect(status).to_contain_text("Fact added")
    expect(mem_list).to_contain_text("📌 Fact: " + FACT)
    assert _stored(projects, "Salt Book") == [{"id": 1, "pinned": 1, "text": FACT}]

    page.locator("#preview-context").click()
    expect(page.locator("#receipt")).to_contain_text("pinned: “Elena's eyes are grey")
    expect(page.locator("#receipt")).to_contain_text("pinned by the writer")

    mem_list.get_by_text(FACT).click()
    expect(page.locator("#memory-text textarea")).to_have_value(FACT)
    page.locator("#memory-unpin").click()
    expect(status).to_contain_text("Unpinned")
    expect(mem_list).not_to_contain_text("📌 Fact")
    page.locator("#memory-text textarea").fill(EDITED)
    page.locator("#memory-save").click()
    expect(status).to_contain_text("Memory saved")
    expect(mem_list).to_contain_text("Fact: " + EDITED)
    assert _stored(projects, "Salt Book") == [{"id": 1, "pinned": 0, "text": EDITED}]

    page.reload()
    _open_panel(page)
    expect(mem_list).to_contain_text("Fact: " + EDITED)
    expect(mem_list).not_to_contain_text("📌 Fact")
    mem_list.get_by_text(EDITED).click()
    page.locator("#memory-pin").click()
    expect(mem_list).to_contain_text("📌 Fact: " + EDITED)
    page.locator("#memory-search textarea, #memory-search input").first.fill("seal")
    page.locator("#memory-search-btn").click()
    expect(mem_list).to_contain_text(EDITED)

    mem_list.get_by_text(EDITED).click()
    page.locator("#memory-delete").click()
    expect(status).to_contain_text("Memory deleted")
    expect(mem_list).not_to_contain_text("Fact: ")
    assert _stored(projects, "Salt Book") == []
