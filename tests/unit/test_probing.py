"""Ablation and activation patching on the embedded model (and expert ablation on the random DeepSeek-V3), against the
core's own interventions run from the first block; the interventions a client sends, checked strictly."""
from __future__ import annotations

import pytest
import torch

from explorer import probing
from model import AttentionAblation, ExpertAblation, HeadAblation, MLPAblation, Patch, load_model

A = "The Eiffel Tower is in the city of"
B = "The Colosseum is in the city of"


@pytest.fixture(scope="module")
def pair(embedded_lm):
    tok = embedded_lm.tokenizer
    ids_a, ids_b = tok.encode(A), tok.encode(B)
    return embedded_lm, embedded_lm.trace(ids_a), embedded_lm.trace(ids_b)


def core_logprobs(lm, ids, items, position):
    return torch.log_softmax(lm.trace(ids, interventions=items).logits_at([position])[0], dim=-1)


def test_no_ablation_changes_nothing(pair):
    _, trace, _ = pair
    result = probing.ablate(trace, len(trace) - 1, [])
    assert result.kl == 0.0 and torch.equal(result.before, result.after)
    assert result.top_rank_after == 1


@pytest.mark.parametrize("item", [HeadAblation(3, 2), AttentionAblation(0), MLPAblation(5), HeadAblation(29, 8)])
@pytest.mark.parametrize("position", [8, 4])
def test_ablation_from_its_layer_equals_the_core_from_the_first_block(pair, item, position):
    lm, trace, _ = pair
    result = probing.ablate(trace, position, [item])
    expected = core_logprobs(lm, trace.ids.tolist(), [item], position)
    torch.testing.assert_close(result.after, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.before, core_logprobs(lm, trace.ids.tolist(), [], position), atol=1e-5, rtol=0)


