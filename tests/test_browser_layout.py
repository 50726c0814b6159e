"""The page as a novelist sees it: on a laptop screen (headless Chromium) the actions
stay in reach with a long chapter, the right-hand column stays beside the editor from
1280 px wide (a drawer below that), the editor follows the text the model writes, and Ctrl+Enter / Esc
continue and stop; and what the panels say is in the writer's words (the receipt
names chapters and quotes memories, the memory list is grouped by kind, the matrix
panel shows chapters and pins, its plot behind "Engineering details")."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from ui_helpers import (continue_and_wait, editor, on_disk, set_max_tokens, start_chapter,
                        status)

LONG = ("The keeper climbed the stairs of the lighthouse, counting each step as his "
        "father had counted them, and at the top he wound the clock of the lamp. ") * 22
LONG = LONG[:3000].rstrip() + "."

SCREENS = [(1024, 768), (1280, 900)]


@pytest.fixture
def screen_page(browser, request):
    w, h = request.param
    ctx = browser.new_context(viewport={"width": w, "height": h})
    pg = ctx.new_page()
    pg.set_default_timeout(90_000)
    yield pg
    ctx.close()


def _box(page, selector):
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not on the page"
    return box


def _inside(page, selector):
    """True when the element lies wholly inside the window."""
    box, vp = _box(page, selector), page.viewport_size
    return (box["y"] >= 0 and box["y"] + box["height"] <= vp["height"]
            and box["x"] >= 0 and box["x"] + box["width"] <= vp["width"])


def _distance_from_end(page) -> float:
    return editor(page).evaluate("t => t.scrollHeight - t.scrollTop - t.clientHeight")


def _at_end(page) -> bool:
    """The last line is in view (within a line of the very end)."""
    return _distance_from_end(page) <= 30


@pytest.mark.parametrize("screen_page", SCREENS, indirect=True, ids=["1024x768", "1280x900"])
def test_actions_and_receipt_within_the_first_screen(app_server, screen_page):
    page = screen_page
    url, _ = app_server
    w, h = page.viewport_size["width"], page.viewport_size["height"]
    start_chapter(page, url, f"Long Chapter {w}", LONG)
    page.reload()  # as the writer finds it the next day
    expect(editor(page)).to_have_value(LONG)
    page.screenshot(path=f"test-artifacts/layout-{w}x{h}.png")

    assert _inside(page, "#continue"), (_box(page, "#continue"), page.viewport_size)
    assert _inside(page, "#stop")
    # From 1280 px the side panels stand beside the page, the receipt on the first
    # screen; below that they are a drawer, one click away, instead of under the page.
    receipt, text = _box(page, "#receipt-panel"), _box(page, "#editor textarea")
    if w >= 1280:
        assert receipt["x"] >= text["x"] + text["width"], (receipt, text)
        assert receipt["y"] < h, receipt
    else:
        assert receipt["x"] >= w, receipt
        page.locator("#drawer-toggle").click()
        page.wait_for_function("() => { const r = document.querySelector('#receipt-panel')"
                               ".getBoundingClientRect(); return r.left >= 0 && "
                               "r.right <= innerWidth && r.top < innerHeight; }")
        page.locator("#drawer-toggle").click()
        page.wait_for_function("() => document.querySelector('#receipt-panel')"
                               ".getBoundingClientRect().left >= innerWidth - 1")
    # The chapter opens at its end: the last words are in view.
    assert _at_end(page), _distance_from_end(page)
    # The action bar stays at the bottom of the window while the page scrolls.
    page.mouse.move(w // 2, 20)
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("() => window.scrollY > 0")  # as far down as the page goes
    assert _inside(page, "#continue"), _box(page, "#continue")
    assert _inside(page, "#instruction"), _box(page, "#instruction")


@pytest.mark.parametrize("screen_page", [(1024, 768)], indirect=True, ids=["1024x768"])
def test_editor_follows_the_stream_and_shortcuts_continue_and_stop(app_server, screen_page):
    page = screen_page
    url, _ = app_server
    start_chapter(page, url, "Following", LONG)
    set_max_tokens(page, 1024)
    assert _at_end(page), _distance_from_end(page)

    # The buttons say their shortcuts.
    expect(page.locator("#continue")).to_have_attribute("title", re.compile(r"Ctrl\+Enter"))
    expect(page.locator("#stop")).to_have_attribute("title", re.compile("Esc"))
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+Enter")
    # The model writes: the chapter grows, and the view stays on its end.
    expect(editor(page)).to_have_value(re.compile(re.escape(LONG) + r".{40,}", re.S),
                                       timeout=60_000)
    grown = len(editor(page).input_value())
    page.wait_for_function(f"() => document.querySelector('#editor textarea').value.length"
                           f" > {grown + 40}", timeout=60_000)
    assert _at_end(page), _distance_from_end(page)
    page.screenshot(path="test-artifacts/layout-streaming.png")

    # The writer scrolls up to reread: the view stays where they put it.
    box = _box(page, "#editor textarea")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -600)
    page.wait_for_timeout(300)
    top = editor(page).evaluate("t => t.scrollTop")
    assert _distance_from_end(page) > 300
    now = len(editor(page).input_value())
    page.wait_for_function(f"() => document.querySelector('#editor textarea').value.length"
                           f" > {now + 40}", timeout=60_000)
    assert abs(editor(page).evaluate("t => t.scrollTop") - top) <= 2

    # Esc stops the Continue: nothing more arrives.
    page.keyboard.press("Escape")
    expect(status(page)).to_contain_text("Stopped", timeout=30_000)
    written = editor(page).input_value()
    page.wait_for_timeout(1500)
    assert editor(page).input_value() == written
    # Back at the end, the view follows again.
    page.mouse.wheel(0, 100_000)
    page.wait_for_timeout(300)
    assert _at_end(page), _distance_from_end(page)


def test_escape_when_nothing_is_written_does_nothing(app_server, page):
    url, _ = app_server
    start_chapter(page, url, "Quiet")
    page.keyboard.press("Escape")
    page.wait_for_timeout(1000)
    expect(status(page)).not_to_contain_text("Stopping")


# -- what the writer reads ----------------------------------------------------------------
FACT = "Elena's eyes are grey as slate, and she never learned to swim."
FILLER = ("The market was loud with traders selling copper pots and bolts of cloth. "
          "Carts rattled over the cobbles while the bell of the town hall rang noon. ")
INTERNAL = re.compile(r"(?:memory|passage|thought) ?\d|§|passage:|thought:|memory:")


def _plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("\\", "")


def test_receipt_names_the_chapter_and_quotes_the_text(novel):
    from engine.context import Receipt

    novel.store.add_chapter("The Storm", FILLER * 3 + FACT + " " + FILLER * 3, action="import")
    cid = novel.chapters.add("The crossing", "")
    novel.chapters.save(cid, FILLER * 2 + "At the shore Elena hesitated; she had never learned "
                    "to swim and the water frightened her.")
    novel.memories.add("Elena's eyes are grey; she keeps a stone from the lake.", pin=True)
    a = novel.memories.add("Elena keeps a slate-grey stone from the swimming lesson she fled.")
    b = novel.memories.add("The stone came from her brother Tomas.")
    novel.memories.link(a, b)
    novel.memories.set_settings(k=2)  # two similar hits; the link brings one in as tier 1
    _, receipt = novel.build_context(cid, budget=1500)
    md = _plain(Receipt(**receipt).markdown())
    assert "pinned: “Elena's eyes are grey; she keeps a stone from the lake.”" in md, md
    assert "recalled from Chapter 1 “The Storm”: “" in md, md
    assert "associated from your memories: “" in md, md
    assert "associated with your memory “" in md, md
    assert not INTERNAL.search(md), md
    # The keys stay in the receipt's data, for the tools that read it.
    assert any(bl.get("key", "").startswith("passage:") for bl in receipt["blocks"])


def test_quotes_are_cut_at_a_word_and_keep_markup_out():
    from engine.context import Receipt

    assert Receipt.quote("[Remember: Short fact.]\n") == "“Short fact.”"
    long = Receipt.quote("word " * 40)
    assert long.endswith("…”") and len(long) <= Receipt.QUOTE_CHARS + 3
    r = Receipt(budget=10, blocks=[{"kind": "pinned", "label": "x", "why": "pinned",
                                    "tokens": 3, "text": "[Remember: a *bold* <b>claim</b>]"}])
    assert "*bold*" not in r.markdown() and "<b>" not in r.markdown()


def test_memory_list_groups_facts_passages_and_notes(novel):
    from app.memory_panel import choices

    novel.store.add_chapter("The Storm", FILLER + FACT, action="import")
    cid = novel.chapters.id(1)
    novel.thoughts.add(cid, "Elena is afraid of the water; the lake comes back later.", anchor=10)
    novel.memories.add("Elena never learned to swim.", pin=True)
    novel.memories.add("Tomas, her brother, swims like a seal.")
    got = choices(novel, "swim")
    labels = [label for label, _ in got]
    kinds = [re.match(r"(?:📌 )?(Fact|Passage|Note)\b", x).group(1) for x in labels]
    assert kinds == sorted(kinds, key=["Fact", "Passage", "Note"].index), labels
    assert {"Fact", "Passage", "Note"} <= set(kinds), labels
    assert labels[0] == "📌 Fact: Elena never learned to swim."
    assert any(x.startswith("Passage in Chapter 1 “The Storm”: ") for x in labels), labels
    assert any(x.startswith("Note in Chapter 1 “The Storm”: Elena is afraid") for x in labels)
    assert not any(INTERNAL.search(x) for x in labels), labels
    # The values are still the keys the panel acts on.
    assert {k.split(":")[0] for _, k in got} == {"memory", "passage", "thought"}


def test_memory_search_in_the_page_names_kinds_not_keys(app_server, page):
    url, _ = app_server
    start_chapter(page, url, "Search Book")
    continue_and_wait(page, tokens=24)  # the model's passage is something to find
    page.locator("#memories").get_by_text("Memories", exact=True).first.click()
    page.locator("#memory-new textarea").fill(FACT)
    page.locator("#memory-add").click()
    expect(page.locator("#memory-status")).to_contain_text("Fact added")
    page.locator("#memory-search textarea, #memory-search input").first.fill("keeper")
    page.locator("#memory-search-btn").click()
    items = page.locator("#memory-list label")
    expect(items.first).to_contain_text("📌 Fact: " + FACT)
    expect(page.locator("#memory-list")).to_contain_text("Passage in Chapter 1: ")
    for label in items.all_inner_texts():
        assert re.match(r"(📌 )?(Fact|Passage|Note)( in Chapter 1)?: ", label.strip()), label


MATRIX_TEXT = ("The keeper of the north light kept a ledger of every ship that never came "
               "home, and in its margins he drew the faces of their sailors from memory. ") * 5
DROWNED = "The keeper's brother drowned off the north light."


def test_matrix_panel_shows_chapters_and_pins_plot_behind_details(app_server, page):
    url, projects = app_server
    start_chapter(page, url, "Margins", MATRIX_TEXT)
    page.locator("#memories").get_by_text("Memories", exact=True).first.click()
    page.locator("#memory-new textarea").fill(DROWNED)
    page.locator("#memory-new-pin input[type=checkbox]").uncheck()
    page.locator("#memory-add").click()
    expect(page.locator("#memory-status")).to_contain_text("Fact added")

    page.locator("#matrix-panel").get_by_text("Memory matrix", exact=True).first.click()
    summary = page.locator("#matrix-summary")
    expect(page.locator("#matrix-info")).to_contain_text("Off", timeout=60_000)
    page.locator("#matrix-on input[type=checkbox]").check()
    expect(page.locator("#matrix-status")).to_contain_text("Memory matrix on", timeout=60_000)
    expect(summary).to_contain_text("Written into the matrix")
    expect(summary.locator(".mx-chapters tr")).to_have_count(1)
    expect(summary).to_contain_text(re.compile(r"Chapter 1\s*100%"))
    expect(summary).to_contain_text("No memory holds pinned slots")
    # The slot-by-chapter plot is for engineers: out of sight until asked for.
    expect(page.locator("#matrix-plot .mx-r").first).to_be_hidden()

    page.locator("#matrix-memory input").click()
    page.get_by_role("option", name=re.compile("drowned")).click()
    page.locator("#matrix-pin").click()
    expect(page.locator("#matrix-status")).to_contain_text("now holds slots", timeout=60_000)
    pins = on_disk(projects, "Margins", lambda st: st.get_setting("matrix_pins"))
    slots = ", ".join(str(x) for x in sorted(pins["1"]))
    expect(summary).to_contain_text(f"📌 “{DROWNED}” holds 4 slots: {slots}")
    page.screenshot(path="test-artifacts/matrix-summary.png", full_page=True)

    page.locator("#matrix-details").get_by_text("Engineering details", exact=True).click()
    expect(page.locator("#matrix-plot .mx-r").first).to_be_visible()
    expect(page.locator("#matrix-plot .mx-pinned").first).to_be_visible()
