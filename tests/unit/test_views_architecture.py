"""The Architecture view and tab: Kimi-K2 drawn from its config alone, counts shown equal the computed ones, escaping,
live stage norms (computed here from the real embedded model), and the tab's messages for configs it cannot show."""
from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import pytest
import torch

from explorer.session import Session
from explorer.ui.architecture_tab import CONFIG_FILE, KIMI, PRESENTATION_LESS, ROPE_HEIGHT, ArchitectureTab
from explorer.views import style
from explorer.views.rope import head_query_key, qk_by_distance
from explorer.views.architecture import (LABELS, LEGEND, STAGES, architecture_html, group_title, human, layer_ranges,
                                         parameter_figure, stages_figure)
from model import ModelConfig
from model.params import parameter_counts

KIMI_JSON = Path(__file__).resolve().parents[2] / "assets" / "kimi-k2-instruct.config.json"
EVIL = '<script>alert(1)</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def kimi():
    cfg = ModelConfig.from_hf_config(json.loads(KIMI_JSON.read_text()))
    return cfg, parameter_counts(cfg)


@pytest.fixture(scope="module")
def live(embedded_lm):
    """Stage norms of the real model at the last token of a short prompt, computed from its blocks; RoPE angles."""
    dec = embedded_lm.decoder
    ids = embedded_lm.prompt_ids("The quick brown fox jumps over the lazy dog.")
    h = dec.embed(torch.tensor([ids]))
    positions = torch.arange(len(ids))
    rope = dec.rope(positions, h.dtype)
    stages = []
    with torch.no_grad():
        for block in dec.blocks:
            a_in = block.attn_norm(h)
            a_out = block.attn(a_in, positions, rope)[0]
            mid = h + a_out
            m_in = block.mlp_norm(mid)
            m_out = block.mlp(m_in)
            out = mid + m_out
            stages.append({k: float(t[0, -1].norm()) for k, t in zip(STAGES, (h, a_in, a_out, m_in, m_out, out))})
            h = out
    inv_freq = dec._inv_freq
    p = len(ids) - 1
    return stages, {"position": p, "angles_first_last": (p * float(inv_freq[0]), p * float(inv_freq[-1]))}


def test_kimi_renders_from_its_config_alone(kimi):
    cfg, counts = kimi
    html = architecture_html(cfg, counts, "Kimi-K2-Instruct")
    assert human(counts.total) == "1.03T" and human(counts.active) == "32.9B"
    assert human(counts.active_without_embeddings) == "31.7B"
    assert "<b>1.03T</b> parameters" in html and "<b>32.9B</b> active per token (31.7B without" in html
    assert "layer 0: dense MLP" in html and "layers 1–60: MoE, 384 experts, 8 active + 1 shared" in html
    assert "Multi-head Latent Attention" in html and "latent c_KV <span class=\"sh\">[T, 512]</span>" in html
    assert "q <span class=\"sh\">[T, 64, 192]</span>" in html
    assert "384 × <span class=\"sh\">[2048, 7168]</span>" in html  # each routed expert's gate/up
    assert "KV cache per token per layer: 576 numbers" in html
    assert "yarn ×32" in html and "live" not in re.sub(r"<style>.*?</style>", "", html)


def test_summary_table_shows_the_computed_counts(kimi, embedded_lm):
    for cfg, counts in (kimi, (embedded_lm.config, parameter_counts(embedded_lm.config))):
        html = architecture_html(cfg, counts, "m")
        table = html[html.index("Parameters by component"):]
        for name, c in counts.by_component().items():
            if c.total:
                row = re.search(re.escape(LABELS[name]) + r"</td>(.*?)</tr>", table).group(1)
                cells = re.findall(r'<td class="n[^"]*">(.*?)</td>', row)
                assert cells[0] == human(c.total) and cells[1] == human(c.active)
                assert cells[3] == f"{c.total:,}"
        assert f'<th class="n sh">{counts.total:,}</th>' in table
    assert parameter_counts(embedded_lm.config).total == embedded_lm.n_params


