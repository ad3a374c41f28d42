"""The Attention tab in Chromium at 1280x720: a click on the layers x heads overview opens that layer and head (the
controls follow), the overview of a long context fills itself in, the map shows a window around the selected token
and fits the screen's view height, and no token of the text panel is broken across two lines."""
from __future__ import annotations

import pytest

from explorer.views.style import VIEW_HEIGHT
from tests.e2e.conftest import open_page

PROMPT = ("The students looked at the attention maps again, and one of them noticed that the first token collects "
          "attention whenever a head has nothing better to do. ")
MAP_TITLE = ("() => { const gd = document.querySelector('#attn-map .js-plotly-plot'); "
             "return (gd && gd.layout && gd.layout.title && gd.layout.title.text) || ''; }")
OVERVIEW_DONE = """() => {
    const gd = document.querySelector('#attn-grid .js-plotly-plot');
    return !!(gd && gd.layout && gd.layout.meta && gd.layout.meta.pending === false);
}"""

OUTLINE_AROUND = """([layer, head]) => {
    const box = document.querySelector('#attn-grid .js-plotly-plot').layout.shapes[0];
    return box.y0 < layer && layer < box.y1 && box.x0 < head && head < box.x1 && box.x1 - box.x0 < 1.01;
}"""


@pytest.fixture()
def small_page(browser, app_url):
    context, page = open_page(browser, app_url, {"width": 1280, "height": 720})
    yield page
    context.close()
    assert page.js_errors == []


def generate(page, prompt: str, n_new: int) -> None:
    page.fill("#prompt textarea", prompt)
    box = page.locator("#max-new-tokens input[type=number]")
    box.fill(str(n_new))
    box.press("Enter")
    page.locator("#greedy input").check()
    page.click("#generate")
    page.wait_for_function("() => /^(Done|Stopped)/.test(document.querySelector('#status').innerText)")


def open_attention(page) -> None:
    page.get_by_role("tab", name="Attention").click()
    page.wait_for_function(f"() => ({MAP_TITLE})().startsWith('Layer ')")
    page.wait_for_function(OVERVIEW_DONE)


def test_a_click_on_the_overview_opens_that_layer_and_head(small_page):
    page = small_page
    generate(page, PROMPT, 8)
    open_attention(page)
    page.locator("#attn-grid").scroll_into_view_if_needed()
    x, y = page.evaluate("""([layer, head]) => {
        const gd = document.querySelector('#attn-grid .js-plotly-plot');
        const L = gd._fullLayout, r = gd.getBoundingClientRect();
        return [r.left + L._size.l + L.xaxis.l2p(head), r.top + L._size.t + L.yaxis.l2p(layer)];
    }""", [12, 4])
    page.mouse.click(x, y)
    page.wait_for_function(f"() => ({MAP_TITLE})().startsWith('Layer 12, head 4')")
    page.wait_for_function("() => document.querySelector('#attn-layer input[type=number]').value === '12'")
    assert page.input_value("#attn-head input") == "4"
    page.wait_for_function(OUTLINE_AROUND, arg=[12, 4])
    # another layer from the slider: the overview is not sent again, its outline moves in the page
    page.locator("#attn-layer input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => ({MAP_TITLE})().startsWith('Layer 13, head 4')")
    page.wait_for_function(OUTLINE_AROUND, arg=[13, 4])


def test_long_context_map_window_fits_and_text_keeps_words_whole(small_page):
    page = small_page
    generate(page, PROMPT * 14, 4)  # about 300 tokens
    open_attention(page)
    rows = page.evaluate("() => document.querySelector('#attn-map .js-plotly-plot').data[0].y.length")
    assert rows == 160
    assert "of " in page.evaluate(MAP_TITLE) and "around the selected one" in page.evaluate(MAP_TITLE)
    assert page.locator("#attn-map .js-plotly-plot").bounding_box()["height"] <= VIEW_HEIGHT
    # a token split across two lines has two boxes with ink; breaks fall only before a space's ·
    broken = page.evaluate("""() => [...document.querySelectorAll('#attn-text .tok')]
        .filter((t) => [...t.getClientRects()].filter((r) => r.width > 1).length > 1)
        .map((t) => t.textContent)""")
    assert broken == []
    # a token clicked in the text is the selected one: outlined, and inside the map's window
    page.locator('#attn-text .tok[data-pos="20"]').click()
    page.wait_for_function("() => !!document.querySelector('#attn-text .tok.query[data-pos=\"20\"]')")
    page.wait_for_function("""() => {
        const y = document.querySelector('#attn-map .js-plotly-plot').data[0].y;
        return y[0].startsWith('0 ') && y.length === 160;
    }""")
