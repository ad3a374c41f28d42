"""The Attention tab's handlers on the embedded model: a click recomputes at most the one layer it shows, sends only
the outputs that changed, fills the overview a little per render, and a click on the overview opens its head."""
from __future__ import annotations

from unittest import mock

import gradio as gr
import numpy as np
import pytest

from explorer.session import Session
from explorer.ui import attention_tab
from explorer.ui.attention_tab import AttentionTab
from explorer.views import attention as views
from model.trace import Trace

TEXT = ("The teacher opened the notebook and asked the class a question. Nobody answered, so she wrote it on the "
        "board: why does the model look at the first token so often?")
MAP, GRID, TEXT_PANEL, LATENT, LAYER, HEAD = range(6)


@pytest.fixture(scope="module")
def tab(embedded_lm):
    with gr.Blocks():
        return AttentionTab(embedded_lm)


@pytest.fixture(autouse=True)
def fill_all_at_once():
    """A render fills the whole overview (it stops after FILL_SECONDS; tests that count layers set it to 0)."""
    with mock.patch.object(attention_tab, "FILL_SECONDS", 1e9):
        yield


def session(lm, text: str = TEXT) -> Session:
    s = Session()
    s.start(lm.tokenizer.encode(text), {})
    s.generating = False
    return s


def skipped(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def attention_calls(tab: AttentionTab, s: Session, *controls) -> tuple[list, int]:
    """Render after set_controls(*controls) (none: just render), counting the layers recomputed."""
    with mock.patch.object(Trace, "attention", autospec=True, side_effect=Trace.attention) as spy:
        if controls:
            tab.set_controls(s, *controls)
        out = tab.render(s)
    return out, spy.call_count


def test_first_render_sends_everything_then_nothing_when_nothing_changed(tab, embedded_lm):
    s = session(embedded_lm)
    out, calls = attention_calls(tab, s)
    assert calls == embedded_lm.config.n_layers
    assert not any(skipped(v) for v in out[:3]) and skipped(out[LAYER]) and skipped(out[HEAD])
    assert out[GRID].layout.meta["pending"] is False
    again, calls = attention_calls(tab, s, 0, "mean", False, "")
    assert calls == 0 and all(skipped(v) for v in again)


def test_layer_head_token_and_sink_clicks_recompute_at_most_one_layer(tab, embedded_lm):
    s = session(embedded_lm)
    tab.render(s)
    out, calls = attention_calls(tab, s, 5, "mean", False, "")
    assert calls == 1  # the new layer's map
    assert "Layer 5" in out[MAP].layout.title.text
    assert skipped(out[GRID])  # the page moves the overview's outline (assets/attention.js)

    out, calls = attention_calls(tab, s, 5, "3", False, "")
    assert calls == 0 and "head 3" in out[MAP].layout.title.text

    s.selected = 7
    out, calls = attention_calls(tab, s)
    assert calls == 0 and skipped(out[GRID])  # the overview does not depend on the token
    assert 'class="tok query" data-pos="7"' in out[TEXT_PANEL]

    out, calls = attention_calls(tab, s, 5, "3", True, "")
    assert calls == 0
    assert views.SINK_NOTE in out[MAP].layout.title.text and views.SINK_NOTE in out[GRID].layout.title.text
    (outline,) = out[GRID].layout.shapes  # a new overview comes with the outline of the selected layer and head
    assert outline.y0 < 5 < outline.y1 and outline.x0 < 3 < outline.x1
    assert out[GRID].layout.meta == dict(pending=False, tile=12, heads=9)
    z = np.asarray(out[GRID].data[0].z)
    expected = views.pool_attention(views.hide_first_token(s.trace(embedded_lm).attention(5)), 12)[3].numpy()
    np.testing.assert_allclose(z[5 * 13 : 5 * 13 + 12, 3 * 13 : 3 * 13 + 12], expected, equal_nan=True, rtol=1e-4,
                               atol=1e-6)


def test_a_click_on_the_overview_opens_that_layer_and_head_once(tab, embedded_lm):
    s = session(embedded_lm)
    tab.render(s)
    out, _ = attention_calls(tab, s, 0, "mean", False, "open:12:4:1700000000000")
    assert (s.layer, s.head) == (12, 4)
    assert out[LAYER].value == 12 and out[HEAD].value == "4"
    assert "Layer 12, head 4" in out[MAP].layout.title.text
    # the next change of a control comes with the same (old) pick: the control wins
    out, _ = attention_calls(tab, s, 12, "6", False, "open:12:4:1700000000000")
    assert (s.layer, s.head) == (12, 6) and skipped(out[LAYER]) and skipped(out[HEAD])
    tab.set_controls(s, 12, "6", False, "open:99:4:1700000000001")  # out of range: ignored
    assert (s.layer, s.head) == (12, 6)


def test_a_long_context_fills_the_overview_a_layer_per_render_and_windows_the_map(tab, embedded_lm):
    s = session(embedded_lm, " ".join([TEXT] * 8))
    n_layers = embedded_lm.config.n_layers
    with mock.patch.object(attention_tab, "FILL_SECONDS", 0.0):
        out, calls = attention_calls(tab, s)
        assert calls == 1  # the shown layer, whose tiles start the overview
        assert out[GRID].layout.meta["pending"] is True and "computing: 1 of 30 layers" in out[GRID].layout.title.text
        n = len(s.ids)
        assert n > attention_tab.MAP_TOKENS and len(out[MAP].data[0].y) == attention_tab.MAP_TOKENS
        for _ in range(n_layers - 2):
            out, calls = attention_calls(tab, s, 0, "mean", False, "more:1")
            assert calls == 1 and skipped(out[MAP]) and skipped(out[TEXT_PANEL])
        out, calls = attention_calls(tab, s, 0, "mean", False, "more:2")
    assert calls == 1 and out[GRID].layout.meta["pending"] is False
    z = np.asarray(out[GRID].data[0].z)
    assert not np.isnan(z[29 * 13 : 29 * 13 + 12, :12]).all()
    s.selected = 10
    out, calls = attention_calls(tab, s)
    assert calls == 0 and out[MAP].data[0].y[0].startswith("0 ")