def test_names_and_labels_are_escaped(kimi):
    cfg, counts = kimi
    html = architecture_html(cfg, counts, EVIL)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html and "<img" not in html


def test_parameter_figure_bars_equal_the_counts(kimi, embedded_lm):
    cfg, counts = kimi
    fig = parameter_figure(counts)
    shown = [c for c in counts.by_component().values() if c.total]
    total, active = fig.data
    assert list(total.x) == [c.total for c in shown] and list(active.x) == [c.active for c in shown]
    assert list(fig.layout.yaxis.ticktext) == [LABELS[n] for n, c in counts.by_component().items() if c.total]
    dense = parameter_figure(parameter_counts(embedded_lm.config))
    assert len(dense.data) == 1 and sum(dense.data[0].x) == embedded_lm.n_params  # all active: one bar each


def test_live_stages_of_the_real_model(embedded_lm, live):
    stages, rope = live
    cfg = embedded_lm.config
    fig = stages_figure(stages, rope)
    for trace, key in zip(fig.data, STAGES):
        assert list(trace.y) == pytest.approx([s[key] for s in stages])
    assert stages[-1]["resid_norm_out"] > stages[0]["resid_norm_in"]  # the residual stream grows
    html = architecture_html(cfg, parameter_counts(cfg), "SmolLM2", stages, rope, layer=7)
    assert "live values: layer 7" in html
    assert f"‖h‖ residual in = {stages[7]['resid_norm_in']:.3g}" in html
    assert f"‖attention out‖ = {stages[7]['attn_out_norm']:.3g}" in html
    assert f"at position {rope['position']}: fastest pair turned {rope['angles_first_last'][0]:.3g} rad" in html
    with pytest.raises(ValueError):
        architecture_html(cfg, parameter_counts(cfg), "x", stages[:-1])


def test_figures_fit_a_projector_column_with_nothing_over_their_titles(kimi, live):
    """In the ~370 px column beside the diagram: a title line, a short subtitle, the legend under the axis."""
    _, counts = kimi
    stages, rope = live
    fig = stages_figure(stages, rope)
    title = fig.layout.title.text
    assert title.startswith("Vector norms through the layers<br><sup>RoPE at position")
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"
    assert fig.layout.height <= style.VIEW_HEIGHT and fig.layout.margin.t >= 75
    assert [t.name for t in fig.data] == list(LEGEND.values()) and max(len(n) for n in LEGEND.values()) <= 12
    params = parameter_figure(counts)
    assert params.layout.height <= style.VIEW_HEIGHT
    assert all(len(line) <= 32 for line in params.layout.title.text.split("<br>"))


def test_moe_card_shows_the_chosen_experts(kimi):
    cfg, counts = kimi
    stages = [dict.fromkeys(STAGES, 1.0) for _ in range(cfg.n_layers)]
    stages[3]["top_experts"] = [(17, 0.25), (301, 0.125)]
    html = architecture_html(cfg, counts, "k", stages, None, layer=3)
    assert "live values: layer 0" in html and "live values: layer 3" in html  # the dense card shows its own layer
    assert "#17 · 0.25" in html and "#301 · 0.12" in html


