"""DeepSeek-V3 / Kimi-K2 (Multi-head Latent Attention + Mixture of Experts) against transformers'
DeepseekV3ForCausalLM on tiny random configs: logits, attention, hidden states, chosen experts; cached decoding."""
from __future__ import annotations

import pytest
import torch
import transformers

from tests.conftest import save_and_load

VOCAB = 300
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
            v_head_dim=12, max_position_embeddings=256, tie_word_embeddings=False)
CONFIGS = {
    # Kimi-K2's routing: sigmoid scores, bias for choosing only, one group, one shared expert, first layer dense, YaRN
    "kimi-k2-routing": dict(q_lora_rank=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
                            first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True,
                            routed_scaling_factor=2.827,
                            rope_parameters=dict(rope_type="yarn", rope_theta=50000.0, factor=4.0,
                                                 original_max_position_embeddings=32, beta_fast=1.0, beta_slow=1.0,
                                                 mscale=1.0, mscale_all_dim=1.0)),
    # no query bottleneck, group-limited routing over 4 groups, two shared experts, unnormalised weights
    "no-q-lora-grouped": dict(q_lora_rank=None, n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=3,
                              first_k_dense_replace=0, n_group=4, topk_group=2, norm_topk_prob=False,
                              routed_scaling_factor=1.5),
}


def build(name: str, folder):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(**BASE, **CONFIGS[name])
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if "norm" in pname:
                p.add_(torch.randn_like(p) * 0.2)
            elif "gate.weight" in pname:
                p.normal_(0, 0.5)  # spread router scores so choices are well separated
        for bname, b in hf.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.1)
    return hf, save_and_load(hf, folder)


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    return build(request.param, tmp_path_factory.mktemp(request.param))


IDS = torch.randint(0, VOCAB, (14,), generator=torch.Generator().manual_seed(2)).tolist()


def hf_router_choices(hf, ids) -> dict[int, torch.Tensor]:
    choices, hooks = {}, []
    for i, layer in enumerate(hf.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            hooks.append(gate.register_forward_hook(lambda m, a, out, i=i: choices.__setitem__(i, out[2])))
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    for h in hooks:
        h.remove()
    return out, choices


def test_logits_attention_hidden_states_and_experts_match(pair):
    hf, lm = pair
    ref, choices = hf_router_choices(hf, IDS)
    trace = lm.trace(IDS)
    torch.testing.assert_close(trace.logits, ref.logits[0], atol=1e-4, rtol=1e-4)
    n = lm.config.n_layers
    for layer in range(n):
        torch.testing.assert_close(trace.attention(layer), ref.attentions[layer][0], atol=1e-4, rtol=1e-4)
    for i in range(n):
        torch.testing.assert_close(trace.hidden_states[i], ref.hidden_states[i][0], atol=1e-4, rtol=1e-4)
    assert trace.moe_layers == sorted(choices)
    for layer, chosen in choices.items():
        routing = trace.routing(layer)
        assert torch.equal(routing.experts.sort(-1).values, chosen.sort(-1).values), f"layer {layer}"
        assert routing.scores.shape == (len(IDS), 16)


def test_routing_weights_follow_the_config(pair):
    _, lm = pair
    moe = lm.config.moe
    routing = lm.trace(IDS).routing(lm.trace(IDS).moe_layers[-1])
    assert routing.experts.shape == (len(IDS), moe.n_experts_per_tok)
    if moe.norm_topk_prob:
        torch.testing.assert_close(routing.weights.sum(-1), torch.full((len(IDS),), moe.routed_scaling_factor))
    else:  # raw sigmoid scores of the chosen experts, scaled
        chosen = routing.scores.gather(1, routing.experts) * moe.routed_scaling_factor
        torch.testing.assert_close(routing.weights, chosen)
    assert torch.all(routing.weights[:, :-1] >= routing.weights[:, 1:])  # most weight first
    assert torch.all(routing.routed_norm > 0)
    assert torch.all(routing.shared_norm > 0)


def test_latent_is_what_the_cache_keeps(pair):
    _, lm = pair
    latent = lm.trace(IDS).latent(0)
    assert latent.shape == (len(IDS), lm.config.mla.kv_lora_rank)


def test_cached_decoding_equals_full_recomputation(pair):
    _, lm = pair
    steps = list(lm.generate(IDS[:5], max_new_tokens=8, greedy=True, record=True, stop_at_eos=False))
    full = IDS[:5] + [s.token_id for s in steps]
    full_trace = lm.trace(full)
    full_logits = full_trace.logits
    for s in steps:
        torch.testing.assert_close(s.trace.logits_at([-1])[0], full_logits[s.position - 1], atol=1e-4, rtol=1e-4)
    # expert choices recorded token by token during decoding equal those of one pass over the whole text
    last = steps[-1].trace
    assert torch.equal(last.experts, full_trace.experts[:, : len(last)])


def test_greedy_tokens_match_transformers_generate(pair):
    hf, lm = pair
    ours = [s.token_id for s in lm.generate(IDS[:4], max_new_tokens=10, greedy=True, stop_at_eos=False)]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([IDS[:4]]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert ours == ref[0, 4:].tolist()
