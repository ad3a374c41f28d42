"""Experts views on a tiny random DeepSeek-V3-style model (real routing mechanics): the choice heatmap, one token's
experts, the load, shared vs routed norms, the router scores; escaping, a Kimi-K2-sized routing, and the tab's render."""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer as HFTokenizer

from explorer.views import experts as views
from model import load_model
from model.config import MoEConfig
from tests.conftest import write_tiny_tokenizer

N_EXPERTS, K = 16, 4
PROMPT = "Experts <script> and <b>bold</b> text:\n"


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-moe")
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=12, max_position_embeddings=512, tie_word_embeddings=False,
        n_routed_experts=N_EXPERTS, n_shared_experts=1, num_experts_per_tok=K, first_k_dense_replace=1,
        n_group=4, topk_group=2, routed_scaling_factor=2.5)
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "gate.weight" in name:
                p.normal_(0, 0.5)  # spread the router's scores
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.3)
    hf.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens(["<script>", "<b>bold</b>"])  # whole tags as single tokens, to test escaping
    tok.save(str(folder / "tokenizer.json"))
    return load_model(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def setup(lm):
    steps = list(lm.generate(PROMPT, max_new_tokens=40, record=True, seed=0, temperature=1.0))
    n_prompt = len(lm.tokenizer.encode(PROMPT))
    ids = lm.tokenizer.encode(PROMPT) + [s.token_id for s in steps]
    return lm, lm.tokenizer, lm.trace(ids), n_prompt, steps


def all_strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in all_strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in all_strings(v)]
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return [s for v in obj.tolist() for s in all_strings(v)]
    return []


def test_traces_grow_with_the_steps(setup):
    _, _, trace, n_prompt, steps = setup
    assert trace.moe_layers == [1, 2, 3]
    assert trace.experts.shape == (3, len(trace), K)
    lengths = [len(s.trace) for s in steps]
    assert lengths == list(range(n_prompt, n_prompt + len(steps)))
    # routing recorded during generation is the routing of the full trace
    assert torch.equal(steps[-1].trace.experts, trace.experts[:, : len(steps[-1].trace)])


def test_choice_heatmap_is_the_top1_expert(setup):
    _, tok, trace, n_prompt, _ = setup
    position = n_prompt + 2
    fig = views.expert_choice_figure(trace, tok, selected=position, n_prompt=n_prompt)
    heat = fig.data[0]
    assert heat.meta == "x-position"
    assert list(heat.x) == list(range(len(trace))) and list(heat.y) == [1, 2, 3]
    np.testing.assert_array_equal(np.asarray(heat.z), trace.experts[:, :, 0].numpy().astype(np.float32))
    # hover lists all k experts with their weights, in the recorded order
    cell = heat.customdata[1][position]
    es, ws = trace.experts[1, position].tolist(), trace.expert_weights[1, position].tolist()
    assert cell[0] == views.style.token_label(tok.decode([int(trace.ids[position])]))
    assert cell[1] == ", ".join(f"{e} ({w:.3f})" for e, w in zip(es, ws))
    rect = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rect) == 1 and rect[0].x0 == position - 0.5 and rect[0].x1 == position + 0.5


def test_choice_heatmap_of_a_long_context_is_a_window_around_the_selected_token(setup):
    _, tok, trace, _, _ = setup
    n = len(trace)
    fig = views.expert_choice_figure(trace, tok, max_tokens=20)  # nothing selected: the newest tokens
    heat = fig.data[0]
    assert list(heat.x) == list(range(n - 20, n))
    np.testing.assert_array_equal(np.asarray(heat.z), trace.experts[:, -20:, 0].numpy().astype(np.float32))
    assert f"tokens {n - 20}–{n - 1} of 0–{n - 1}" in fig.layout.title.text
    assert not fig.layout.shapes
    assert heat.texttemplate == "%{text}" and heat.text[0][0] == int(trace.experts[0, -20, 0])
    for selected in (0, 30):
        fig = views.expert_choice_figure(trace, tok, selected=selected, max_tokens=20)
        x = list(fig.data[0].x)
        assert len(x) == 20 and x == list(range(x[0], x[0] + 20)) and selected in x
        (rect,) = [s for s in fig.layout.shapes if s.type == "rect"]
        assert rect.x0 == selected - 0.5
    assert fig.layout.height <= views.style.VIEW_HEIGHT


def test_expert_colours_are_distinct_per_expert():
    scale, z_range = views.expert_colorscale(16)
    colours = [scale[2 * e][1] for e in range(16)]
    assert len(set(colours)) == 16 and z_range == dict(zmin=-0.5, zmax=15.5)
    assert views.expert_colorscale(384)[1] == dict(zmin=0, zmax=384)


