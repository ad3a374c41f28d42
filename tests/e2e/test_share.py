"""Share and save, end to end at 1280x720: a link with run=1 gives the tokens /generate gives for the same settings and
opens its tab, layer, head and token; a reload keeps them; Copy link copies the page's link; Export then Open a session
file replays the run (a changed file is refused with a sentence); the report opens from disk, offline, with its
figures and their PNG/SVG toolbar; the same files through the API. Fails on any error toast or page error, and (the
conftest) on any traceback in the server's log."""
from __future__ import annotations

import csv
import io
import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from tests.e2e.conftest import HANG, open_page

PROJECTOR = {"width": 1280, "height": 720}
SETTINGS = dict(prompt="The capital of France is", max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, seed=7,
                greedy=False, chat=False, stop_at_eos=True)
VIEW = dict(tab="Attention", layer="5", head="3")
TOASTS = """() => {
    window.__toasts = [];
    new MutationObserver(() => document.querySelectorAll('.toast-body').forEach(t => {
        const text = t.innerText.trim();
        if (text && !window.__toasts.includes(text)) window.__toasts.push(text);
    })).observe(document.body, {childList: true, subtree: true});
}"""
CHIP_IDS = "() => [...document.querySelectorAll('#output .tok')].map(t => Number(t.title.match(/id (\\d+)/)[1]))"
SHOWN = """() => ({
    tab: document.querySelector('#tabs button[role=tab][aria-selected=true]').textContent.trim(),
    layer: document.querySelector('#attn-layer input[type=number]').value,
    head: document.querySelector('#attn-head input').value,
    token: (document.querySelector('#output .tok.sel') || {dataset: {}}).dataset.pos,
    map: (document.querySelector('#attn-map .js-plotly-plot').layout.title.text || ''),
})"""


def link(**values) -> str:
    return "?" + urllib.parse.urlencode({k: ("1" if v else "0") if isinstance(v, bool) else str(v)
                                         for k, v in values.items()})


@pytest.fixture(scope="module")
def generated(app_url) -> dict:
    """/generate's answer for SETTINGS: the token ids and the prompt's length."""
    result = Client(app_url, verbose=False).predict(*SETTINGS.values(), api_name="/generate")
    return dict(ids=[t["id"] for t in result["tokens"]], n_prompt=result["prompt_tokens"])


def open_projector(browser, url: str):
    context, page = open_page(browser, url, PROJECTOR)
    page.evaluate(TOASTS)
    return context, page


def settled(page, n_tokens: int, token: int | None = None) -> None:
    """Wait until the page shows n_tokens generated tokens, the run has ended and (token) that one is selected."""
    page.wait_for_function("(n) => document.querySelectorAll('#output .tok').length === n", arg=n_tokens)
    page.wait_for_function("() => document.querySelector('#generate:not([disabled])') && "
                           "document.querySelector('#stop[disabled]')")
    if token is not None:
        page.wait_for_function("(p) => document.querySelector(`#output .tok.sel[data-pos=\"${p}\"]`) && "
                               "(document.querySelector('#attn-map .js-plotly-plot')?.layout?.title?.text || '')"
                               ".startsWith('Layer 5, head 3')", arg=token)


def no_errors(page) -> None:
    assert page.evaluate("() => window.__toasts") == [], "an error toast reached the screen"
    assert not page.js_errors, page.js_errors


