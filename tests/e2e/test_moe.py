"""The DeepSeek-V3 architecture in the browser: the random-weights mini model's Experts and Architecture tabs,
and Kimi-K2 drawn from its config alone."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import open_page, running_app
from tests.e2e.test_app import plot_points, set_prompt, wait_done
from tests.e2e.test_probe import click_picker

HAS_DATA = ("(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');"
            " return !!(el && el._fullData && el._fullData.length); }")


@pytest.fixture(scope="module")
def moe_url():
    with running_app("--model", "random:deepseek-v3-mini") as url:
        yield url


@pytest.fixture()
def moe_page(browser, moe_url):
    context, page = open_page(browser, moe_url)
    yield page, page.js_errors
    context.close()


def test_experts_and_architecture_tabs_render_for_the_random_deepseek(moe_page, screenshots):
    page, errors = moe_page
    assert "Random weights" in page.inner_text("#random-weights-banner")
    set_prompt(page, "The capital of France is", max_new=16)
    page.click("#generate")
    wait_done(page)
    page.get_by_role("tab", name="Experts").click()
    for plot in ("#experts-choice", "#experts-token", "#experts-scores", "#experts-load", "#experts-shared"):
        page.wait_for_function(HAS_DATA, arg=plot)
        assert plot_points(page, plot) > 0, plot
    shape = page.evaluate("() => { const z = document.querySelector('#experts-choice .js-plotly-plot')"
                          "._fullData[0].z; return [z.length, z[0].length]; }")
    generated = page.evaluate("() => document.querySelectorAll('#output .tok').length")
    assert shape == [5, 5 + generated]  # MoE layers 1-5 x every token of the context (5 prompt tokens)
    page.screenshot(path=str(screenshots / "moe-experts.png"), full_page=True)
    page.get_by_role("tab", name="Attention").click()
    page.wait_for_function(HAS_DATA, arg="#attn-latent")
    page.get_by_role("tab", name="Architecture").click()
    page.wait_for_function("() => document.querySelector('#arch-diagram')?.innerText.includes('MoE')")
    diagram = page.inner_text("#arch-diagram")
    assert "32 experts" in diagram and "latent" in diagram.lower() and "live values" in diagram
    page.wait_for_function(HAS_DATA, arg="#arch-params")
    page.screenshot(path=str(screenshots / "moe-architecture.png"), full_page=True)
    assert not errors


def test_an_expert_picked_on_the_probe_tabs_map(moe_page, screenshots):
    """The Probe tab's expert grid: coloured where the router chose for the selected token; a click on a chosen
    expert ablates it and the distribution moves; a second click restores it."""
    page, errors = moe_page
    set_prompt(page, "The capital of France is", max_new=4, greedy=True)
    page.click("#generate")
    wait_done(page)
    page.get_by_role("tab", name="Probe").click()
    page.get_by_role("radio", name="Expert").check()
    grid = "() => document.querySelector('#probe-pick-map .js-plotly-plot')?._fullData?.[0]"
    page.wait_for_function(f"() => ({grid})()?.meta === 'pick-expert'")
    z = page.evaluate(f"() => ({grid})().z.map(r => Array.from(r))")
    assert len(z) == 5 and len(z[0]) == 32  # MoE layers 1-5 x 32 routed experts
    row = z[2]
    expert = max(range(32), key=lambda e: row[e])  # the expert the router weighted most in layer 3
    assert sum(w > 0 for w in row) == 4 and row[expert] > 0  # k = 4 chosen, the rest blank
    click_picker(page, 2, expert)
    page.wait_for_function("(e) => document.querySelector('#probe-summary').innerText.includes(`Expert ${e} of layer 3`)"
                           " && document.querySelector('#probe-summary').innerText.includes('KL')", arg=expert)
    page.screenshot(path=str(screenshots / "moe-probe-expert.png"))
    click_picker(page, 2, expert)  # the layout may have moved: click_picker finds the cell again
    page.wait_for_function("() => document.querySelector('#probe-summary').innerText.includes('Nothing is ablated')")
    assert not errors


def test_architecture_tab_draws_kimi_k2_from_its_config(moe_page, screenshots):
    page, errors = moe_page
    page.get_by_role("tab", name="Architecture").click()
    page.locator("#arch-show input").click()
    page.get_by_role("option", name="Kimi-K2 (config only, 1T parameters)").click()
    page.wait_for_function("() => document.querySelector('#arch-diagram')?.innerText.includes('Kimi-K2')")
    diagram = page.inner_text("#arch-diagram")
    assert "1.03T" in diagram and "384 experts" in diagram and "61 layers" in diagram.replace("layers 1–60", "")
    page.wait_for_function(HAS_DATA, arg="#arch-params")
    page.screenshot(path=str(screenshots / "kimi-k2-architecture.png"), full_page=True)
    assert not errors
