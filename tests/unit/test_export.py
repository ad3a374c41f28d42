"""Session files, the per-token CSV, the offline report, the weights' hash and shared links' values
(explorer/export.py), on real Steps of the embedded model."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
from dataclasses import dataclass

import pytest

from explorer import export
from explorer.export import (MAX_SESSION_CHARS, SessionFileError, check_model, first_mismatch, parse_link, read_session,
                             report_html, session_document, session_json, tokens_csv, weights_sha256)

PROMPT = 'He said "a, b"\nthen'
SETTINGS = dict(prompt=PROMPT, max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.95, seed=3, greedy=False,
                chat=False, stop_at_eos=False, note=None)
MODEL = dict(name="SmolLM2-135M-Instruct", weights_sha256="ab" * 32, device="cpu", dtype="float32")
BRANCH = dict(parent=0, at=2, token_id=7, cut=False, ids=[7, 11, 12])


@pytest.fixture(scope="module")
def run(embedded_lm):
    ids = embedded_lm.prompt_ids(PROMPT)
    kwargs = {k: SETTINGS[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "greedy",
                                       "stop_at_eos")}
    return embedded_lm, ids, list(embedded_lm.generate(ids, **kwargs))


def document(run, **changes):
    lm, ids, steps = run
    doc = session_document(MODEL, ids, SETTINGS, steps, dict(tab="Attention", token=len(ids) + 2, layer=5, head=3))
    return {**doc, **changes}


def test_a_session_file_round_trips_with_its_version_and_empty_branches(run):
    lm, ids, steps = run
    doc = document(run)
    back = read_session(session_json(doc))
    assert back == doc
    assert back["version"] == export.VERSION and back["format"] == export.FORMAT
    assert back["branches"] == [] and back["interventions"] == []
    assert back["prompt_ids"] == ids and back["model"] == MODEL
    assert "note" not in back["settings"] and back["settings"]["seed"] == 3
    assert [s["token_id"] for s in back["steps"]] == [s.token_id for s in steps]
    assert [s["text"] for s in back["steps"]] == [s.text for s in steps]
    assert len(back["steps"][0]["top_ids"]) == len(steps[0].top_ids) == 20
    assert back["selection"]["layer"] == 5
    assert first_mismatch(back["steps"], steps) is None  # the stored floats are close enough to check a replay


def test_the_same_generation_replays_and_every_change_is_found(run, embedded_lm):
    lm, ids, steps = run
    again = list(embedded_lm.generate(ids, max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.95, seed=3,
                                      stop_at_eos=False))
    recorded = document(run)["steps"]
    assert first_mismatch(recorded, again) is None
    other_seed = list(embedded_lm.generate(ids, max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.95, seed=4,
                                           stop_at_eos=False))
    assert "differs" in first_mismatch(recorded, other_seed)

    def changed(i: int, **fields) -> list[dict]:
        return [dict(s, **fields) if s["index"] == i else s for s in recorded]

    wrong_token = changed(4, token_id=(recorded[4]["token_id"] + 1))
    assert first_mismatch(wrong_token, steps).startswith("Token 5 differs: the file has id")
    assert "text differs" in first_mismatch(changed(2, text="XYZ"), steps)
    assert "probability differs" in first_mismatch(changed(7, prob=recorded[7]["prob"] * 0.9), steps)
    assert "entropy differs" in first_mismatch(changed(1, entropy=recorded[1]["entropy"] + 0.01), steps)
    top = list(recorded[0]["top_ids"])
    top[1], top[2] = top[2], top[1]
    assert "top candidates differ" in first_mismatch(changed(0, top_ids=top), steps)
    assert "ended after 6 tokens" in first_mismatch(recorded, steps[:6])


def test_version_1_files_still_read_and_version_2_holds_branches_and_ablations(run):
    doc = document(run)
    old = {k: v for k, v in doc.items() if k != "current_branch"}
    assert read_session(json.dumps({**old, "version": 1})) == {**old, "version": 1}
    lm, ids, steps = run
    doc = session_document(MODEL, ids, SETTINGS, steps, {}, [BRANCH], [dict(kind="head", layer=3, head=1)], 1)
    back = read_session(session_json(doc))
    assert back["branches"] == [BRANCH] and back["current_branch"] == 1
    assert back["interventions"] == [{"kind": "head", "layer": 3, "head": 1}]


@pytest.mark.parametrize("edit, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: json.dumps([1, 2]), "not a session file of the LLM Explorer"),
    (lambda d: json.dumps({**d, "format": "other"}), "not a session file"),
    (lambda d: json.dumps({**d, "version": 3}), "version 3, written by a newer explorer"),
    (lambda d: json.dumps({**d, "version": True}), "no valid version"),
    (lambda d: json.dumps({**d, "model": {}}), "does not name its model"),
    (lambda d: json.dumps({**d, "prompt_ids": ["1"]}), "prompt_ids must be"),
    (lambda d: json.dumps({**d, "settings": {"prompt": "x"}}), "settings must hold"),
    (lambda d: json.dumps({**d, "steps": []}), "holds no generated tokens"),
    (lambda d: json.dumps({**d, "steps": d["steps"][1:]}), "Token 1 of the session file is out of order"),
    (lambda d: json.dumps({**d, "steps": [dict(d["steps"][0], prob="0.5")]}), "Token 1 of the session file has no "
                                                                               "valid prob"),
    (lambda d: json.dumps({**d, "steps": [dict(d["steps"][0], top_probs=[0.5])]}), "malformed top candidates"),
    (lambda d: json.dumps({**d, "branches": [{"at": 3}]}), "Branch 1 of the session file must leave an earlier"),
    (lambda d: json.dumps({**d, "branches": [BRANCH, dict(BRANCH, parent=2)]}), "Branch 2 of the session file must "
                                                                               "leave an earlier branch (parent 0 to 1)"),
    (lambda d: json.dumps({**d, "branches": [dict(BRANCH, cut="no")]}), "no valid at, token_id or cut"),
    (lambda d: json.dumps({**d, "branches": [dict(BRANCH, ids=[8, 9])]}), "the forced one first"),
    (lambda d: json.dumps({**d, "branches": [BRANCH] * 33}), "33 branches; at most 32"),
    (lambda d: json.dumps({**d, "branches": [BRANCH], "current_branch": 2}), "current_branch must be a branch number "
                                                                              "from 0 to 1"),
    (lambda d: json.dumps({**d, "interventions": ["head 3"]}), "interventions must be objects"),
    (lambda d: json.dumps({**d, "interventions": {}}), "interventions must be a list"),
    (lambda d: " " * (MAX_SESSION_CHARS + 1), "too large to be a session file"),
    (lambda d: "", "The session file is empty"),
])
def test_a_broken_or_foreign_file_is_refused_with_a_sentence(run, edit, message):
    with pytest.raises(SessionFileError, match=re.escape(message)):
        read_session(edit(document(run)))


def test_another_model_other_weights_or_foreign_ids_are_refused(run):
    doc = document(run)
    check_model(doc, MODEL["name"], MODEL["weights_sha256"], 49152)
    with pytest.raises(SessionFileError, match="made with 'SmolLM2-135M-Instruct'; this server runs 'other'"):
        check_model(doc, "other", MODEL["weights_sha256"], 49152)
    with pytest.raises(SessionFileError, match="other weights of SmolLM2-135M-Instruct .sha256 ababababab"):
        check_model(doc, MODEL["name"], "cd" * 32, 49152)
    with pytest.raises(SessionFileError, match="outside this model's vocabulary"):
        check_model({**doc, "prompt_ids": [1, 60000]}, MODEL["name"], MODEL["weights_sha256"], 49152)


def test_the_largest_session_the_server_allows_fits_the_import_cap():
    """256 tokens (the server's default max_new_tokens) of 20 candidates with full-length floats."""
    @dataclass
    class FakeStep:
        index: int
        position: int
        token_id: int = 49151
        text: str = "\u00a0longest"
        prob: float = 0.123456789123
        sampled_prob: float = 0.123456789123
        entropy: float = 10.123456789123
        n_kept: int = 49152
        kept_mass: float = 0.987654321987
        finish_reason: str | None = None

        def __post_init__(self):
            rng = random.Random(self.index)
            self.top_ids = [rng.randrange(49152) for _ in range(20)]
            self.top_probs = [rng.random() / 7 for _ in range(20)]
            self.top_sampled_probs = [rng.random() / 7 for _ in range(20)]
            self.top_kept = [True] * 20

    steps = [FakeStep(i, 1024 + i) for i in range(256)]
    text = session_json(session_document(MODEL, [49151] * 1024, SETTINGS, steps, {}))
    assert len(text) < MAX_SESSION_CHARS, len(text)
    assert len(read_session(text)["steps"]) == 256


def test_the_weights_hash_is_the_files_sha256_computed_once_per_version(tmp_path, monkeypatch):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"weights" * 1000)
    calls = []
    real = export._file_sha256
    monkeypatch.setattr(export, "_file_sha256", lambda p: calls.append(p) or real(p))
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights_sha256(str(weights)) == expected
    assert weights_sha256(str(weights)) == expected and len(calls) == 1
    weights.write_bytes(b"other weights")
    os.utime(weights, ns=(1, 1))
    assert weights_sha256(str(weights)) == hashlib.sha256(b"other weights").hexdigest() and len(calls) == 2
    folder = tmp_path / "hf"
    folder.mkdir()
    for name in ("b.safetensors", "a.safetensors"):
        (folder / name).write_bytes(name.encode())
    (folder / "config.json").write_text("{}")
    both = weights_sha256(str(folder))
    assert len(both) == 64 and both not in (hashlib.sha256(b"a.safetensors").hexdigest(), expected)
    (folder / "a.safetensors").write_bytes(b"changed")
    assert weights_sha256(str(folder)) != both
    assert weights_sha256("random:deepseek-v3-mini") is None