def test_a_link_runs_as_generate_opens_its_view_and_a_reload_keeps_it(browser, app_url, generated, screenshots):
    token = generated["n_prompt"] + 4
    context, page = open_projector(browser, app_url + link(**SETTINGS, **VIEW, token=token, run=True))
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    settled(page, len(generated["ids"]), token)
    assert page.evaluate(CHIP_IDS) == generated["ids"]
    shown = page.evaluate(SHOWN)
    assert (shown["tab"], shown["layer"], shown["head"], shown["token"]) == ("Attention", "5", "3", str(token))
    assert page.input_value("#prompt textarea") == SETTINGS["prompt"]
    assert page.input_value("#seed input") == "7" and page.input_value("#temperature input[type=number]") == "0.9"
    page.screenshot(path=str(screenshots / "share-link.png"))
    no_errors(page)

    # the query follows the page: another token selected, then a reload opens the same run on it
    other = generated["n_prompt"] + 9
    page.click(f'#output .tok[data-pos="{other}"]')
    page.wait_for_function("(p) => new URLSearchParams(location.search).get('token') === String(p)", arg=other)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))
    assert query["run"] == "1" and query["tab"] == "Attention" and query["layer"] == "5" and query["head"] == "3"
    page.click("#copy-link")
    page.wait_for_function("() => navigator.clipboard.readText().then(t => t === location.href)")
    page.reload()
    page.evaluate(TOASTS)
    settled(page, len(generated["ids"]), other)
    assert page.evaluate(CHIP_IDS) == generated["ids"]
    assert page.evaluate(SHOWN)["tab"] == "Attention"

    # a changed setting: the text shown is no longer what the link would generate, so run=1 leaves the query
    page.fill("#seed input", "8")
    page.locator("#seed input").blur()
    page.wait_for_function("() => new URLSearchParams(location.search).get('seed') === '8' && "
                           "!new URLSearchParams(location.search).has('run')")
    no_errors(page)
    context.close()


def test_a_link_with_values_this_page_cannot_hold_says_so_and_does_not_run(browser, app_url):
    context, page = open_projector(browser, app_url + link(prompt="Hello", top_k=5000, temperature=0.83, seed="x",
                                                          run=True))
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '')"
                           ".includes('run=1 was not done')")
    status = page.inner_text("#status")
    assert "Top-k must be a whole number from 0 to 1000, got the number 5000" in status
    assert "0.83 is not a step of the slider (0.05)" in status and "seed='x' is not a whole number" in status
    assert page.input_value("#prompt textarea") == "Hello"
    page.wait_for_timeout(1500)  # would a run have started, Stop would be on by now
    assert page.locator("#output .tok").count() == 0 and page.locator("#stop[disabled]").count() == 1
    page.goto(app_url + link(prompt="Hi", max_new_tokens=2, greedy=True, tab="Lens", layer=99, token=1, run=True))
    page.wait_for_selector("#generate")
    page.evaluate(TOASTS)
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('layer=')")
    status = page.inner_text("#status")
    assert "There is no tab 'Lens'" in status and "layer='99' is not one of this model's (0 to 29)" in status
    no_errors(page)
    context.close()


@pytest.fixture(scope="module")
def exported(browser, app_url, generated, tmp_path_factory) -> dict:
    """A run opened from a link, exported from the Save & share panel: the three files, downloaded."""
    token = generated["n_prompt"] + 4
    context, page = open_projector(browser, app_url + link(**SETTINGS, **VIEW, token=token, run=True))
    settled(page, len(generated["ids"]), token)
    page.click("#share-panel .label-wrap")
    page.click("#export")
    page.wait_for_function("() => document.querySelectorAll('#export-files a').length === 3")
    folder = tmp_path_factory.mktemp("exported")
    files = {}
    for href in page.evaluate("() => [...document.querySelectorAll('#export-files a')].map(a => a.href)"):
        name = Path(urllib.parse.unquote(href)).name
        files[name.split("-")[0]] = folder / name
        (folder / name).write_bytes(urllib.request.urlopen(href, timeout=HANG).read())
    no_errors(page)
    context.close()
    return dict(files=files, token=token)


def import_file(page, path: Path) -> str:
    """Open a session file from the panel, as a user picks it; the panel's message once it has answered."""
    if not page.locator("#import").is_visible():
        page.click("#share-panel .label-wrap")
    page.wait_for_selector("#share-message", state="attached")  # the opened panel renders its parts a moment later
    page.evaluate("() => { const m = document.querySelector('#share-message'); m.dataset.before = m.innerText; }")
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(path))
    page.wait_for_function("() => /^(Opened|Not opened)/.test(document.querySelector('#share-message').innerText)")
    return page.inner_text("#share-message")