def test_token_figure_shows_exactly_the_recorded_weights(setup):
    lm, tok, trace, n_prompt, _ = setup
    position = n_prompt + 5
    fig = views.token_experts_figure(trace, position, tok)
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    assert z.shape == (3, N_EXPERTS)
    for row in range(3):
        es, ws = trace.experts[row, position], trace.expert_weights[row, position]
        expected = np.full(N_EXPERTS, np.nan)
        expected[es.numpy()] = ws.numpy()
        np.testing.assert_array_equal(z[row], expected)
        assert math.isclose(float(ws.sum()), lm.config.moe.routed_scaling_factor, rel_tol=1e-5)
        ranks = np.asarray(fig.data[0].customdata)[row, es.numpy()]
        assert ranks.tolist() == [1, 2, 3, 4]
    shared = fig.data[1]
    assert "shared" in fig.layout.xaxis.ticktext and "always on" in shared.hovertemplate
    with pytest.raises(IndexError):
        views.token_experts_figure(trace, len(trace), tok)


def test_load_counts_sum_to_tokens_times_k(setup):
    _, _, trace, n_prompt, _ = setup
    n = len(trace)
    fig = views.expert_load_figure(trace, n_prompt=n_prompt)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (3, N_EXPERTS)
    np.testing.assert_array_equal(z.sum(axis=1), [n * K] * 3)
    for row in range(3):
        expected = np.bincount(trace.experts[row].flatten().numpy(), minlength=N_EXPERTS)
        np.testing.assert_array_equal(z[row], expected)
    assert fig.data[0].zmid == pytest.approx(n * K / N_EXPERTS)
    custom = np.asarray(fig.data[0].customdata)
    np.testing.assert_array_equal(custom[..., 1] + custom[..., 2], z)  # prompt + generated = all
    assert custom[..., 1].sum(axis=1).tolist() == [n_prompt * K] * 3


def test_load_bars_of_one_layer_split_prompt_and_generated(setup):
    _, _, trace, n_prompt, _ = setup
    n = len(trace)
    fig = views.expert_load_figure(trace, layer=2, n_prompt=n_prompt)
    prompt, generated = fig.data
    expected_prompt = np.bincount(trace.experts[1, :n_prompt].flatten().numpy(), minlength=N_EXPERTS)
    expected_all = np.bincount(trace.experts[1].flatten().numpy(), minlength=N_EXPERTS)
    np.testing.assert_array_equal(prompt.y, expected_prompt)
    np.testing.assert_array_equal(np.asarray(prompt.y) + np.asarray(generated.y), expected_all)
    line = [s for s in fig.layout.shapes if s.type == "line"][0]
    assert line.y0 == pytest.approx(n * K / N_EXPERTS)
    one = views.expert_load_figure(trace, layer=3)
    assert len(one.data) == 1 and np.asarray(one.data[0].y).sum() == n * K
    with pytest.raises(ValueError):
        views.expert_load_figure(trace, layer=0)  # dense


def test_shared_vs_routed_are_the_recomputed_norms(setup):
    _, tok, trace, n_prompt, _ = setup
    routing = trace.routing(2)
    fig = views.shared_vs_routed_figure(routing, tok, trace.ids.tolist(), selected=3, n_prompt=n_prompt)
    shared, routed = fig.data
    np.testing.assert_array_equal(shared.y, routing.shared_norm.numpy())
    np.testing.assert_array_equal(routed.y, routing.routed_norm.numpy())
    assert shared.meta == routed.meta == "x-position" and list(shared.x) == list(range(len(trace)))
    assert (routing.shared_norm > 0).all() and (routing.routed_norm > 0).all()


def test_router_scores_are_the_routing_scores_with_the_chosen_highlighted(setup):
    _, _, trace, _, _ = setup
    routing = trace.routing(3)
    position = 7
    fig = views.router_scores_figure(routing, position, K)
    bars, chosen = fig.data
    np.testing.assert_array_equal(bars.y, routing.scores[position].numpy())
    assert list(chosen.x) == routing.experts[position].tolist()
    colours = np.array(bars.marker.color)
    assert set(np.flatnonzero(colours == views.style.SELECTED)) == set(routing.experts[position].tolist())
    np.testing.assert_allclose(np.asarray(chosen.customdata)[:, 1], routing.weights[position].numpy())
    kth = float(routing.scores[position].topk(K).values[-1])
    assert [s for s in fig.layout.shapes if s.type == "line"][0].y0 == pytest.approx(kth)
    # with the bias and 2 of 4 groups, somewhere the choice differs from a plain top-k by score
    differs = [p for p in range(len(trace))
               if set(routing.experts[p].tolist()) != set(routing.scores[p].topk(K).indices.tolist())]
    assert differs
    assert "not among" in views.router_scores_figure(routing, differs[0], K).layout.title.text


