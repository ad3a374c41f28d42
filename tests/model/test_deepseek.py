"""DeepSeek-V3 / Kimi-K2 (Multi-head Latent Attention + Mixture of Experts) against transformers'
DeepseekV3ForCausalLM on tiny random configs initialised wide (see families.py), in float32: logits, attention,
hidden states, every internal of a block, the KV latent, the router's scores, choices and weights, and the
shared / routed split of the MoE output, all as values to 1e-5 of their scale; cached decoding."""
from __future__ import annotations

import pytest
import torch

from model import load_model
from tests.model.families import (ATTN_TOL, DEEPSEEK, IDS, PARTS, TOL, build_hf, capture, check_wide, close,
                                  save)


@pytest.fixture(scope="module", params=list(DEEPSEEK))
def pair(request, tmp_path_factory):
    hf = build_hf(request.param)
    return hf, load_model(save(hf, tmp_path_factory.mktemp(request.param)), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ref(pair):
    return capture(pair[0], IDS)


def test_random_model_can_show_errors(pair, ref):
    check_wide(pair[0])
    for layer, parts in enumerate(ref.layers):  # the router's choices are not near-ties of near-equal scores
        if "gate" in parts:
            scores = parts["gate"][0].sigmoid()
            assert scores.std(-1).mean() > 0.2, f"layer {layer}: router scores nearly equal"


def test_logits_attention_hidden_states_and_experts_match(pair, ref):
    hf, lm = pair
    trace = lm.trace(IDS)
    close(trace.logits, ref.logits[0], TOL, "logits")
    n = lm.config.n_layers
    for layer in range(n):
        close(trace.attention(layer), ref.attentions[layer][0], ATTN_TOL, f"attention {layer}")
        # a few rows at a time over the latent cache of the positions before them (MLA)
        close(trace.attention(layer, 5, 11), ref.attentions[layer][0][:, 5:11, :11], ATTN_TOL, f"rows of {layer}")
    for i in range(n):
        close(trace.hidden_states[i], ref.hidden_states[i][0], TOL, f"hidden state {i}")
    close(trace.hidden_states[n], ref.final_in, TOL, "last hidden state")
    assert trace.moe_layers == [i for i, parts in enumerate(ref.layers) if "gate" in parts]
    for layer in trace.moe_layers:
        _, weights, chosen = ref.layers[layer]["gate"]
        routing = trace.routing(layer)
        assert torch.equal(routing.experts.sort(-1).values, chosen.sort(-1).values), f"layer {layer}"
        # the same weight for each chosen expert (transformers' order is arbitrary; ours is most weight first)
        order = weights.argsort(-1, descending=True)
        assert torch.equal(routing.experts, chosen.gather(-1, order)), f"layer {layer}"
        close(routing.weights, weights.gather(-1, order), TOL, f"layer {layer} expert weights")


def test_every_internal_of_every_block_matches(pair, ref):
    _, lm = pair
    trace = lm.trace(IDS)
    n = lm.config.n_layers
    for layer in range(n):
        inside = trace.internals(layer, need_probs=True)
        parts = ref.layers[layer]
        for field in PARTS:
            close(getattr(inside, field)[0], parts[field], TOL, f"layer {layer} {field}")
        after = ref.hidden_states[layer + 1][0] if layer + 1 < n else ref.final_in
        close(inside.h_out[0], after, TOL, f"layer {layer} h_out")
        close(inside.attn_probs[0], ref.attentions[layer][0], ATTN_TOL, f"layer {layer} attn_probs")
        close(inside.latent[0], parts["latent"], TOL, f"layer {layer} internals latent")
        if "gate" in parts:
            logits, weights, chosen = parts["gate"]
            close(inside.router_scores, logits.sigmoid(), TOL, f"layer {layer} router scores")
            close(inside.shared_out[0], parts["shared"], TOL, f"layer {layer} shared_out")
            order = weights.argsort(-1, descending=True)  # ours: most weight first
            assert torch.equal(inside.experts, chosen.gather(-1, order)), f"layer {layer} experts"
            close(inside.expert_weights, weights.gather(-1, order), TOL, f"layer {layer} internals expert weights")


def test_latent_is_the_normed_compressed_kv(pair, ref):
    """Trace.latent: kv_a_proj_with_mqa's first kv_lora_rank outputs through kv_a_layernorm (rope_interleave
    reorders only the rotary rows after them)."""
    _, lm = pair
    trace = lm.trace(IDS)
    for layer in range(lm.config.n_layers):
        latent = trace.latent(layer)
        assert latent.shape == (len(IDS), lm.config.mla.kv_lora_rank)
        close(latent, ref.layers[layer]["latent"], TOL, f"layer {layer} latent")


def test_routing_scores_and_output_split_match(pair, ref):
    _, lm = pair
    trace = lm.trace(IDS)
    for layer in trace.moe_layers:
        parts = ref.layers[layer]
        routing = trace.routing(layer)
        logits, _, _ = parts["gate"]
        assert routing.scores.shape == (len(IDS), lm.config.moe.n_routed_experts)
        close(routing.scores, logits.sigmoid(), TOL, f"layer {layer} scores")
        shared, routed = parts["shared"], parts["mlp_out"] - parts["shared"]
        close(routing.shared_norm, shared.norm(dim=-1), TOL, f"layer {layer} shared norm")
        close(routing.routed_norm, routed.norm(dim=-1), TOL, f"layer {layer} routed norm")


def test_routing_weights_follow_the_config(pair):
    _, lm = pair
    moe = lm.config.moe
    trace = lm.trace(IDS)
    routing = trace.routing(trace.moe_layers[-1])
    assert routing.experts.shape == (len(IDS), moe.n_experts_per_tok)
    if moe.norm_topk_prob:
        torch.testing.assert_close(routing.weights.sum(-1), torch.full((len(IDS),), moe.routed_scaling_factor))
    else:  # raw sigmoid scores of the chosen experts, scaled
        chosen = routing.scores.gather(1, routing.experts) * moe.routed_scaling_factor
        torch.testing.assert_close(routing.weights, chosen)
    assert torch.all(routing.weights[:, :-1] >= routing.weights[:, 1:])  # most weight first


def test_cached_decoding_equals_full_recomputation(pair):
    _, lm = pair
    steps = list(lm.generate(IDS[:5], max_new_tokens=8, greedy=True, record=True, stop_at_eos=False))
    full = IDS[:5] + [s.token_id for s in steps]
    full_trace = lm.trace(full)
    full_logits = full_trace.logits
    for s in steps:
        close(s.trace.logits_at([-1])[0], full_logits[s.position - 1], TOL, f"step {s.index}")
    # expert choices recorded token by token during decoding equal those of one pass over the whole text
    last = steps[-1].trace
    assert torch.equal(last.experts, full_trace.experts[:, : len(last)])
    close(last.expert_weights, full_trace.expert_weights[:, : len(last)], TOL, "expert weights")


def test_greedy_tokens_match_transformers_generate(pair):
    hf, lm = pair
    ours = [s.token_id for s in lm.generate(IDS[:4], max_new_tokens=10, greedy=True, stop_at_eos=False)]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([IDS[:4]]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert ours == ref[0, 4:].tolist()