def test_the_csv_has_a_row_per_token_with_its_top_five(run):
    lm, ids, steps = run
    text = tokens_csv(steps, lambda i: lm.tokenizer.decode([i]))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:5] == ["position", "id", "text", "p", "entropy"] and rows[0][-1] == "top5_p" and len(rows[0]) == 20
    assert len(rows) == len(steps) + 1
    for row, step in zip(rows[1:], steps):
        assert int(row[0]) == step.position and int(row[1]) == step.token_id and row[2] == step.text
        assert float(row[3]) == pytest.approx(step.prob, rel=1e-5)
        assert float(row[4]) == pytest.approx(step.entropy, rel=1e-5)
        assert [int(row[5 + 3 * k]) for k in range(5)] == step.top_ids[:5]
        assert row[6] == lm.tokenizer.decode([step.top_ids[0]])
        assert float(row[7]) == pytest.approx(step.top_probs[0], rel=1e-5)
    assert any(step.text and step.text in row[2] for row, step in zip(rows[1:], steps))


class FakeFigure:
    def __init__(self, title: str) -> None:
        self.title = title

    def to_json(self) -> str:
        return json.dumps({"data": [{"type": "bar", "y": [1, 2]}], "layout": {"title": {"text": self.title}}})


def test_the_report_embeds_plotly_once_and_no_text_escapes_its_place():
    page = report_html("A <b>title</b>", "meta & more", "<p>the text</p>",
                       [("Tokens", ["<div class='chips'>chips</div>",
                                    FakeFigure("</script><script>alert(1)</script>")]),
                        ("Attention", [FakeFigure("map")])],
                       plotly_js="/* PLOTLY-JS */ window.Plotly = {};", figure_export_js="/* EXPORT-JS */")
    assert page.count("/* PLOTLY-JS */") == 1 and page.count("/* EXPORT-JS */") == 1
    assert page.index("/* EXPORT-JS */") < page.index("/* PLOTLY-JS */")  # the toolbar's options wrap plotly first
    assert "<title>A &lt;b&gt;title&lt;/b&gt;</title>" in page and "meta &amp; more" in page
    assert "<p>the text</p>" in page and "<div class='chips'>chips</div>" in page
    assert page.count('class="figure"') == 2 and "<h2>Attention</h2>" in page
    assert "</script><script>alert(1)" not in page  # a figure's text cannot close its script element
    figures = re.findall(r'<script type="application/json" class="figure-json" '
                         r'data-target="(figure-\d)">(.*?)</script>', page, flags=re.S)
    assert [t for t, _ in figures] == ["figure-1", "figure-2"]
    assert json.loads(figures[0][1])["layout"]["title"]["text"] == "</script><script>alert(1)</script>"
    assert "http://" not in page and "https://" not in page  # no network


def test_a_link_query_is_typed_and_bad_values_are_named():
    values, problems = parse_link({"prompt": "Hi there", "max_new_tokens": "12", "temperature": "0.85",
                                   "top_k": "40", "top_p": "1", "seed": "7", "greedy": "0", "chat": "1",
                                   "stop_at_eos": "false", "run": "1", "tab": "Attention", "token": "9",
                                   "layer": "5", "head": "mean", "utm_source": "x"})
    assert problems == []
    assert values == dict(prompt="Hi there", max_new_tokens=12, temperature=0.85, top_k=40, top_p=1.0, seed=7,
                          greedy=False, chat=True, stop_at_eos=False, run=True, tab="Attention", token="9",
                          layer="5", head="mean")
    assert isinstance(values["max_new_tokens"], int) and isinstance(values["top_p"], float)
    values, problems = parse_link({"seed": "1.5", "temperature": "nan", "top_k": "lots", "greedy": "yes"})
    assert values == {}
    assert problems == ["temperature='nan' is not a number.", "top_k='lots' is not a whole number.",
                        "seed='1.5' is not a whole number.", "greedy='yes' is not 1 or 0."]
