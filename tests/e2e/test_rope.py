"""The RoPE view in the browser, on a 1280x720 projector: the Architecture tab's RoPE view after a generation shows
the selected token's real query and key, follows a token click and the context-length control, draws Kimi-K2's own
YaRN from its config, and fits the first screen in presentation mode too; no error toast, no page error, no traceback
in the server's log (the conftest's fixture)."""
from __future__ import annotations

from tests.e2e.test_app import set_prompt, wait_done
from tests.e2e.test_lesson import no_errors_on_screen, open_projector, plot_ready, select_token

FIGURES = ("#arch-rope-freqs", "#arch-rope-qk")
ANGLE_TITLE = ("(p) => [...document.querySelectorAll('#arch-rope-freqs .annotation-text')]"
               ".some(a => a.textContent === `Angle at position ${p}`)")


def words(page) -> str:
    return page.inner_text("#arch-rope-text")


def wait_words(page, *parts: str) -> str:
    try:
        page.wait_for_function("(parts) => { const el = document.querySelector('#arch-rope-text');"
                               " return !!el && parts.every(p => el.innerText.includes(p)); }", arg=list(parts))
    except Exception:
        raise AssertionError(f"the RoPE view's words never held {parts}: {words(page)!r}") from None
    return words(page)


def on_first_screen(page, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 721, (selector, box)
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1281, (selector, box)


def pick(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_rope_view_follows_the_selection_the_context_control_and_kimi(browser, app_url, screenshots):
    context, page = open_projector(browser, app_url)
    set_prompt(page, "The capital of France is", max_new=6, greedy=True)
    page.click("#generate")
    wait_done(page)
    page.get_by_role("tab", name="Architecture").click()
    page.wait_for_function("() => document.querySelector('#arch-diagram')?.innerText.includes('SmolLM2')")
    page.locator("#arch-view").get_by_text("RoPE", exact=True).click()
    for figure in FIGURES:
        plot_ready(page, figure)
    generated = page.eval_on_selector_all("#output .tok", "els => els.map(e => +e.dataset.pos)")
    first, last = min(generated), max(generated)
    text = wait_words(page, "SmolLM2", "layer 0, 9 heads averaged", f"(position {last})", "×4 to 32,768")
    assert "NTK-aware" in text and "YaRN" in text and "Linear" in text and "No scaling" in text
    page.wait_for_function(ANGLE_TITLE, arg=last)
    for selector in (*FIGURES, "#arch-rope-factor"):
        on_first_screen(page, selector)
    assert not page.locator("#arch-diagram").is_visible()
    page.screenshot(path=str(screenshots / "rope-smollm2.png"))

    select_token(page, first)  # a click on a token: the angles and the q and k of that token
    page.wait_for_function(ANGLE_TITLE, arg=first)
    wait_words(page, f"(position {first})")
    pick(page, "#arch-rope-factor", "Context: ×16 trained")
    wait_words(page, "×16 to 131,072", "÷ 16")
    pick(page, "#arch-rope-factor", "Context: the model's own")
    wait_words(page, "×4 to 32,768")

    pick(page, "#arch-show", "Kimi-K2 (config only, 1T parameters)")  # its own stretch, ×32, from 4,096
    text = wait_words(page, "Kimi-K2", "YaRN ×32 from 4,096", "×32 to 131,072", "scores × 1.81")
    assert "q = k = (1, …, 1)" in text  # no weights: the standard curve
    page.screenshot(path=str(screenshots / "rope-kimi-k2.png"))

    page.locator("#presentation input").check()
    page.wait_for_function("() => document.querySelector('#arch-rope-freqs .js-plotly-plot')"
                           "._fullLayout.font.size > 15")
    for selector in FIGURES:
        on_first_screen(page, selector)
    page.screenshot(path=str(screenshots / "rope-kimi-k2-presentation.png"))
    page.locator("#arch-view").get_by_text("Blocks", exact=True).click()
    page.wait_for_function("() => document.querySelector('#arch-diagram')?.innerText.includes('Kimi-K2')")
    assert not page.locator("#arch-rope-qk").is_visible()
    no_errors_on_screen(page)
    context.close()
