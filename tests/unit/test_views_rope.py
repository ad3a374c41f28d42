"""The RoPE view's numbers against the papers' formulas, written here from their definitions (linear: positions / s;
NTK-aware: base · s^(d/(d-2)); YaRN: a ramp by wavelength between interpolation and extrapolation, scores times
(0.1 ln s + 1)^2) and against the decoder's own rotation: apply_rope on a vector turns it by the angles the view shows,
and the q·k curve of real heads is what the decoder's attention computes for the same query and key Δ apart."""
from __future__ import annotations

import cmath
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from explorer.views.rope import (SCALINGS, distance_figure, explain_html, frequencies_figure, head_query_key,
                                 qk_by_distance, rope_numbers, sample_distances, score_gain, trained_length)
from model import ModelConfig
from model.config import RopeConfig
from model.decoder import Decoder, Norm
from model.layers import apply_rope, rope_inv_freq, yarn_softmax_scale
from model.loading.random_init import random_decoder
from model.trace import TraceRecorder

ASSETS = Path(__file__).resolve().parents[2] / "assets"
KIMI = ModelConfig.from_hf_config(json.loads((ASSETS / "kimi-k2-instruct.config.json").read_text()), name="Kimi-K2")
MINI_DEEPSEEK = ModelConfig.from_hf_config(json.loads((ASSETS / "deepseek-v3-mini.config.json").read_text()))
# a Llama-like model with SmolLM2's rope: base 100,000, 64 rotated dims, trained on 8,192 positions
SMOL_ROPE = ModelConfig(family="llama", vocab_size=64, d_model=64, n_layers=1, n_heads=1, n_kv_heads=1, d_head=64,
                        d_ff=96, max_positions=8192, rope=RopeConfig(theta=100000.0), name="SmolLM2-like")