def test_marks_are_explained_in_subtitles_and_legends_sit_clear_of_them(setup):
    """Nothing is written over the bars or the subtitle: the router chart explains its marks in the subtitle,
    the load chart's legend sits under its axis, the shared/routed legend on a line of its own."""
    _, tok, trace, n_prompt, _ = setup
    routing = trace.routing(3)
    scores = views.router_scores_figure(routing, 7, K)
    assert not scores.layout.annotations and not any(t.showlegend for t in scores.data)
    assert f"red ◆ the {K} chosen · dashed: where a plain top-{K}" in scores.layout.title.text
    assert scores.layout.title.text.count("<sup>") == 2 and scores.layout.margin.t >= 100
    load = views.expert_load_figure(trace, layer=2, n_prompt=n_prompt)
    assert load.layout.legend.y < 0 and load.layout.legend.yanchor == "top"
    shared = views.shared_vs_routed_figure(routing, tok, trace.ids.tolist(), n_prompt=n_prompt)
    assert shared.layout.legend.y >= 1 and shared.layout.margin.t >= 100
    assert all(len(t.name) <= 40 for t in shared.data)  # one line of legend at ~600 px


def test_token_text_is_escaped_everywhere(setup):
    _, tok, trace, n_prompt, _ = setup
    ids = trace.ids.tolist()
    assert tok.encode("<script>") == [ids[ids.index(tok.encode("<script>")[0])]]
    routing = trace.routing(1)
    position = ids.index(tok.encode("<b>bold</b>")[0])
    figs = [views.expert_choice_figure(trace, tok, selected=position), views.token_experts_figure(trace, position, tok),
            views.shared_vs_routed_figure(routing, tok, ids)]
    strings = [s for f in figs for s in all_strings(f.to_plotly_json())]
    assert not any("<script" in s or "<b>bold" in s for s in strings)
    assert any("&lt;script&gt;" in s for s in strings) and any("&lt;b&gt;bold&lt;/b&gt;" in s for s in strings)


@dataclass
class FakeTrace:
    """Kimi-K2-shaped routing (60 MoE layers, 384 experts, 8 per token) without a model that size."""

    ids: torch.Tensor
    experts: torch.Tensor
    expert_weights: torch.Tensor
    moe_layers: list[int]
    decoder: SimpleNamespace

    def __len__(self) -> int:
        return self.ids.shape[0]


def test_every_view_draws_a_long_context_and_a_kimi_sized_routing(setup, lm):
    """All views on 200 tokens of the test model and on Kimi-K2-shaped routing (their speed: bench/, not here)."""
    _, tok, _, _, _ = setup
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    trace = lm.trace(ids)
    routing = trace.routing(2)
    figures = [views.expert_choice_figure(trace, tok, selected=150), views.token_experts_figure(trace, 150, tok),
               views.expert_load_figure(trace, n_prompt=100), views.expert_load_figure(trace, 2, n_prompt=100),
               views.shared_vs_routed_figure(routing, tok, ids, 150, 100), views.router_scores_figure(routing, 150, K)]
    gen = torch.Generator().manual_seed(1)
    t, m, e, k = 300, 60, 384, 8
    big = FakeTrace(torch.randint(0, 256, (t,), generator=gen),
                    torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(m * t)]).view(m, t, k),
                    torch.rand(m, t, k, generator=gen), list(range(1, m + 1)),
                    SimpleNamespace(config=SimpleNamespace(moe=MoEConfig(e, 1, k, 2048, routed_scaling_factor=2.827))))
    figures += [views.expert_choice_figure(big, tok, selected=250), views.token_experts_figure(big, 250, tok),
                views.expert_load_figure(big, n_prompt=100)]
    assert all(f.data and f.to_json() for f in figures)
    assert len(views.expert_choice_figure(big, tok, max_tokens=300).data[0].x) == 6000 // m  # the cell budget


def test_tab_renders_the_views_for_the_selected_layer(setup):
    import gradio as gr

    from explorer.session import Session
    from explorer.ui.experts_tab import ExpertsTab

    lm, _, trace, n_prompt, steps = setup
    with gr.Blocks():
        tab = ExpertsTab(lm)
    assert [o.elem_id for o in tab.outputs] == ["experts-choice", "experts-token", "experts-scores", "experts-load",
                                                "experts-shared"]
    assert tab.layer.elem_id == "experts-layer" and tab.moe_layers == [1, 2, 3]
    s = Session()
    assert all(len(fig.data) == 0 for fig in tab.render(s))  # placeholders before any prompt
    s.start(lm.tokenizer.encode(PROMPT), {})
    for step in steps:
        s.add(step)
    s.generating = False
    s.selected = n_prompt + 1
    tab.set_controls(s, 3, False)
    choice, token, scores, load, shared = tab.render(s)
    np.testing.assert_array_equal(np.asarray(choice.data[0].z), trace.experts[:, :, 0].numpy().astype(np.float32))
    assert "token 4" not in token.layout.title.text and f"token {n_prompt + 1} " in token.layout.title.text
    assert "layer 3" in load.layout.title.text and "layer 3" in shared.layout.title.text
    np.testing.assert_array_equal(scores.data[0].y, trace.routing(3).scores[n_prompt + 1].numpy())
    tab.set_controls(s, 2, True)
    _, _, scores, load, _ = tab.render(s)
    assert np.asarray(load.data[0].z).shape == (3, N_EXPERTS) and "layer 2" in scores.layout.title.text