def test_layer_grouping_texts(kimi):
    cfg, _ = kimi
    assert layer_ranges([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7–8"
    assert group_title(cfg, "moe", [1, 3]) == "layers 1, 3: MoE, 384 experts, 8 active + 1 shared"


@pytest.fixture(scope="module")
def tab(embedded_lm):
    with gr.Blocks():
        return ArchitectureTab(embedded_lm)


def _show(tab: ArchitectureTab, show: str, path: str = "", view: str = "Blocks", factor: int = 0,
          s: Session | None = None) -> list:
    s = s or Session()
    tab.set_controls(s, show, path, view, factor)
    return tab.render(s)


def blocks(outputs: list) -> list:
    """The Blocks view's outputs of a render: diagram, parameter figure, stages plot."""
    return outputs[1:4]


def test_tab_shows_the_loaded_model_and_kimi(tab, embedded_lm):
    html, fig, stages = blocks(tab.render(Session()))
    assert f"{embedded_lm.n_params:,}" in html and "SmolLM2" in html and stages["visible"] is False
    html, fig, _ = blocks(_show(tab, KIMI))
    assert "1.03T" in html and "Kimi-K2" in html and fig.data[0].x[3] == parameter_counts(
        ModelConfig.from_hf_config(json.loads(KIMI_JSON.read_text()))).routed_experts.total


def test_tab_reads_a_config_path_and_explains_what_it_cannot(tab, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CONFIG_DIRS", str(tmp_path))  # the operator allows this folder
    tiny = dict(model_type="llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2)
    folder = tmp_path / EVIL.replace("/", "_")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny))
    html, _, _ = blocks(_show(tab, CONFIG_FILE, str(folder)))
    assert "layers 0–2: dense MLP" in html and "<script" not in html and "&lt;script&gt;" in html
    (tmp_path / "bert.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "zero.json").write_text(json.dumps(dict(tiny, num_attention_heads=0)))
    (tmp_path / "partial.json").write_text(json.dumps({"model_type": "llama"}))
    for path, expected in ((str(tmp_path / "missing.json"), "no such file"), (str(tmp_path / "bert.json"), "BertModel"),
                           (str(tmp_path / "broken.json"), "Expecting property name"), ("", "type the path"),
                           (str(tmp_path / "zero.json"), "Cannot show"), (str(tmp_path / "partial.json"), "has no"),
                           ("/etc/passwd", "only opens configs under"),
                           (str(tmp_path / ".." / "elsewhere.json"), "only opens configs under")):
        html, fig, stages = blocks(_show(tab, CONFIG_FILE, path))
        assert html.startswith("<p") and "Cannot show this config" in html and expected in html, (path, html)
        assert stages["visible"] is False


def test_tab_shows_live_values_from_stages_fn(embedded_lm, live):
    stages, rope = live
    with gr.Blocks():
        tab = ArchitectureTab(embedded_lm, stages_fn=lambda s: {"layers": stages, "rope": rope})
    s = Session()
    s.layer = 4
    html, _, plot = blocks(tab.render(s))
    assert "live values: layer 4" in html and plot["visible"] is True
    assert list(plot["value"].data[0].y) == pytest.approx([x["resid_norm_in"] for x in stages])
    assert "live values" not in blocks(_show(tab, KIMI))[0]  # live values belong to the loaded model only


def test_other_families_draw_their_own_parts():
    gpt2 = ModelConfig.from_hf_config(dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=2, n_head=4,
                                           n_positions=40))
    html = architecture_html(gpt2, parameter_counts(gpt2), "gpt2")
    assert "<b>LayerNorm</b>" in html and "pos_embed" in html and "position embedding P[t]" in html
    assert "gelu_tanh(x·W_upᵀ)" in html and "Multi-head attention" in html
    deepseek = ModelConfig.from_hf_config(dict(
        model_type="deepseek_v3", vocab_size=96, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
        num_hidden_layers=3, num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2,
        first_k_dense_replace=1, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
        q_lora_rank=None, n_group=4, topk_group=2))
    html = architecture_html(deepseek, parameter_counts(deepseek), "tiny")
    assert "x → q_proj → q" in html and "first the best 2 of 4 expert groups" in html
    assert "Shared experts (always on)" in html and "layers 1–2: MoE, 8 experts, 2 active + 2 shared" in html


def rope_view(outputs: list) -> list:
    """The RoPE view's outputs of a render: words, frequencies figure, q·k figure."""
    assert outputs[0]["visible"] is False and outputs[4]["visible"] is True  # the diagram hidden, the RoPE view shown
    assert all(o == gr.skip() for o in outputs[1:4])  # the hidden diagram is not drawn
    return outputs[5:]


def test_tab_shows_rope_for_the_loaded_model_kimi_and_a_chosen_context(tab):
    words, freqs, curves = rope_view(_show(tab, tab.loaded, view="RoPE"))
    assert "SmolLM2" in words and "q = k = (1, …, 1)" in words and "×4 to 32,768" in words
    assert len(freqs.data) == 6 and len(curves.data) == 8
    s = Session()
    words, _, curves = rope_view(_show(tab, KIMI, view="RoPE", s=s))  # its own stretch
    assert "YaRN ×32 from 4,096" in words and "×32 to 131,072" in words and int(curves.data[0].x[-1]) == 131072
    words, _, _ = rope_view(_show(tab, KIMI, view="RoPE", factor=2, s=s))  # the stretch chosen
    assert "×2 to 8,192" in words and s.arch_rope_factor == 2
    _show(tab, KIMI, view="RoPE", factor=3, s=s)  # not a choice of the menu: the model's own
    assert s.arch_rope_factor == 0
    s.presentation = True  # the output strip above grows: the figures shrink to stay on the first screen
    _, freqs, curves = rope_view(_show(tab, KIMI, view="RoPE", factor=2, s=s))
    assert freqs.layout.height == curves.layout.height == ROPE_HEIGHT - PRESENTATION_LESS
    outputs = _show(tab, KIMI, view="Blocks", factor=2, s=s)
    assert outputs[0]["visible"] is True and outputs[4]["visible"] is False and "Kimi-K2" in outputs[1]
    assert all(o == gr.skip() for o in outputs[5:])


def test_tab_rope_uses_the_selected_heads_real_query_and_key(tab, embedded_lm):
    s = Session()
    s.prompt_ids = embedded_lm.prompt_ids("The quick brown fox jumps over the lazy dog.")
    s.layer, s.head, s.selected = 3, 2, 4
    words, freqs, curves = rope_view(_show(tab, tab.loaded, view="RoPE", s=s))
    trace = s.trace(embedded_lm)
    q, k = head_query_key(embedded_lm.decoder, trace, 3, 4)
    expected = qk_by_distance(embedded_lm.config.rope, q[2:3], k[2:3], torch.tensor(list(curves.data[0].x)))
    assert list(curves.data[0].y) == pytest.approx(expected.tolist(), abs=1e-6)
    token = embedded_lm.tokenizer.decode([s.prompt_ids[4]]).replace(" ", "·")
    assert f"layer 3, head 2, q and k of “{token}” (position 4)" in words
    assert "Angle at position 4" in [a.text for a in freqs.layout.annotations]
    s.head = "mean"
    words, _, curves = rope_view(tab.render(s))
    every = qk_by_distance(embedded_lm.config.rope, q, k, torch.tensor(list(curves.data[0].x)))
    assert "9 heads averaged" in words and list(curves.data[0].y) == pytest.approx(every.tolist(), abs=1e-6)


def test_tab_rope_says_when_a_model_has_no_rotation(tab, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CONFIG_DIRS", str(tmp_path))
    (tmp_path / "gpt2.json").write_text(json.dumps(dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=2,
                                                         n_head=4, n_positions=40)))
    words, freqs, curves = rope_view(_show(tab, CONFIG_FILE, str(tmp_path / "gpt2.json"), "RoPE"))
    assert "has no rotary embedding: its positions are learned vectors" in words
    outputs = _show(tab, CONFIG_FILE, str(tmp_path / "missing.json"), "RoPE")  # said in both views
    words = outputs[5]
    assert outputs[4]["visible"] is True and outputs[1] == words
    assert "Cannot show this config" in words and "no such file" in words
