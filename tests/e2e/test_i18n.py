"""The page in the browser's language (Gradio's i18n, explorer/i18n.py): a French browser sees the tabs, buttons,
labels, hints and explanations in French on a 1280x720 projector, with nothing cut, generates a few tokens without an error
toast or a traceback; a German browser (a language the app lacks) sees English."""
from __future__ import annotations

from explorer.i18n import I18N
from tests.e2e.conftest import HANG

FR = I18N.translations_dict["fr"]
EN = I18N.translations_dict["en"]
PROJECTOR = {"width": 1280, "height": 720}
WATCH_TOASTS = """() => {
    window.__toasts = [];
    new MutationObserver(() => document.querySelectorAll('.toast-body').forEach(t => {
        const text = t.innerText.trim();
        if (text && !window.__toasts.includes(text)) window.__toasts.push(text);
    })).observe(document.body, {childList: true, subtree: true});
}"""
# the texts of the controls, the title line and the tabs, each wholly inside its box (or cut)
CUT_TEXTS = """() => [...document.querySelectorAll('#controls label span, #controls button:not(.label-wrap), '
        + '.label-wrap > span, #header button, #header label, #tabs button[role=tab]')]
    .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)"""


def open_in(browser, url: str, locale: str):
    context = browser.new_context(locale=locale, viewport=PROJECTOR)
    context.set_default_timeout(HANG * 1000)
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda e: page.js_errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#generate")
    page.evaluate(WATCH_TOASTS)
    return context, page


def test_a_french_browser_gets_the_french_page_and_generates(browser, app_url, screenshots):
    context, page = open_in(browser, app_url, "fr-FR")
    try:
        assert page.inner_text("#generate") == FR["controls.generate"] == "Générer"
        for key in ("tab.tokens", "tab.embeddings", "tab.attention", "tab.next_token", "tab.logit_lens",
                    "tab.architecture", "tab.probe"):
            assert page.get_by_role("tab", name=FR[key], exact=True).is_visible(), key
        assert page.get_by_role("tab", name="Next token").count() == 0  # no English left beside the French
        assert FR["app.tagline"] in page.inner_text("#title")
        assert page.inner_text("#output") == FR["output.hint"]
        controls = page.inner_text("#controls")
        for key in ("controls.prompt", "controls.chat", "controls.chat_info", "controls.sampling", "controls.seed",
                    "controls.stop_at_eos", "share.panel"):
            assert FR[key] in controls, key
        # a whole explanation, its formulas and markup as written (the page formats each text as an ICU message)
        explain = page.inner_text("#tabs")
        assert "Le texte est découpé en tokens" in explain and "p(x_t | x_<t)" in explain and "−log p" in explain
        assert page.evaluate(CUT_TEXTS) == []
        # the title line keeps room for the model's name (a longer tagline squeezed it out)
        assert page.locator("#model-summary").bounding_box()["width"] >= 100
        page.screenshot(path=str(screenshots / "french-1280x720.png"))

        box = page.locator("#max-new-tokens input[type=number]")
        box.fill("6")
        box.press("Enter")
        page.click("#generate")
        page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')", polling=200)
        assert 0 < page.locator("#output .tok").count() <= 6  # the generated tokens
        page.get_by_role("tab", name=FR["tab.architecture"], exact=True).click()
        page.wait_for_function("(text) => document.querySelector('#arch-view').innerText.includes(text)",
                               arg=FR["arch.blocks"])
        assert page.input_value("#arch-show input").startswith(FR["arch.loaded"])
        page.screenshot(path=str(screenshots / "french-architecture-1280x720.png"))
        assert page.evaluate("() => window.__toasts") == [], "an error toast reached the screen"
        assert not page.js_errors, page.js_errors
    finally:
        context.close()


def test_a_browser_in_a_language_the_app_lacks_gets_english(browser, app_url):
    context, page = open_in(browser, app_url, "de-DE")
    try:
        assert page.inner_text("#generate") == EN["controls.generate"] == "Generate"
        assert page.get_by_role("tab", name="Next token", exact=True).is_visible()
        assert EN["controls.chat_info"] in page.inner_text("#controls")
    finally:
        context.close()
