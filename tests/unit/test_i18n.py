"""The UI's words all come from explorer/i18n.py: every key has English and French, and every text the browser would
translate in the built app (labels, info texts, placeholders, buttons, Markdown and HTML values, tab and accordion
labels, choices' labels) is a key, for the embedded model and for an MLA + MoE model (its Experts tab)."""
from __future__ import annotations

import json
import re

import pytest
from gradio.i18n import I18nData

from explorer.i18n import I18N, LANGUAGES, TEXTS, english, t

MARKER = re.compile(r"__i18n__(\{.*?\})")
LETTERS = re.compile(r"[^\W\d_]")  # a text with no letter ("0", "3", "×") reads the same in every language
TRANSLATED = ("label", "info", "placeholder", "title", "description")  # as Gradio 6's front end translates them
VALUE_SHOWN = {"button", "markdown", "html"}  # components whose value is text the page shows as it is
NOT_UI = {"api", "state", "timer"}
# texts that are not the UI's chrome, by elem_id and property, and why they stay as they are
LEFT_AS_THEY_ARE = {
    ("model-summary", "value"): "the model's name and numbers, built from its config",
    ("experts-model-note", "value"): "this model's routing in numbers",
    ("examples", "choices"): "the names of assets/prompts.json's English prompts for an English model",
    ("lessons", "choices"): "the lessons' titles, from their data files (assets/lessons)",
    ("select-token", "value"): "a button the page's scripts press, hidden",
    ("branch-token", "value"): "a button the page's scripts press, hidden",
    ("switch-branch", "value"): "a button the page's scripts press, hidden",
    ("share-apply-view", "value"): "a button the page's scripts press, hidden",
}
NOT_YET_CONVERTED: set[str] = set()  # elem_ids of parts whose texts are not checked (none: every tab is converted)


def test_every_key_has_every_language():
    assert LANGUAGES == ("en", "fr")
    for key, texts in TEXTS.items():
        assert set(texts) == set(LANGUAGES), key
        assert all(texts[lang].strip() for lang in LANGUAGES), key
        # Gradio's front end reads a text as an ICU message, and a marker ends at its first "}"
        assert not any(set("{}") & set(texts[lang]) for lang in LANGUAGES), key
    for lang in LANGUAGES:
        assert set(I18N.translations_dict[lang]) == set(TEXTS)


def test_french_is_typeset_and_english_kept_as_written():
    french = I18N.translations_dict["fr"]
    assert french["controls.chat_info"].count("\u00a0:") == 2 and " :" not in french["controls.chat_info"]
    assert I18N.translations_dict["en"]["controls.chat_info"] == english("controls.chat_info")
    assert french["arch.path"].startswith("Chemin") and "«\u00a0Un config.json\u00a0»" in french["arch.path"]


def test_an_unknown_key_fails_when_the_ui_is_built():
    with pytest.raises(KeyError, match="no UI text"):
        t("controls.no_such_text")
    assert str(t("controls.generate")) == '__i18n__{"__type__": "translation_metadata", "key": "controls.generate"}'


def layout_ids(node: dict, inside: bool, out: set[int], skip: set[int]) -> None:
    """The ids of the components under a layout node that lies inside one of the skipped subtrees."""
    here = inside or node["id"] in skip
    if here:
        out.add(node["id"])
    for child in node.get("children", []):
        layout_ids(child, here, out, skip)


def untranslated(config: dict) -> list[str]:
    """Every text of the app's config that the browser would show untranslated: 'elem_id.prop: text'."""
    components = config["components"]
    skipped_roots = {c["id"] for c in components if c.get("props", {}).get("elem_id") in NOT_YET_CONVERTED}
    skipped: set[int] = set()
    layout_ids(config["layout"], False, skipped, skipped_roots)
    found, keys = [], []
    for c in components:
        props, kind = c.get("props", {}), c["type"]
        if kind in NOT_UI or c["id"] in skipped:
            continue
        texts = [(name, props.get(name)) for name in TRANSLATED]
        if kind in VALUE_SHOWN:
            texts.append(("value", props.get("value")))
        texts += [("choices", label) for label, _ in props.get("choices") or []]
        for name, text in texts:
            text = str(text) if isinstance(text, I18nData) else text  # as the page receives it
            if not isinstance(text, str) or not text:
                continue
            keys += [json.loads(m)["key"] for m in MARKER.findall(text)]
            if "__i18n__" in text or not LETTERS.search(text):
                continue
            if (props.get("elem_id"), name) not in LEFT_AS_THEY_ARE:
                found.append(f"{props.get('elem_id') or kind}.{name}: {text[:80]}")
    unknown = sorted(set(keys) - set(TEXTS))
    return found + [f"unknown key {key}" for key in unknown]


def built(lm) -> dict:
    from explorer.model_thread import MODEL_THREAD
    from explorer.ui.blocks import build_app

    return MODEL_THREAD.run(build_app, lm).get_config_file()


@pytest.fixture(scope="module")
def moe_lm():
    from model import load_model

    return load_model("random:deepseek-v3-mini", device="cpu", dtype="float32")


def test_every_text_of_the_ui_is_a_key(embedded_lm):
    config = built(embedded_lm)
    assert untranslated(config) == []
    labels = [str(c["props"].get("label")) for c in config["components"] if c["type"] == "tabitem"]
    assert sum("__i18n__" in label for label in labels) == 10  # every tab of the explorer and the Probe tab's three


def test_every_text_of_the_moe_ui_is_a_key(moe_lm):
    config = built(moe_lm)
    assert untranslated(config) == []
    types = {c["props"].get("elem_id"): c for c in config["components"]}
    assert "tab-experts" in types and "experts-layer" in types  # the Experts tab and its layer menu were checked
    assert all("__i18n__" in str(label) for label, _ in types["experts-layer"]["props"]["choices"])


def test_the_check_finds_an_english_literal(embedded_lm):
    """The check itself: a label written in English, not as a key, is found."""
    config = built(embedded_lm)
    seed = next(c for c in config["components"] if c["props"].get("elem_id") == "seed")
    seed["props"]["label"] = "Seed"
    seed["props"]["info"] = "__i18n__" + json.dumps({"__type__": "translation_metadata", "key": "controls.nope"})
    assert untranslated(config) == ["seed.label: Seed", "unknown key controls.nope"]