@pytest.mark.parametrize("item", [HeadAblation(3, 2), MLPAblation(5)])
def test_an_ablation_in_parts_of_positions_is_the_core_run(pair, item):
    """A long context's ablation runs a few positions a task through a KV cache; the result is the core's."""
    lm, trace, _ = pair
    position = len(trace) - 1
    parts = list(probing.ablate_in_parts(trace, position, [item], chunk=3))
    assert parts[:-1] == [None] * ((position + 1 + 2) // 3 - 1) and parts[-1] is not None
    expected = core_logprobs(lm, trace.ids.tolist(), [item], position)
    torch.testing.assert_close(parts[-1].after, expected, atol=1e-4, rtol=0)


def test_ablating_the_first_mlp_moves_the_distribution(pair):
    _, trace, _ = pair
    result = probing.ablate(trace, len(trace) - 1, [MLPAblation(0)])
    assert result.kl > 0.1  # layer 0's MLP carries much of what the embedding alone cannot
    p = result.after.exp()
    assert result.top_prob_after == pytest.approx(float(p[result.top_id]))
    assert result.top_rank_after == int((p > p[result.top_id]).sum()) + 1


def test_expert_ablation_on_the_random_deepseek():
    lm = load_model("random:deepseek-v3-mini", device="cpu", dtype="float32")
    ids = lm.tokenizer.encode("The capital of France is")
    trace = lm.trace(ids)
    layer = trace.moe_layers[0]
    chosen = int(trace.experts[0, -1, 0])  # an expert the router picked for the last token
    result = probing.ablate(trace, len(ids) - 1, [ExpertAblation(layer, chosen)])
    torch.testing.assert_close(result.after, core_logprobs(lm, ids, [ExpertAblation(layer, chosen)], len(ids) - 1),
                               atol=1e-4, rtol=0)
    assert result.kl > 0


def test_patching_cells_equal_the_cores_patch(pair):
    lm, trace_a, trace_b = pair
    n = len(trace_b)
    for layer, position in [(0, 2), (10, 3), (17, n - 1)]:
        ours = probing.patched_logprobs(trace_a, trace_b, layer, [position])[0]
        core = core_logprobs(lm, trace_b.ids.tolist(), [Patch(layer, [position], trace_a)], n - 1)
        torch.testing.assert_close(ours, core, atol=1e-4, rtol=0)


def test_patching_map_restores_where_it_must_and_nowhere_it_cannot(pair):
    lm, trace_a, trace_b = pair
    sweeps = list(probing.patching_sweep(trace_a, trace_b, task_size=512))
    result = sweeps[-1]
    assert len(sweeps) > lm.config.n_layers  # many small tasks, each a next() of its own
    assert result.done == result.total == lm.config.n_layers * len(trace_a)
    paris = lm.tokenizer.encode(" Paris")[0]
    assert result.target == paris and result.p_a > 0.5 > 0.1 > result.p_b  # A: Paris; B: Rome
    restored = result.restored()
    assert result.normalised
    # the last block's output at the last position is what A's head reads: patched, it restores p exactly
    assert float(restored[-1, -1]) == pytest.approx(1.0, abs=1e-4)
    # the last position carries A's answer in the late layers only
    assert float(restored[25:, -1].min()) > 0.4 and float(restored[:20, -1].abs().max()) < 0.05
    # earlier positions of the last block are never read again; "The" is the same token in both prompts
    torch.testing.assert_close(restored[-1, :-1], torch.zeros(len(trace_a) - 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(restored[:, 0], torch.zeros(lm.config.n_layers), atol=1e-4, rtol=0)
    # the subject's tokens carry the fact in the early and middle layers (Meng et al.'s early site)
    assert float(restored[3:20, 1:4].max(dim=1).values.min()) > 0.5


def test_patching_an_explicit_target_and_unequal_lengths(pair, embedded_lm):
    _, trace_a, trace_b = pair
    rome = embedded_lm.tokenizer.encode(" Rome")[0]
    result = list(probing.patching_sweep(trace_a, trace_b, target=rome))[-1]
    assert result.target == rome and result.p_b > result.p_a
    short = embedded_lm.trace(embedded_lm.tokenizer.encode("The Vatican is in the city of"))
    with pytest.raises(ValueError, match="same length in tokens.*A has 9 tokens and B 7"):
        next(probing.patching_sweep(trace_a, short))


def test_interventions_a_client_sends(embedded_lm):
    cfg = embedded_lm.config
    items = probing.parse_interventions('[{"kind": "head", "layer": 3, "head": 2}, {"kind": "attention", "layer": 1},'
                                        ' {"kind": "mlp", "layer": 29}]', cfg)
    assert items == [HeadAblation(3, 2), AttentionAblation(1), MLPAblation(29)]
    assert probing.parse_interventions([{"kind": "mlp", "layer": 0}], cfg) == [MLPAblation(0)]
    assert probing.parse_interventions("", cfg) == [] and probing.parse_interventions([], cfg) == []
    bad = {
        "[{": "does not parse",
        '{"kind": "head"}': "must be a list",
        "[1]": "must be an object",
        '[{"kind": "neuron", "layer": 1}]': "kind must be one of",
        '[{"kind": "head", "layer": 1}]': "takes exactly the keys layer, head",
        '[{"kind": "mlp", "layer": 1, "head": 0}]': "takes exactly the keys layer",
        '[{"kind": "head", "layer": true, "head": 0}]': "layer must be a whole number",
        '[{"kind": "head", "layer": 1.5, "head": 0}]': "layer must be a whole number",
        '[{"kind": "head", "layer": 30, "head": 0}]': "layer 30 is out of range",
        '[{"kind": "head", "layer": 0, "head": 9}]': "head 9 is out of range",
        '[{"kind": "expert", "layer": 0, "expert": 0}]': "has no experts",
        "[" + ",".join(['{"kind": "mlp", "layer": 0}'] * 65) + "]": "at most 64",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            probing.parse_interventions(text, cfg)


def test_a_target_must_be_one_token(embedded_lm):
    tok = embedded_lm.tokenizer
    assert probing.single_token(tok, " Paris") == tok.encode(" Paris")[0]
    with pytest.raises(ValueError, match="one token"):
        probing.single_token(tok, " Parisian metropolis")
