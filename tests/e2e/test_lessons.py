"""Every guided lesson played through in Chromium at 1280x720, as a teacher would: picked from the Lessons menu, its run
generated (or reused when the page already shows exactly that run), then each step by Next and one back by Previous.
Each step must land on the tab, layer, head, token and option its data names, read back from the page, with the panel
and the view on the first screen, and no error toast or server traceback (the conftest's fixture)."""
from __future__ import annotations

from explorer.lessons import View, load_lessons
from explorer.ui.lessons import NOT_THIS_RUN
from tests.e2e.test_lesson import VIEWS, inside_first_screen, no_errors_on_screen, open_projector, wait_status

LESSONS = load_lessons()
STATUSES = """() => { window.__statuses = [];
    new MutationObserver(() => window.__statuses.push(document.querySelector('#status').innerText))
        .observe(document.querySelector('#status'), {childList: true, subtree: true, characterData: true}); }"""
# the page's own word for each view, read back: what the open tab shows (a JS predicate of the view's fields)
LANDED = {
    "Attention": """(v) => plotTitle('#attn-map').startsWith(`Layer ${v.layer},`)
        && plotTitle('#attn-map').includes(v.head === 'mean' ? 'mean of' : `head ${v.head}`)
        && document.querySelector('#attn-layer input[type=number]').value == v.layer
        && document.querySelector('#attn-head input').value == String(v.head)
        && document.querySelector('#attn-hide-sink input').checked === v.hide_sink""",
    "Architecture": """(v) => document.querySelector('#arch-show input').value.startsWith(
            v.architecture === 'kimi-k2' ? 'Kimi-K2' : 'Loaded model')
        && document.querySelector(`#arch-view input[value="${v.arch_view}"]`).checked
        && (v.arch_view === 'RoPE' ? document.querySelector('#arch-rope-text').innerText.includes(
                v.architecture === 'kimi-k2' ? 'Kimi-K2' : 'SmolLM2')
            && (v.architecture === 'kimi-k2' || v.token === null || [...document.querySelectorAll(
                '#arch-rope-freqs .annotation-text')].some(a => a.textContent === `Angle at position ${v.token}`))
          : document.querySelector('#arch-diagram').innerText.includes(
                v.architecture === 'kimi-k2' ? 'Kimi-K2' : 'SmolLM2')
            && (v.architecture === 'kimi-k2' || v.token === null
                || document.querySelector('#arch-diagram').innerText.includes(`at position ${v.token}:`)))""",
}


def pick(page, label: str) -> None:
    page.click("#lessons input")
    page.get_by_role("option", name=label, exact=True).click()


def panel_at(page, lesson, index: int) -> None:
    """The panel says step index + 1 of N, with that step's sentence."""
    count = f"{index + 1} / {len(lesson.steps)}"
    page.wait_for_function(
        "([count, start]) => { const p = document.querySelector('#lesson-panel');"
        " return p && p.offsetParent !== null && p.querySelector('.lesson-count')?.innerText === count"
        " && p.querySelector('.lesson-text')?.innerText.startsWith(start)"
        " && !p.querySelector('.lesson-note'); }",
        arg=[count, lesson.steps[index].text.replace("**", "")[:40]], polling=200)


def lands(page, view: View) -> None:
    """The page shows what the view names: its tab open, the token selected everywhere, and the tab's own controls
    and figure on the view's layer, head and options."""
    page.wait_for_function("(tab) => document.querySelector(`#tabs button[role=tab][aria-selected=true]`)"
                           "?.innerText.trim() === tab", arg=view.tab, polling=200)
    if view.token is not None:
        # the output strip marks generated tokens (the prompt is plain text there)
        page.wait_for_function("(p) => { const first = document.querySelector('#output .tok');"
                               " return !first || p < +first.dataset.pos"
                               " || !!document.querySelector(`#output .tok.sel[data-pos=\"${p}\"]`); }",
                               arg=view.token, polling=200)
        if VIEWS[view.tab][1] is not None:
            page.wait_for_function(VIEWS[view.tab][1], arg=view.token, polling=200)
    if view.tab in LANDED:
        page.wait_for_function(LANDED[view.tab], arg=view.__dict__, polling=200)
    inside_first_screen(page, "#lesson-panel")
    inside_first_screen(page, "#arch-rope-qk" if view.tab == "Architecture" and view.arch_view == "RoPE"
                        else VIEWS[view.tab][0])


def test_every_lesson_plays_through(browser, app_url, screenshots):
    context, page = open_projector(browser, app_url)
    page.evaluate(STATUSES)
    shown_run = None
    for lesson in LESSONS:
        page.evaluate("() => { window.__statuses = []; }")
        pick(page, lesson.label)
        panel_at(page, lesson, 0)
        wait_status(page, "Done")
        generated = any(s.startswith("Generating") for s in page.evaluate("() => window.__statuses"))
        # a lesson whose run the page already shows reuses it; any other generates its own
        assert generated == (lesson.run != shown_run), (lesson.name, generated)
        shown_run = lesson.run
        assert page.input_value("#prompt textarea") == lesson.run["prompt"]
        views = lesson.views()
        for index, view in enumerate(views):
            if index:
                page.click("#lesson-next")
                panel_at(page, lesson, index)
            lands(page, view)
            no_errors_on_screen(page)
            page.screenshot(path=str(screenshots / f"lessons-{lesson.name}-{index + 1}.png"))
        assert page.locator("#lesson-next").is_disabled()
        if len(views) > 1:  # Previous lands where Next did
            page.click("#lesson-prev")
            panel_at(page, lesson, len(views) - 2)
            lands(page, views[-2])
    no_errors_on_screen(page)
    context.close()


def test_presentation_mode_a_step_over_another_run_and_close(browser, app_url, screenshots):
    context, page = open_projector(browser, app_url)
    lesson = LESSONS[0]
    pick(page, lesson.label)
    panel_at(page, lesson, 0)
    wait_status(page, "Done")
    # presentation mode: the larger type keeps the panel, the title line and the view on the first screen
    page.locator("#presentation input").check()
    page.wait_for_function("() => document.querySelector('#token-chips .tokchips') &&"
                           " parseFloat(getComputedStyle(document.querySelector('#lesson-panel .lesson-text')).fontSize) > 16")
    lands(page, lesson.views()[0])
    inside_first_screen(page, "#lessons")
    page.screenshot(path=str(screenshots / "lessons-presentation.png"))
    page.locator("#presentation input").uncheck()
    page.fill("#prompt textarea", "Something else entirely")
    page.click("#generate")
    wait_status(page, "Done")
    selected = page.evaluate("() => [...document.querySelectorAll('#output .tok.sel')].map(t => t.dataset.pos)")
    page.click("#lesson-next")
    page.wait_for_function("(note) => document.querySelector('#lesson-panel .lesson-note')?.innerText === note",
                           arg=NOT_THIS_RUN)
    assert page.evaluate("() => [...document.querySelectorAll('#output .tok.sel')].map(t => t.dataset.pos)") == selected
    page.click("#lesson-close")
    page.wait_for_function("() => { const p = document.querySelector('#lesson-panel');"
                           " return !p || p.offsetParent === null; }")
    assert page.input_value("#lessons input") == "Lessons…"
    no_errors_on_screen(page)
    context.close()
