"""A whole lesson as a teacher plays it on a 1280x720 projector: an example prompt, a long sampled run with every tab
opened in turn while they stream, clicks on tokens and plot cells, layer / head / step changes, Stop, a 600-word
prompt and the Examples menu after typing. It fails on any error toast, any traceback in the server's log (the
conftest's fixture), a typed prompt changed by anything but the user, a view not following the selection, or the
text and the open view not both inside the first screen."""
from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import HANG, LONG_RUN, open_page, output_text

PROJECTOR = {"width": 1280, "height": 720}
# each tab, the element that is its view (it must be on the first screen with the text), and a test in the page that
# it shows the selected position p
VIEWS = {
    "Tokens": ("#token-chips", "(p) => !!document.querySelector(`#token-chips .tok.sel[data-pos=\"${p}\"]`)"),
    "Embeddings": ("#emb-projection", "(p) => plotTitle('#emb-trajectory').startsWith(`Position ${p} `)"),
    "Attention": ("#attn-map", "(p) => document.querySelector('#attn-text').innerText.includes(`token ${p}`)"),
    "Next token": ("#next-token-bars", "(p) => plotTitle('#next-token-bars').includes(`position ${p}`)"),
    "Logit lens": ("#logit-lens", "(p) => outlines('#logit-lens', p)"),
    "Architecture": ("#arch-diagram", None),
}
HELPERS = """() => {
    window.plotTitle = (sel) => {
        const el = document.querySelector(sel + ' .js-plotly-plot');
        return (el && el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) + '';
    };
    window.outlines = (sel, p) => {  // the plot outlines the column of position p
        const el = document.querySelector(sel + ' .js-plotly-plot');
        return !!(el && el.layout && (el.layout.shapes || []).some(s => s.x0 === p - 0.5));
    };
    window.__toasts = [];
    new MutationObserver(() => document.querySelectorAll('.toast-body').forEach(t => {
        const text = t.innerText.trim();
        if (text && !window.__toasts.includes(text)) window.__toasts.push(text);
    })).observe(document.body, {childList: true, subtree: true});
}"""
WORDS = ("the old map showed a river that ran from the hills past the mill and the school down to the harbour where "
         "ships waited for the morning tide while children counted the gulls and the baker sold warm bread").split()


def open_projector(browser, app_url, viewport=PROJECTOR):
    context, page = open_page(browser, app_url, viewport)
    page.evaluate(HELPERS)
    return context, page


def no_errors_on_screen(page) -> None:
    assert page.evaluate("() => window.__toasts") == [], "an error toast reached the screen"
    assert not page.js_errors, page.js_errors


def inside_first_screen(page, selector: str) -> None:
    """The element is wholly on the first screen (the architecture diagram, a tall drawing that scrolls inside its
    tab: its top part), and the page itself does not scroll."""
    box = page.locator(selector).bounding_box()
    view = page.viewport_size
    assert box is not None, f"{selector} is not shown"
    bottom = box["y"] + (min(box["height"], 200) if selector == "#arch-diagram" else box["height"])
    assert box["y"] >= 0 and bottom <= view["height"] + 1, f"{selector} leaves the screen: {box}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= view["width"] + 1, f"{selector} leaves the screen: {box}"
    assert page.evaluate("() => document.scrollingElement.scrollTop") == 0


def status(page) -> str:
    return page.inner_text("#status")


def wait_status(page, *starts: str) -> str:
    try:
        page.wait_for_function("(starts) => starts.some(s => document.querySelector('#status').innerText.startsWith(s))",
                               arg=list(starts), polling=200)
    except Exception:
        page.screenshot(path="/tmp/lesson-failed.png")
        raise AssertionError(f"the status never began with {starts}: {status(page)!r}") from None
    return status(page)


def n_generated(page) -> int:
    return page.locator("#output .tok").count()


