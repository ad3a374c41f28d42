"""The lesson files against their schema and the embedded model's shape (layers, heads, the tabs it has, token positions
inside each tokenized run); bad lesson files refused in a sentence. Reads the embedded GGUF's metadata only."""
from __future__ import annotations

import copy
import json

import pytest

from explorer.lessons import LESSONS_DIR, TABS, LessonError, View, check_against, load_lessons, parse_lesson
from explorer.ui.lessons import step_html
from model.config import ModelConfig
from model.loading.embedded import embedded_gguf_path
from model.loading.gguf_reader import GGUFFile
from model.loading.gguf_tokenizer import gguf_tokenizer

MODULES = ["tokens", "embeddings", "attention", "sampling", "rmsnorm", "rope", "mla", "moe", "induction-heads",
           "logit-lens"]  # the course's modules, plus induction heads and the logit lens
EMBEDDED_TABS = [t for t in TABS if t != "Experts"]  # SmolLM2 is dense: no Experts tab


@pytest.fixture(scope="module")
def embedded():
    meta = GGUFFile(embedded_gguf_path()).metadata
    cfg = ModelConfig.from_gguf_metadata(meta, has_output_weight=False)
    return cfg, gguf_tokenizer(meta)


def run_length(tokenizer, run: dict) -> int:
    """The most tokens the lesson's run can hold: its prompt, as the app tokenizes it, and its new tokens."""
    if run["chat"]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": run["prompt"]}])
        n_prompt = len(tokenizer.encode(text, add_special_tokens=False))
    else:
        n_prompt = len(tokenizer.encode(run["prompt"]))
    return n_prompt + run["max_new_tokens"]


def good() -> dict:
    return json.loads((LESSONS_DIR / "09-induction-heads.json").read_text())


def test_one_lesson_per_module_in_order():
    names = [lesson.name for lesson in load_lessons()]
    assert [name.split("-", 1)[1] for name in names] == MODULES
    assert [lesson.label.split(".")[0] for lesson in load_lessons()] == [str(i) for i in range(1, len(MODULES) + 1)]


@pytest.mark.parametrize("lesson", load_lessons(), ids=lambda lesson: lesson.name)
def test_lesson_fits_the_embedded_model_and_its_run(lesson, embedded):
    cfg, tokenizer = embedded
    assert lesson.model == "SmolLM2-135M-Instruct"
    check_against(lesson, cfg.n_layers, cfg.n_heads, EMBEDDED_TABS, run_length(tokenizer, lesson.run))
    assert 2 <= len(lesson.steps) <= 6 and all(len(step.text) <= 330 for step in lesson.steps)  # a few short steps
    assert lesson.run["greedy"] or "seed" in json.loads((LESSONS_DIR / f"{lesson.name}.json").read_text())["run"]


@pytest.mark.parametrize("lesson", load_lessons(), ids=lambda lesson: lesson.name)
def test_token_claims_hold_for_the_tokenized_prompt(lesson, embedded):
    _, tokenizer = embedded
    ids = tokenizer.encode(lesson.run["prompt"]) if not lesson.run["chat"] else []
    for claim in lesson.claims:
        if claim["kind"] == "token" and claim["position"] < len(ids):
            assert tokenizer.decode([ids[claim["position"]]]) == claim["text"], claim


def test_views_carry_each_step_forward_so_previous_lands_where_next_did():
    lesson = parse_lesson({**good(), "steps": [
        {"tab": "Attention", "layer": 3, "head": 2, "hide_sink": True, "text": "a"},
        {"token": 5, "text": "b"},
        {"tab": "Architecture", "architecture": "kimi-k2", "head": "mean", "hide_sink": False, "text": "c"}]}, "x")
    assert lesson.views() == [View("Attention", 3, 2, None, True), View("Attention", 3, 2, 5, True),
                              View("Architecture", 3, "mean", 5, False, "kimi-k2")]


