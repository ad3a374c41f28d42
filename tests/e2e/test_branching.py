"""Branching in Chromium at 1280x720: generate, open Next token, click a candidate the sampler cut at an earlier step;
the text keeps what came before, continues from the forced token (marked) and the bar names the branch; one click
back on the original gives the text exactly as it was, one more the branch again; Stop ends a branch that would write
on. No error toast, no traceback."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

from tests.e2e.conftest import HANG, LONG_RUN, output_text
from tests.e2e.test_lesson import PROJECTOR, no_errors_on_screen, open_projector, open_tab, set_number, wait_status
from tests.e2e.test_share import import_file

TOKENS = "() => [...document.querySelectorAll('#output .tokout .tok')].map(t => [+t.dataset.pos, t.innerText])"


def wait_for_status(page, start: str, contains: str) -> None:
    page.wait_for_function("([a, b]) => { const t = document.querySelector('#status').innerText;"
                           " return t.startsWith(a) && t.includes(b); }", arg=[start, contains], polling=200)


def click_row(page, row: int) -> None:
    """A real mouse click in the middle of the row `row` of the Next token bars (anywhere on a row picks its bar)."""
    point = page.evaluate(
        """(row) => { const el = document.querySelector('#next-token-bars .js-plotly-plot');
             const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis, r = el.getBoundingClientRect();
             return [r.left + xa._offset + xa._length / 2, r.top + ya._offset + ya.l2p(row)]; }""", row)
    page.mouse.click(*point)


def export_session(page, folder: Path) -> Path:
    """Export from the Save & share panel; the session file, downloaded."""
    page.click("#share-panel .label-wrap")
    page.click("#export")
    page.wait_for_function("() => document.querySelectorAll('#export-files a').length === 3")
    href = page.evaluate("() => [...document.querySelectorAll('#export-files a')].map(a => a.href)"
                         ".find(h => h.includes('session-'))")
    path = folder / Path(urllib.parse.unquote(href)).name
    path.write_bytes(urllib.request.urlopen(href, timeout=HANG).read())
    return path


def test_branch_from_a_cut_token_and_back(browser, app_url, screenshots, tmp_path):
    context, page = open_projector(browser, app_url, PROJECTOR)
    shot = lambda name: page.screenshot(path=str(screenshots / f"branching-{name}.png"))
    page.fill("#prompt textarea", "The best way to learn a new language is")
    set_number(page, "#max-new-tokens", 16)
    set_number(page, "#top-k", 5)  # rows 6 to 12 of every step are candidates the sampler cut
    page.click("#generate")
    wait_status(page, "Done")
    original_text = output_text(page)
    original = page.evaluate(TOKENS)
    assert len(original) == 16 and page.locator("#branch-bar").count() == 0

    # the third generated token's distribution, and a candidate that the sampler cut there
    open_tab(page, "Next token")
    set_number(page, "#step-slider", 3)
    position = original[2][0]
    page.wait_for_function("(p) => document.querySelector('#next-token-bars .js-plotly-plot').layout.title.text"
                           ".includes(`position ${p}`)", arg=position)
    row, token_id = page.evaluate("""() => {
        const el = document.querySelector('#next-token-bars .js-plotly-plot');
        const cut = el.data.find(t => t.name === 'cut by the sampler');
        return [cut.y[0], cut.customdata[0][2]]; }""")
    click_row(page, row)
    wait_for_status(page, "Done", "branch 1")

    branch = page.evaluate(TOKENS)
    assert branch[:2] == original[:2], "the text before the forced token changed"
    forced = page.locator("#output .tok.forced")
    assert forced.count() == 1 and int(forced.get_attribute("data-pos")) == position
    assert "forced by you, cut by the sampler" in forced.get_attribute("title")
    assert f"id {token_id}" in forced.get_attribute("title")
    assert [p for p, _ in branch] == list(range(original[0][0], original[0][0] + len(branch)))
    assert output_text(page) != original_text
    assert "Branch 1 of 1: forced" in page.inner_text("#branch-bar")
    # the open tab is redrawn after the status says Done (after_generation): wait for it
    page.wait_for_function("() => document.querySelector('#next-token-bars .js-plotly-plot').layout.title.text"
                           ".includes('forced (a cut token)')")
    shot("branch")

    # one click back to the original: the text exactly as it was, nothing marked; one more to the branch again
    page.locator('#branch-bar .branch-go[data-branch="0"]').click()
    wait_for_status(page, "Showing", "the original")
    page.wait_for_function("() => !document.querySelector('#output .tok.forced')")
    assert output_text(page) == original_text
    assert page.evaluate(TOKENS) == original
    page.wait_for_function("(p) => { const t = document.querySelector('#next-token-bars .js-plotly-plot').layout.title"
                           ".text; return t.includes(`position ${p}`) && !t.includes('forced'); }", arg=position)
    shot("original")
    page.locator('#branch-bar .branch-go[data-branch="1"]').click()
    wait_for_status(page, "Showing", "branch 1")
    page.wait_for_function("() => !!document.querySelector('#output .tok.forced')")
    assert page.evaluate(TOKENS) == branch

    # the session file holds the branch: opened in a fresh page, both come back, the branch shown, the original a
    # click away
    saved = export_session(page, tmp_path)
    document = json.loads(saved.read_text())
    assert len(document["branches"]) == 1 and document["current_branch"] == 1
    no_errors_on_screen(page)
    context.close()
    context, page = open_projector(browser, app_url, PROJECTOR)
    message = import_file(page, saved)
    assert message.startswith("Opened"), message
    wait_for_status(page, "Opened a session file", "1 branch")
    page.wait_for_function("(n) => document.querySelectorAll('#output .tokout .tok').length === n", arg=len(branch))
    assert page.evaluate(TOKENS) == branch and page.locator("#output .tok.forced").count() == 1
    page.locator('#branch-bar .branch-go[data-branch="0"]').click()
    wait_for_status(page, "Showing", "the original")
    page.wait_for_function("() => !document.querySelector('#output .tok.forced')")
    assert page.evaluate(TOKENS) == original
    no_errors_on_screen(page)
    context.close()


def test_stop_ends_a_branch_that_would_write_on(browser, long_runs_app):
    context, page = open_projector(browser, long_runs_app, PROJECTOR)
    page.fill("#prompt textarea", "Write a long story about a lighthouse keeper.")
    set_number(page, "#max-new-tokens", LONG_RUN)
    page.locator("#stop-at-eos input").uncheck()  # nothing but the token limit or Stop ends it by itself
    page.click("#generate")
    page.wait_for_function("() => document.querySelectorAll('#output .tok').length >= 6")
    page.click("#stop")
    wait_status(page, "Stopped")
    open_tab(page, "Next token")
    set_number(page, "#step-slider", 2)
    position = page.evaluate(TOKENS)[1][0]
    page.wait_for_function("(p) => document.querySelector('#next-token-bars .js-plotly-plot').layout.title.text"
                           ".includes(`position ${p}`)", arg=position)
    click_row(page, 5)  # the sixth most likely token there
    wait_status(page, "Generating")
    page.wait_for_function("(p) => document.querySelectorAll('#output .tok').length >= p + 4 - "
                           "document.querySelector('#output .tok').dataset.pos", arg=position)
    page.click("#stop")
    wait_status(page, "Stopped")
    kept = page.evaluate(TOKENS)
    assert len(kept) < LONG_RUN and page.locator("#output .tok.forced").count() == 1
    page.wait_for_timeout(1000)
    assert page.evaluate(TOKENS) == kept  # nothing comes after Stop
    assert not page.locator("#generate").is_disabled() and page.locator("#stop").is_disabled()
    no_errors_on_screen(page)
    context.close()