def plot_ready(page, selector: str) -> None:
    page.wait_for_function(
        "(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');"
        " return el && el.data && el.data.length > 0 && !(el.layout.annotations || []).some("
        "a => (a.text || '').includes('Type a prompt')); }", arg=selector, polling=200)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    selector, _ = VIEWS[name]
    if selector.startswith("#token-chips"):  # the text's chips, not the hint shown before there is a text
        page.wait_for_function("(sel) => document.querySelectorAll(sel + ' .tok').length > 0", arg=selector)
    elif selector.startswith("#arch"):
        page.wait_for_function("(sel) => document.querySelector(sel).innerText.trim().length > 40", arg=selector)
    else:
        plot_ready(page, selector)


def follows(page, tab: str, position: int) -> None:
    check = VIEWS[tab][1]
    if check is not None:
        page.wait_for_function(check, arg=position, polling=200)


def select_token(page, position: int) -> None:
    page.locator(f'#output .tok[data-pos="{position}"]').click()
    page.wait_for_function("(p) => !!document.querySelector(`#output .tok.sel[data-pos=\"${p}\"]`)", arg=position)


def set_number(page, selector: str, value: int) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def click_bar(page, selector: str, x_value: float) -> None:
    """A real mouse click on the bar at x = x_value of the plot in selector (its middle, in screen pixels)."""
    page.locator(selector).scroll_into_view_if_needed()
    point = page.evaluate(
        """([sel, x]) => { const el = document.querySelector(sel + ' .js-plotly-plot');
             const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis, trace = el._fullData[0];
             const i = trace.x.indexOf(x); const r = el.getBoundingClientRect();
             return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(trace.y[i] / 2)]; }""",
        [selector, x_value])
    page.mouse.click(*point)


