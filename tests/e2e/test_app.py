"""End to end, as a user: type, Generate, watch tokens arrive, open every tab, select tokens, hostile prompts and
separate sessions (Stop and a closed tab: test_ending.py)."""
from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import HANG, open_page

TABS = {  # tab -> the plot that must render with data
    "Tokens": "#token-share",
    "Embeddings": "#emb-projection",
    "Attention": "#attn-map",
    "Next token": "#next-token-bars",
    "Logit lens": "#logit-lens",
}


def set_prompt(page, text: str, max_new: int | None = None, greedy: bool = False) -> None:
    page.fill("#prompt textarea", text)
    if max_new is not None:
        box = page.locator("#max-new-tokens input[type=number]")
        box.fill(str(max_new))
        box.press("Enter")
    if greedy:
        page.locator("#greedy input").check()


def generated_count(page) -> int:
    return page.locator("#output .tok").count()


def wait_done(page) -> str:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        status = page.inner_text("#status")
        if status.startswith(("Done", "Stopped")):
            return status
        time.sleep(0.1)
    raise AssertionError(f"generation did not finish; status {page.inner_text('#status')!r}")


def plot_points(page, selector: str) -> int:
    """Number of data values drawn by the plotly figure inside selector (0 if none rendered)."""
    return page.evaluate(
        """(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');
             if (!el || !el._fullData) return 0;
             return el._fullData.reduce((n, t) => n + ((t.z && t.z.length) || (t.x && t.x.length) || 0), 0); }""",
        selector)


WATCH_OUTPUT = """() => {
    window.__counts = []; window.__t0 = performance.now(); window.__firstAt = null;
    const out = document.querySelector('#output');
    new MutationObserver(() => {
        const n = out.querySelectorAll('.tok').length;
        if (n && window.__firstAt === null) window.__firstAt = performance.now() - window.__t0;
        if (window.__counts[window.__counts.length - 1] !== n) window.__counts.push(n);
    }).observe(out, {childList: true, subtree: true, characterData: true});
}"""


def test_tokens_stream_one_by_one_and_every_tab_renders(page, screenshots):
    set_prompt(page, "The capital of France is", max_new=24)
    page.evaluate(WATCH_OUTPUT)
    page.click("#generate")
    status = wait_done(page)
    counts = page.evaluate("() => window.__counts")
    first_token_at = page.evaluate("() => window.__firstAt") / 1000
    final = generated_count(page)
    intermediate = [c for c in counts if 0 < c < final]
    assert len(set(intermediate)) >= 2, f"saw only {counts}: tokens did not stream"
    assert "Paris" in page.inner_text("#output")
    print(f"first token on screen after {first_token_at:.2f} s; {len(counts)} states; {status}")
    page.screenshot(path=str(screenshots / "generation.png"))
    for tab, plot in TABS.items():
        page.get_by_role("tab", name=tab).click()
        page.wait_for_function(
            "(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot');"
            " return el && el.data && el.data.length > 0 && !el.layout.annotations?.some("
            "a => (a.text || '').includes('Type a prompt')); }", arg=plot)
        assert plot_points(page, plot) > 0, tab
        time.sleep(0.5)
        page.screenshot(path=str(screenshots / f"tab-{tab.lower().replace(' ', '-')}.png"), full_page=True)
    assert not page.js_errors


def test_script_prompt_is_shown_as_text(page):
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> hi'
    set_prompt(page, hostile, max_new=3, greedy=True)
    page.click("#generate")
    wait_done(page)
    assert page.evaluate("() => window.__pwned") is None
    assert "<script>" in page.inner_text("#output")
    page.get_by_role("tab", name="Tokens").click()
    page.wait_for_function("() => document.querySelector('#token-chips').innerText.includes('script')")
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#output script, #token-chips script, #output img, #token-chips img").count() == 0