def base_frequencies(theta: float, d: int) -> list[float]:
    """RoFormer's θ_i = base^(-2i/d), in float64."""
    return [theta ** (-2 * i / d) for i in range(d // 2)]


def turns_in(trained: int, freq: float) -> float:
    """How many full turns a pair of frequency freq (radians per token) makes over the trained context."""
    return trained * freq / (2 * math.pi)


def yarn_paper(theta: float, d: int, trained: int, s: float, beta_fast: float, beta_slow: float) -> list[float]:
    """YaRN's frequencies from its definition: a pair that turns more than beta_fast times over the trained context
    keeps its frequency, one that turns fewer than beta_slow times is divided by s, and the dimensions between are
    blended by a ramp that is linear in the pair's index (log wavelength), from the last index that turns beta_fast
    times (floored) to the first that turns beta_slow times (ceiled), as in the YaRN and DeepSeek code."""
    def index_turning(turns: float) -> float:  # solve trained · base^(-2i/d) / 2π = turns for i
        return (d / 2) * math.log(trained / (2 * math.pi * turns)) / math.log(theta)

    low, high = max(math.floor(index_turning(beta_fast)), 0), min(math.ceil(index_turning(beta_slow)), d - 1)
    out = []
    for i, f in enumerate(base_frequencies(theta, d)):
        interpolate = min(max((i - low) / max(high - low, 1e-3), 0.0), 1.0)
        out.append(f * (1 - interpolate) + f / s * interpolate)
    return out


def close(a, b, rel: float = 2e-6) -> bool:
    return all(math.isclose(x, y, rel_tol=rel, abs_tol=1e-30) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("cfg", [SMOL_ROPE, KIMI], ids=["smollm2-rope", "kimi-k2"])
@pytest.mark.parametrize("s", [2, 8, 32])
def test_frequencies_follow_each_papers_formula(cfg, s):
    n = rope_numbers(cfg, s)
    d, theta, trained = n.d_rot, cfg.rope.theta, trained_length(cfg)
    base = base_frequencies(theta, d)
    assert close(n.inv_freq["none"].tolist(), base)
    assert close(n.inv_freq["linear"].tolist(), [f / s for f in base])
    ntk = base_frequencies(theta * s ** (d / (d - 2)), d)
    assert close(n.inv_freq["ntk"].tolist(), ntk)
    assert math.isclose(ntk[0], base[0]) and math.isclose(ntk[-1], base[-1] / s)  # fastest kept, slowest ÷ s
    yarn = n.inv_freq["yarn"].tolist()
    assert close(yarn, yarn_paper(theta, d, trained, s, 32.0, 1.0))
    for f, y in zip(base, yarn):  # the ramp's two ends, by how often a pair turns in the trained context
        if turns_in(trained, f) > 32:
            assert math.isclose(y, f, rel_tol=2e-6)
        if turns_in(trained, f) < 1:
            assert math.isclose(y, f / s, rel_tol=2e-6)
    assert score_gain(n.ropes["yarn"]) == pytest.approx((0.1 * math.log(s) + 1) ** 2)
    assert score_gain(n.ropes["linear"]) == score_gain(n.ropes["ntk"]) == score_gain(n.ropes["none"]) == 1


def test_kimi_k2s_own_yarn_keeps_the_pairs_that_turn_in_its_4096_positions():
    """Kimi-K2: YaRN ×32 from 4,096 positions with β_fast = β_slow = 1: a pair that turns at least once over the
    trained context keeps its frequency, the others turn 32 times slower; cos and sin are unscaled (mscale equals
    mscale_all_dim) and MLA's softmax scale carries the whole (0.1 ln 32 + 1)^2."""
    n = rope_numbers(KIMI, 32)
    assert (n.trained, n.context, n.d_rot) == (4096, 131072, 64)
    own = n.inv_freq["own"].tolist()
    base = base_frequencies(50000.0, 64)
    kept = [i for i, f in enumerate(base) if turns_in(4096, f) > 1]
    assert kept == list(range(20))
    assert close(own, [f if i in kept else f / 32 for i, f in enumerate(base)])
    assert score_gain(KIMI.rope, latent=True) == pytest.approx((0.1 * math.log(32) + 1) ** 2)
    assert score_gain(KIMI.rope, latent=False) == pytest.approx(1.0)
    text = explain_html(n, latent=True)
    assert "YaRN ×32 from 4,096" in text and "β_fast 1, β_slow 1; scores × 1.81" in text
    assert "Stretched ×32 to 131,072 (dashed)" in text


def test_the_core_knows_ntk_aware_scaling():
    """model/layers.py's NTK-aware kind: base θ·s^(d/(d-2)); pair 0 keeps its frequency, the last turns s× slower."""
    inv = rope_inv_freq(RopeConfig(theta=10000.0, kind="ntk", factor=4.0), 16).double()
    expected = torch.tensor(base_frequencies(10000.0 * 4.0 ** (16 / 14), 16), dtype=torch.float64)
    torch.testing.assert_close(inv, expected, rtol=1e-6, atol=0)
    assert float(inv[-1]) == pytest.approx(10000.0 ** (-14 / 16) / 4, rel=1e-6)


@pytest.mark.parametrize("cfg", [SMOL_ROPE, replace(MINI_DEEPSEEK, n_layers=1)], ids=["llama", "deepseek-mla-yarn"])
@pytest.mark.parametrize("position", [0, 1, 17, 1234, 8191])
def test_angles_shown_are_the_decoders_rotation(cfg, position):
    """A vector whose every pair is (1, 0), turned by the decoder's own cos and sin at `position`, points at the angle
    the view shows for each pair (modulo a turn), and that angle is position × the pair's frequency."""
    decoder = Decoder(cfg)
    n = rope_numbers(cfg, 4, position=position)
    half = n.d_rot // 2
    cos, sin = decoder.rope(torch.tensor([position]), torch.float32)
    x = torch.cat([torch.ones(half), torch.zeros(half)])
    turned = apply_rope(x[None], cos, sin)[0]
    measured = torch.atan2(turned[half:], turned[:half]).double()
    shown = n.angles.double()
    wrapped = torch.remainder(measured - shown + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max() < 2e-3
    # and the shown angle is position × frequency (the model's own), unwrapped
    expected = torch.tensor([position * f for f in n.inv_freq["own"].double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(shown, expected, rtol=1e-6, atol=1e-6)


def complex_score(q: list[float], k: list[float], freqs: list[float], distance: float) -> float:
    """q·k of a query `distance` tokens after its key, from the definition: each pair (x_i, x_{i+d/2}) is the complex
    number x_i + i x_{i+d/2}, a rotation by a multiplies it by e^{ia}, and a 2-D dot product is Re(z_q conj(z_k))."""
    half = len(q) // 2
    total = 0.0
    for i, f in enumerate(freqs):
        zq, zk = complex(q[i], q[i + half]), complex(k[i], k[i + half])
        total += (zq * zk.conjugate() * cmath.exp(1j * distance * f)).real
    return total


@pytest.mark.parametrize("cfg", [SMOL_ROPE, KIMI], ids=["smollm2-rope", "kimi-k2"])
def test_qk_curves_follow_the_definitions(cfg):
    """The standard curve (q = k = ones) is the mean of cos(Δ θ_i); linear scaling is the unscaled curve at Δ / s;
    NTK-aware and YaRN at their own frequencies, YaRN's times (0.1 ln s + 1)^2; a random q and k by complex rotation."""
    s = 8
    n = rope_numbers(cfg, s)
    d, theta = n.d_rot, cfg.rope.theta
    latent = cfg.mla is not None
    base = base_frequencies(theta, d)
    picks = [0, 5, len(n.distances) // 2, len(n.distances) - 1]
    for j in picks:
        delta = float(n.distances[j])
        standard = sum(math.cos(delta * f) for f in base) / len(base)
        assert float(n.scores["none"][j]) == pytest.approx(standard, abs=3e-3)
        linear = sum(math.cos(delta / s * f) for f in base) / len(base)  # positions / s
        assert float(n.scores["linear"][j]) == pytest.approx(linear, abs=3e-3)
        ntk = sum(math.cos(delta * f) for f in base_frequencies(theta * s ** (d / (d - 2)), d)) / len(base)
        assert float(n.scores["ntk"][j]) == pytest.approx(ntk, abs=3e-3)
        yarn = sum(math.cos(delta * f) for f in yarn_paper(theta, d, n.trained, s, 32, 1)) / len(base)
        assert float(n.scores["yarn"][j]) == pytest.approx(yarn * (0.1 * math.log(s) + 1) ** 2, abs=3e-3)
    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, d, generator=generator), torch.randn(1, d, generator=generator)
    n = rope_numbers(cfg, s, position=5, q=q, k=k, token="x")
    own = n.inv_freq["own"].double().tolist()
    gain = score_gain(cfg.rope, latent)
    for j in picks:
        delta = float(n.distances[j])
        expected = complex_score(q[0].tolist(), k[0].tolist(), own, delta) / float(q.norm() * k.norm()) * gain
        assert float(n.scores["own"][j]) == pytest.approx(expected, abs=3e-3 * gain)


def test_distances_span_the_chosen_context_on_a_log_scale():
    d = sample_distances(131072)
    assert int(d[0]) == 1 and int(d[-1]) == 131072 and bool((d[1:] > d[:-1]).all())
    assert 250 < len(d) <= 361
    assert int(rope_numbers(SMOL_ROPE, 4).distances[-1]) == 32768


def wide_decoder(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """Random weights drawn wide (std 2/sqrt(fan_in), norms scaling by about 2) so that scores are large and a wrong
    rotation shows."""
    decoder = random_decoder(cfg, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 2.0 / module.in_features ** 0.5, generator=generator)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)
            elif isinstance(module, Norm):  # random scales around 2: Qwen3's per-head norms then leave q and k large
                module.weight.normal_(2.0, 0.5, generator=generator)
    return decoder.eval()


GQA_YARN = ModelConfig(family="llama", vocab_size=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_head=16,
                       d_ff=64, max_positions=256,
                       rope=RopeConfig(theta=10000.0, kind="yarn", factor=4.0, original_max_positions=16))
QWEN3_NORMS = replace(GQA_YARN, family="qwen3", qk_norm=True, rope=RopeConfig(theta=1000.0))
DEEPSEEK_MLA = replace(MINI_DEEPSEEK, n_layers=1, vocab_size=64, moe=None)


@pytest.mark.parametrize("cfg", [GQA_YARN, QWEN3_NORMS, DEEPSEEK_MLA], ids=["llama-gqa-yarn", "qwen3-qk-norm",
                                                                          "deepseek-mla-kimi-yarn"])
def test_real_heads_curve_is_the_decoders_attention(cfg):
    """One token repeated: in layer 0 every position has the same query and key before rotation, so the decoder's own
    attention row of the last token differs between keys only by RoPE. log p[m, m-Δ] - log p[m, m] is the softmax
    scale times |q||k| times (curve(Δ) - curve(0)) for each head: checks the view's q and k (GQA's shared keys, Qwen3's
    norms, MLA's rotary part) and its curve against the decoder."""
    decoder = wide_decoder(cfg)
    t = 40
    ids = torch.full((1, t), 7)
    recorder = TraceRecorder(decoder, capacity=t)
    with torch.inference_mode():
        decoder(ids, recorder=recorder)
    recorder.commit(ids[0])
    trace = recorder.trace()
    probs = trace.attention(0)  # [H, T, T]
    q, k = head_query_key(decoder, trace, 0, t - 1)
    assert not torch.allclose(q[0], q[1])  # heads differ, so a wrong head mapping shows
    distances = torch.arange(t)
    latent = cfg.mla is not None
    # the decoder's softmax scale, less MLA's YaRN factor, which the view's curve already carries
    unit = decoder.blocks[0].attn.scale / (yarn_softmax_scale(cfg.rope) if latent else 1.0)
    for head in range(cfg.n_heads):
        curve = qk_by_distance(cfg.rope, q[head:head + 1], k[head:head + 1], distances, latent).double()
        expected = unit * float(q[head].norm() * k[head].norm()) * (curve - curve[0])  # indexed by Δ
        row = probs[head, t - 1].double().log()
        measured = (row - row[t - 1]).flip(0)  # index Δ: key at t-1-Δ
        assert float(expected.abs().max()) > 1.0  # the rotation moves scores by more than any tolerance
        torch.testing.assert_close(measured, expected, atol=2e-3 * float(expected.abs().max()), rtol=0)


def test_figures_and_words():
    n = rope_numbers(KIMI, 32, position=300)
    freqs, curves = frequencies_figure(n), distance_figure(n)
    assert [t.name for t in freqs.data[:5]] == ["own: YaRN ×32 from 4,096", "No scaling ×32", "Linear ×32",
                                                "NTK-aware ×32", "YaRN ×32"]
    for trace, key in zip(freqs.data[:5], ("own", *SCALINGS)):
        assert list(trace.y) == pytest.approx(n.inv_freq[key].tolist())
    assert list(freqs.data[5].y) == pytest.approx(n.angles.tolist())
    assert "Angle at position 300" in [a.text for a in freqs.layout.annotations]
    turn = next(a for a in freqs.layout.annotations if a.text == "one turn")  # on the log axis: by its log
    assert (turn.yref, turn.y) == ("y2", pytest.approx(math.log10(2 * math.pi)))
    assert len(curves.data) == 8  # four panels, each the model's own beside one scaling
    for i, key in enumerate(SCALINGS):
        assert list(curves.data[2 * i + 1].y) == pytest.approx(n.scores[key].tolist())
        assert list(curves.data[2 * i].y) == pytest.approx(n.scores["own"].tolist())
        assert list(curves.data[2 * i].x) == n.distances.tolist()
    # the trained length (dotted) and the chosen context (dashed) in each panel, on log axes
    assert sorted({(sh.x0, sh.line.dash) for sh in curves.layout.shapes}) == [(4096, "dot"), (131072, "dash")]
    words = explain_html(n, latent=True)
    assert "q = k = (1, …, 1)" in words and "position 300" not in words
    evil = rope_numbers(SMOL_ROPE, 4, 3, torch.ones(1, 64), torch.ones(1, 64), 2, 1, "<img src=x onerror=alert(1)>")
    words = explain_html(evil)
    assert "<img" not in words and "&lt;img" in words and "layer 2, head 1" in words and "(position 3)" in words


def test_a_model_without_rotary_embeddings_gets_a_sentence():
    gpt2 = replace(SMOL_ROPE, family="gpt2", positions="learned", rope=None, name="gpt2")
    with pytest.raises(ValueError, match="no rotary embedding"):
        rope_numbers(gpt2, 4)