def test_a_whole_lesson_on_a_projector(browser, long_runs_app, screenshots):
    context, page = open_projector(browser, long_runs_app)
    shots = lambda name: page.screenshot(path=str(screenshots / f"lesson-{name}.png"))

    # the Examples menu after typing: focusing it, tabbing through it and closing it leave the prompt alone
    typed = "My own question, typed by the teacher:"
    page.fill("#prompt textarea", typed)
    page.click("#examples input")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    page.click("#examples input")
    page.click("#title")
    assert page.input_value("#prompt textarea") == typed
    # picking an example is the user's choice: it fills the prompt
    page.click("#examples input")
    page.get_by_role("option", name="Once upon a time").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value.startsWith('Once upon a time')")
    example = page.input_value("#prompt textarea")
    page.click("#examples input")  # opening the menu again and leaving it changes nothing
    page.click("#title")
    time.sleep(0.5)
    assert page.input_value("#prompt textarea") == example

    # sampled tokens (the end of text does not stop them), every tab opened in turn while they stream, then Stop
    set_number(page, "#max-new-tokens", LONG_RUN)
    page.locator("#stop-at-eos input").uncheck()
    tabs_top = page.locator("#tabs").bounding_box()["y"]
    page.click("#generate")
    wait_status(page, "Generating")
    assert page.locator("#generate").is_disabled()  # a second click would restart the run
    for tab in VIEWS:
        before = n_generated(page)
        open_tab(page, tab)
        page.wait_for_function("(n) => document.querySelectorAll('#output .tok').length > n", arg=before)
        assert status(page).startswith("Generating"), f"the generation ended before the {tab} tab was seen live"
        inside_first_screen(page, "#output")
        inside_first_screen(page, VIEWS[tab][0])
        assert page.locator("#tabs").bounding_box()["y"] == tabs_top, "the views moved while the text streamed"
        assert page.input_value("#prompt textarea") == example
        shots(f"streaming-{tab.lower().replace(' ', '-')}")
    page.wait_for_function("() => document.querySelectorAll('#output .tok').length > 130")
    page.click("#stop")
    stopped = wait_status(page, "Stopped")
    assert 130 < n_generated(page) < LONG_RUN, stopped
    assert not page.locator("#generate").is_disabled()
    no_errors_on_screen(page)

    # a clicked token is the selection in every tab
    position = int(page.locator("#output .tok").nth(120).get_attribute("data-pos"))
    select_token(page, position)
    for tab in VIEWS:
        open_tab(page, tab)
        follows(page, tab, position)
        inside_first_screen(page, VIEWS[tab][0])
        shots(f"selected-{tab.lower().replace(' ', '-')}")

    # a click on a plot selects too: a bar of the Tokens tab's chart
    open_tab(page, "Tokens")
    click_bar(page, "#token-share", position - 3)
    follows(page, "Tokens", position - 3)
    select_token(page, position)

    # the Next token tab's step slider moves the selection, and the selection moves the slider
    open_tab(page, "Next token")
    first_generated = int(page.locator("#output .tok").first.get_attribute("data-pos"))
    set_number(page, "#step-slider", 10)
    target = first_generated + 9
    page.wait_for_function("(p) => !!document.querySelector(`#output .tok.sel[data-pos=\"${p}\"]`)", arg=target)
    follows(page, "Next token", target)
    select_token(page, position)
    page.wait_for_function("(v) => document.querySelector('#step-slider input[type=number]').value == v",
                           arg=str(position - first_generated + 1))

    # layer and head of the Attention tab
    open_tab(page, "Attention")
    set_number(page, "#attn-layer", 5)
    page.wait_for_function("() => plotTitle('#attn-map').startsWith('Layer 5')")
    page.click("#attn-head input")
    page.get_by_role("option", name="3", exact=True).click()
    page.wait_for_function("() => plotTitle('#attn-map').includes('head 3')")
    follows(page, "Attention", position)
    shots("attention-layer-5-head-3")
    no_errors_on_screen(page)

    # Stop, on a generation that cannot end by itself first
    page.fill("#prompt textarea", "Write a long story about a lighthouse keeper.")
    page.click("#generate")
    page.wait_for_function("() => document.querySelectorAll('#output .tok').length >= 5")
    page.click("#stop")
    stopped = wait_status(page, "Stopped")
    assert n_generated(page) < LONG_RUN, stopped
    assert not page.locator("#generate").is_disabled() and page.locator("#stop").is_disabled()
    kept = output_text(page)
    time.sleep(1)
    assert output_text(page) == kept  # Stop keeps what was shown, and nothing comes after it

    # a 600-word prompt: every view keeps to the screen
    long_prompt = " ".join(WORDS[i % len(WORDS)] for i in range(600))
    page.fill("#prompt textarea", long_prompt)
    set_number(page, "#max-new-tokens", 8)
    page.click("#generate")
    wait_status(page, "Done")
    assert page.input_value("#prompt textarea") == long_prompt
    for tab in VIEWS:
        open_tab(page, tab)
        inside_first_screen(page, "#output")
        inside_first_screen(page, VIEWS[tab][0])
        shots(f"long-{tab.lower().replace(' ', '-')}")
    select_token(page, int(page.locator("#output .tok").nth(3).get_attribute("data-pos")))
    no_errors_on_screen(page)
    context.close()


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 720}, {"width": 1920, "height": 1080}])
def test_text_and_every_view_share_the_first_screen(browser, app_url, viewport):
    context, page = open_projector(browser, app_url, viewport)
    page.fill("#prompt textarea", "The capital of France is")
    set_number(page, "#max-new-tokens", 12)
    page.locator("#greedy input").check()
    page.click("#generate")
    wait_status(page, "Done")
    for tab in VIEWS:
        open_tab(page, tab)
        inside_first_screen(page, "#output")
        inside_first_screen(page, VIEWS[tab][0])
    # presentation mode: larger type, still one screen
    open_tab(page, "Attention")
    page.locator("#presentation input").check()
    page.wait_for_function("() => document.querySelector('#attn-map .js-plotly-plot')._fullLayout.font.size > 15")
    inside_first_screen(page, "#output")
    inside_first_screen(page, VIEWS["Attention"][0])
    no_errors_on_screen(page)
    context.close()