def test_clicking_a_token_selects_it_everywhere(page):
    set_prompt(page, "One two three four five", max_new=4, greedy=True)
    page.click("#generate")
    wait_done(page)
    page.get_by_role("tab", name="Attention").click()
    page.wait_for_selector("#attn-text .tok")
    chip = page.locator("#output .tok").first
    pos = int(chip.get_attribute("data-pos"))
    chip.click()
    # the attention text names the selected query token, and the output marks it
    page.wait_for_function(f"() => document.querySelector('#attn-text').innerText.includes('token {pos}')")
    assert "sel" in page.locator(f'#output .tok[data-pos="{pos}"]').get_attribute("class")
    page.get_by_role("tab", name="Tokens").click()
    is_selected = "(sel) => document.querySelector(sel)?.classList.contains('sel')"
    page.wait_for_function(is_selected, arg=f'#token-chips .tok[data-pos="{pos}"]')
    # and a chip in the Tokens tab selects too: pick the first token of the prompt
    page.locator('#token-chips .tok[data-pos="0"]').click()
    page.wait_for_function(is_selected, arg='#token-chips .tok[data-pos="0"]')


def test_sessions_never_see_each_others_prompts_or_outputs(browser, app_url):
    pages = []
    for prompt in ("Alpha apples are", "Zebra zeppelins are"):
        context, page = open_page(browser, app_url)
        set_prompt(page, prompt, max_new=8, greedy=True)
        pages.append((context, page, prompt))
    for _, page, _ in pages:  # both generate at the same time
        page.click("#generate")
    for _, page, _ in pages:
        wait_done(page)
    (ca, a, pa), (cb, b, pb) = pages
    assert pa in a.inner_text("#output") and pb not in a.inner_text("#output")
    assert pb in b.inner_text("#output") and pa not in b.inner_text("#output")
    for page, prompt in ((a, pa), (b, pb)):  # the Tokens tab counts this session's own prompt
        page.get_by_role("tab", name="Tokens").click()
        page.wait_for_function("(n) => document.querySelector('#token-stats').innerText.includes(n)",
                               arg=f"characters\t{len(prompt)}")
    ca.close()
    cb.close()


def test_the_title_line_shows_the_app_and_the_whole_model_name_on_a_projector(browser, app_url):
    """At 1280x720 the title line holds the app's name, its purpose (cut with an ellipsis if it must be), the
    controls and the model's name: the name whole, never cut."""
    context, page = open_page(browser, app_url, viewport={"width": 1280, "height": 720})
    try:
        cut = page.evaluate("""() => {
            const clipped = (el, box) => {
                const r = el.getBoundingClientRect(), b = box.getBoundingClientRect();
                return r.left < b.left - 0.5 || r.right > b.right + 0.5;
            };
            const summary = document.querySelector('#model-summary .summary');
            const range = document.createRange();
            range.selectNodeContents(summary.querySelector('b'));
            const name = range.getBoundingClientRect();
            return {name: name.right > summary.getBoundingClientRect().right + 0.5,
                    app: clipped(document.querySelector('#title h1'), document.querySelector('#title'))};
        }""")
        assert cut == {"name": False, "app": False}
    finally:
        context.close()


def test_the_strips_two_parts_read_as_one_text(page):
    """The output strip is the settled text and the newest tokens, two components (explorer/ui/output_strip.py):
    on the page they are one paragraph. The first token of the second part starts where the last of the first
    ends, on the same line, with no gap or break between them, as any two neighbouring tokens do."""
    set_prompt(page, "The capital of France is", max_new=100)
    page.locator("#stop-at-eos input").uncheck()
    page.click("#generate")
    wait_done(page)
    assert page.locator("#output-head .tok").count() == 64 and page.locator("#output-tail .tok").count() == 36
    gaps = page.evaluate("""() => {
        const toks = [...document.querySelectorAll('#output .tok')];
        const last = (t) => { const r = t.getClientRects(); return r[r.length - 1]; };
        return toks.slice(1).map((t, i) => [i + 1, t.getClientRects()[0].left - last(toks[i]).right,
                                             t.getClientRects()[0].top - last(toks[i]).top]); }""")
    same_line = [(i, gap) for i, gap, dy in gaps if dy == 0]
    # this seeded run's 64th and 65th tokens sit in the middle of a line (as parts in boxes of their own would not)
    assert (64, pytest.approx(0, abs=0.5)) in same_line, gaps[63]
    assert all(abs(gap) < 0.5 for _, gap in same_line), same_line
