"""The Probe tab in Chromium at 1280x720: ablate a head and see the next-token distribution change, generate with the
ablation on (marked) and off again; compare two prompts; patch one short prompt into another, watch the map fill and
click a cell; prompts of different lengths get a sentence. Fails on any error toast or server traceback."""
from __future__ import annotations

from tests.e2e.conftest import open_page
from tests.e2e.test_app import set_prompt, wait_done
from tests.e2e.test_lesson import HELPERS, PROJECTOR, no_errors_on_screen

HAS_DATA = ("(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');"
            " return !!(el && el._fullData && el._fullData.length); }")
TITLE = ("(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');"
         " return (el && el.layout && el.layout.title && el.layout.title.text) || ''; }")
BARS = ("(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');"
        " return el._fullData.filter(t => t.type === 'bar').map(t => ({name: t.name, x: Array.from(t.x)})); }")


def bars(page, selector: str) -> dict[str, list[float]]:
    return {t["name"]: t["x"] for t in page.evaluate(BARS, selector)}


def click_heatmap(page, selector: str, row: int, column: int) -> None:
    """A real mouse click on a heatmap's cell at (row, column) in data units (plotly maps data to pixels with its
    axes)."""
    page.locator(selector).scroll_into_view_if_needed()
    x, y = page.evaluate("""([sel, row, column]) => {
        const el = document.querySelector(sel + ' .js-plotly-plot');
        const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis, box = el.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(column), box.top + ya._offset + ya.l2p(row)];
    }""", [selector, row, column])
    page.mouse.click(x, y)


def click_cell(page, layer: int, position: int) -> None:
    """The patching map's cell of that block and position."""
    click_heatmap(page, "#probe-patch-map", layer, position)


def click_picker(page, layer_row: int, column: int) -> None:
    """The ablation picker's cell (row index, column index)."""
    click_heatmap(page, "#probe-pick-map", layer_row, column)


def crossed(page) -> list[list[int]]:
    """The picker's crossed-out cells, as [layer, column]."""
    return page.evaluate("() => { const el = document.querySelector('#probe-pick-map .js-plotly-plot');"
                         " const marks = el._fullData.find(t => t.type === 'scatter');"
                         " return marks ? Array.from(marks.customdata) : []; }")


def test_ablation_and_patching_in_the_probe_tab(browser, app_url, screenshots):
    context, page = open_page(browser, app_url, PROJECTOR)
    page.evaluate(HELPERS)
    set_prompt(page, "The capital of France is", max_new=3, greedy=True)
    page.click("#generate")
    wait_done(page)
    page.get_by_role("tab", name="Probe").click()
    page.wait_for_function(HAS_DATA, arg="#probe-ablation")
    assert "Nothing is ablated yet" in page.inner_text("#probe-summary")

    # a head of layer 0: the Attention tab's layer and head are the default, here changed in the tab itself
    page.locator("#probe-head input").click()
    page.get_by_role("option", name="4", exact=True).click()
    page.click("#probe-add")
    page.wait_for_function("() => document.querySelector('#probe-summary').innerText.includes('KL')")
    summary = page.inner_text("#probe-summary")
    assert "Head 4 of layer 0 ablated" in summary and "rank" in summary
    page.wait_for_function(HAS_DATA, arg="#probe-ablation")
    shown = bars(page, "#probe-ablation")
    assert set(shown) == {"before", "after"} and shown["before"] != shown["after"]
    page.screenshot(path=str(screenshots / "probe-ablation.png"))

    # a click on the picker's grid ablates that head too; a second click restores it
    page.wait_for_function(HAS_DATA, arg="#probe-pick-map")
    assert crossed(page) == [[0, 4]]
    click_picker(page, 7, 2)
    page.wait_for_function("() => document.querySelector('#probe-summary').innerText.includes('head 2 of layer 7')")
    assert sorted(crossed(page)) == [[0, 4], [7, 2]]
    click_picker(page, 7, 2)
    page.wait_for_function("() => !document.querySelector('#probe-summary').innerText.includes('head 2 of layer 7')")
    assert crossed(page) == [[0, 4]]
    # whole parts: the grid becomes layers x (attention, MLP)
    page.get_by_role("radio", name="MLP output").check()
    page.wait_for_function("() => document.querySelector('#probe-pick-map .js-plotly-plot')._fullData[0].x.length"
                           " === 2")
    click_picker(page, 3, 1)
    page.wait_for_function("() => document.querySelector('#probe-summary').innerText.includes('MLP of layer 3')")
    click_picker(page, 3, 1)
    page.wait_for_function("() => !document.querySelector('#probe-summary').innerText.includes('MLP of layer 3')")
    page.get_by_role("radio", name="Head").check()

    # generate with it on: marked in the status and above the text; off again: gone
    page.locator("#probe-generate-with input").check()
    page.wait_for_function("() => document.querySelector('#probe-summary').innerText.includes('next generation')")
    page.click("#generate")
    assert "Ablated: head 4 of layer 0" in wait_done(page)
    assert "head 4 of layer 0" in page.inner_text("#output .probe-ablated")
    page.locator("#probe-generate-with input").uncheck()
    page.wait_for_function("() => !document.querySelector('#probe-summary').innerText.includes('next generation')")
    page.click("#generate")
    assert "Ablated" not in wait_done(page)
    assert page.locator("#output .probe-ablated").count() == 0

    # two prompts compared
    page.get_by_role("tab", name="Compare").click()
    page.click("#probe-compare")
    for plot in ("#probe-compare-bars", "#probe-compare-lens", "#probe-attn-diff"):
        page.wait_for_function(HAS_DATA, arg=plot)
    assert page.locator("#probe-compare-tokens .probe-tok.differs").count() == 2  # " he" / " she", in A and B
    assert set(bars(page, "#probe-compare-bars")) == {"A", "B"}

    # patching: a short pair, the map fills, a click on a cell shows that run
    page.get_by_role("tab", name="Patch").click()
    page.fill("#probe-patch-a textarea, #probe-patch-a input", "Paris is in")
    page.fill("#probe-patch-b textarea, #probe-patch-b input", "Rome is in")
    page.click("#probe-patch")
    page.wait_for_function("() => document.querySelector('#probe-patch-status').innerText.includes('Done:')")
    shape = page.evaluate("() => { const z = document.querySelector('#probe-patch-map .js-plotly-plot')"
                          "._fullData[0].z; return [z.length, z[0].length]; }")
    assert shape == [30, 3]
    click_cell(page, 5, 0)
    page.wait_for_function(f"() => ({TITLE})('#probe-patch-cell').includes('Block 5, position 0 patched')")
    assert set(bars(page, "#probe-patch-cell")) == {"B", "B patched", "A"}
    page.screenshot(path=str(screenshots / "probe-patching.png"))

    # prompts of different lengths: a sentence, no toast
    page.fill("#probe-patch-b textarea, #probe-patch-b input", "Rome")
    page.click("#probe-patch")
    page.wait_for_function("() => document.querySelector('#probe-patch-status').innerText.includes('same length')")
    no_errors_on_screen(page)
    context.close()
