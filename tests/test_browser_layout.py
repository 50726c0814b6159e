"""The page as a novelist sees it on a laptop screen, in headless Chromium: the actions
stay in reach with a long chapter, the right-hand column stays beside the editor from
1024 px wide, the editor follows the text the model writes, and Ctrl+Enter / Esc
continue and stop."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from ui_helpers import editor, set_max_tokens, start_chapter, status

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
    # The right-hand column stands beside the editor, its receipt on the first screen.
    receipt, text = _box(page, "#receipt-panel"), _box(page, "#editor textarea")
    assert receipt["x"] >= text["x"] + text["width"], (receipt, text)
    assert receipt["y"] < h, receipt
    # The chapter opens at its end: the last words are in view.
    assert _at_end(page), _distance_from_end(page)
    # The action bar stays at the bottom of the window while the page scrolls.
    page.mouse.move(w // 2, 20)
    page.evaluate("window.scrollBy(0, 400)")
    page.wait_for_timeout(200)
    assert page.evaluate("window.scrollY") > 100
    assert _inside(page, "#continue"), _box(page, "#continue")


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