def test_export_then_import_replays_the_session_and_a_changed_file_is_refused(browser, app_url, generated, exported,
                                                                               tmp_path):
    session = json.loads(exported["files"]["session"].read_text())
    assert session["version"] == 2 and session["branches"] == [] and session["interventions"] == []
    assert session["current_branch"] == 0
    assert [s["token_id"] for s in session["steps"]] == generated["ids"]
    assert session["selection"] == dict(tab="Attention", token=exported["token"], layer=5, head=3)
    assert len(session["model"]["weights_sha256"]) == 64
    rows = list(csv.DictReader(io.StringIO(exported["files"]["tokens"].read_text())))
    assert [int(r["id"]) for r in rows] == generated["ids"] and rows[0]["top1_id"]

    context, page = open_projector(browser, app_url)  # a fresh page: the default prompt, nothing generated
    message = import_file(page, exported["files"]["session"])
    assert message.startswith("Opened"), message
    settled(page, len(generated["ids"]), exported["token"])
    assert page.evaluate(CHIP_IDS) == generated["ids"]
    assert page.evaluate(SHOWN)["tab"] == "Attention"
    assert page.input_value("#prompt textarea") == SETTINGS["prompt"] and page.input_value("#seed input") == "7"
    assert "Opened a session file: 12 tokens" in page.inner_text("#status")
    page.wait_for_function("() => new URLSearchParams(location.search).get('run') === '1'")  # its link reproduces it

    changed = json.loads(json.dumps(session))
    changed["steps"][6]["token_id"] = changed["steps"][6]["token_id"] + 1
    refused = {"a changed token": (changed, "Not opened. Token 7 differs: the file has id"),
               "another model": ({**session, "model": {**session["model"], "name": "gpt-5"}},
                                 "Not opened. This session was made with 'gpt-5'")}
    for what, (document, expected) in refused.items():
        path = tmp_path / "changed.json"
        path.write_text(json.dumps(document))
        message = import_file(page, path)
        assert message.startswith(expected), (what, message)
    (tmp_path / "broken.json").write_text('{"format": "llm-explorer-session", ')
    assert "it is not valid JSON" in import_file(page, tmp_path / "broken.json")
    assert page.evaluate(CHIP_IDS) == generated["ids"]  # nothing refused reached the screen
    no_errors(page)
    context.close()


def test_the_report_opens_from_disk_offline_with_its_figures(browser, exported):
    context = browser.new_context(viewport=PROJECTOR, offline=True, accept_downloads=True)
    context.set_default_timeout(HANG * 1000)
    page = context.new_page()
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(exported["files"]["report"].as_uri())
    figures = page.locator(".figure").count()
    assert figures >= 8  # every tab's figures: tokens, embeddings, attention, next token, logit lens, architecture
    page.wait_for_function("(n) => document.querySelectorAll('.figure .main-svg').length >= n", arg=figures)
    headings = [h.inner_text() for h in page.locator("h2").all()]  # every tab of the page, in its order
    assert headings[:6] == ["Tokens", "Embeddings", "Attention", "Next token", "Logit lens", "Architecture"], headings
    assert page.locator("section.text .tok").count() == 12 and page.locator(".tokchips").count() == 1
    assert page.locator(".tok.sel").first.get_attribute("data-pos") == str(exported["token"])
    titles = page.evaluate("() => [...document.querySelectorAll('.figure')].map(f => f.layout.title.text || '')")
    assert any(t.startswith("Layer 5, head 3") for t in titles), titles  # the attention map of the selection
    config = page.evaluate("() => document.querySelector('.figure')._context.toImageButtonOptions")
    assert config["format"] == "png" and config["scale"] == 3
    with page.expect_download() as download:
        page.hover(".figure >> nth=0")
        page.click('.figure >> nth=0 >> [data-title="Download plot as an SVG"]')
    assert download.value.suggested_filename.endswith(".svg")
    assert download.value.path().read_text().startswith("<svg")
    assert not errors, errors
    assert all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests
    context.close()


def test_the_api_exports_and_imports_a_session(app_url, generated):
    client = Client(app_url, verbose=False)
    result = client.predict(*SETTINGS.values(), api_name="/export_session")
    session = result["session"]
    assert [s["token_id"] for s in session["steps"]] == generated["ids"]
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(result["csv"]))] == generated["ids"]
    answer = client.predict(json.dumps(session), api_name="/import_session")
    assert answer["tokens"] == len(generated["ids"]) and answer["checked"] is True
    session["steps"][3]["text"] = "Berlin"
    with pytest.raises(Exception, match="Token 4's text differs from the replay's: the file was changed"):
        client.predict(json.dumps(session), api_name="/import_session")
    with pytest.raises(Exception, match="not valid JSON"):
        client.predict("{", api_name="/import_session")