def broken(change) -> dict:
    data = copy.deepcopy(good())
    change(data)
    return data


@pytest.mark.parametrize("change, message", [
    (lambda d: d["steps"][0].update(tab="Atention"), "no tab 'Atention'"),
    (lambda d: d["steps"][0].update(layer=30), "layer 30 of a model with 30 layers"),
    (lambda d: d["steps"][0].update(head=9), "head 9 of a model with 9 heads"),
    (lambda d: d["steps"][1].update(token=400, text="It looks back."), "position 400 is past the end of its run"),
    (lambda d: d["claims"].append({"kind": "token", "position": 400, "text": "x"}), "position 400 is past the end"),
    (lambda d: d["steps"][0].update(text="Layer 17, head 6 is an induction head."), "names layer 17"),
    (lambda d: d["steps"][1].update(text="At position 29 it looks back."), "names token 29"),
    (lambda d: d["steps"][0].update(tab="Experts"), "the Experts tab, which this model has not"),
    (lambda d: d["steps"][0].update(colour="red"), "unknown keys ['colour']"),
    (lambda d: d["steps"][0].pop("tab"), "the first step must name its tab"),
    (lambda d: d["steps"].clear(), "at least one step"),
    (lambda d: d["run"].update(greedy=False), "a sampled run must name its seed"),
    (lambda d: d["run"].update(max_new_tokens=0), "max_new_tokens must be a whole number ≥ 1"),
    (lambda d: d["run"].pop("prompt"), "the run needs a prompt"),
    (lambda d: d["claims"].append({"kind": "vibes"}), "a claim's kind must be one of"),
    (lambda d: d["claims"][0].pop("best"), "a head_score claim has the fields"),
])
def test_a_bad_lesson_is_refused_in_a_sentence(change, message, embedded):
    cfg, tokenizer = embedded
    data = broken(change)
    with pytest.raises(LessonError, match="^Lesson 09-x: .*" + message.replace("(", r"\(").replace("[", r"\[")):
        lesson = parse_lesson(data, "09-x")
        check_against(lesson, cfg.n_layers, cfg.n_heads, EMBEDDED_TABS, run_length(tokenizer, lesson.run))


def test_a_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "01-bad.json").write_text("{not json")
    with pytest.raises(LessonError, match="Lesson 01-bad: cannot read 01-bad.json"):
        load_lessons(tmp_path)


def test_the_panel_escapes_the_text_and_counts_steps():
    lesson = parse_lesson({**good(), "title": "<i>T</i>", "steps": [
        {"tab": "Tokens", "text": "**bold** <script>alert(1)</script> & more"}, {"text": "two"}]}, "09-x")
    panel = step_html(lesson, 0)
    assert "<b>bold</b>" in panel and "<script>" not in panel and "&lt;script&gt;" in panel and "<i>" not in panel
    assert '<span class="lesson-count">1 / 2</span>' in panel


def test_the_menu_lists_the_lessons_written_for_the_loaded_model_that_fit_it(embedded, caplog):
    from types import SimpleNamespace

    from explorer.ui.lessons import lessons_for

    cfg, tokenizer = embedded
    stub = lambda name: SimpleNamespace(name=name, config=cfg, prompt_ids=lambda prompt, chat=False: (  # noqa: E731
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": prompt}]), False) if chat
        else tokenizer.encode(prompt)))
    lessons = load_lessons()
    assert lessons_for(stub("SmolLM2-135M-Instruct"), lessons) == lessons
    assert lessons_for(stub("deepseek-v3-mini"), lessons) == []  # their texts describe another model
    too_deep = parse_lesson(broken(lambda d: d["steps"][0].update(layer=40, text="Deep.")), "09-x")
    assert lessons_for(stub("SmolLM2-135M-Instruct"), [too_deep, lessons[0]]) == [lessons[0]]
    assert "Lesson left out: Lesson 09-x: step 1: layer 40 of a model with 30 layers" in caplog.text
