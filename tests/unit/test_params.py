"""Parameter accounting from a config alone: exact against tiny transformers models of every family (and the core's
own decoder), per-layer sums, tied embeddings, and Kimi-K2's published 1T total / 32B activated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from model.config import ModelConfig
from model.decoder import Decoder
from model.params import COMPONENTS, outer_shapes, parameter_counts, shapes

KIMI = Path(__file__).resolve().parents[2] / "assets" / "kimi-k2-instruct.config.json"
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
DENSE = {
    "llama tied": (transformers.LlamaConfig, dict(SMALL, tie_word_embeddings=True)),
    "llama biases": (transformers.LlamaConfig, dict(SMALL, attention_bias=True, mlp_bias=True)),
    "qwen2": (transformers.Qwen2Config, dict(SMALL, tie_word_embeddings=False)),
    "qwen3": (transformers.Qwen3Config, dict(SMALL, head_dim=16, tie_word_embeddings=True)),
    "gpt2": (transformers.GPT2Config, dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=40)),
}
MLA = dict(vocab_size=96, hidden_size=32, intermediate_size=40, moe_intermediate_size=12, num_hidden_layers=3,
           num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
           first_k_dense_replace=1, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
DEEPSEEK = {
    "q_lora, 1 shared": dict(MLA, q_lora_rank=24, n_shared_experts=1, n_group=1, topk_group=1),
    "no q_lora, 2 shared, 4 groups, bias": dict(MLA, q_lora_rank=None, n_shared_experts=2, n_group=4, topk_group=2,
                                                 attention_bias=True, tie_word_embeddings=True),
}


def hf_pair(config_cls, kwargs) -> tuple[ModelConfig, int]:
    hf_cfg = config_cls(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    return ModelConfig.from_hf_config(hf_cfg.to_dict()), model.num_parameters()


@pytest.mark.parametrize("case", DENSE)
def test_dense_families_equal_transformers_and_the_core_decoder(case):
    cfg, hf_count = hf_pair(*DENSE[case])
    counts = parameter_counts(cfg)
    assert counts.total == hf_count
    decoder = Decoder(cfg)
    real = {name: tuple(p.shape) for name, p in decoder.named_parameters()}
    listed = {w.name: w.shape for w in outer_shapes(cfg)}
    listed |= {f"blocks.{i}.{w.name}": w.shape for i in range(cfg.n_layers) for w in shapes(cfg, i)}
    assert listed == real  # every weight, by name and shape
    assert counts.active == counts.total  # no experts: everything runs for every token
    assert counts.routed_experts.total == counts.router.total == counts.shared_experts.total == 0


@pytest.mark.parametrize("case", DEEPSEEK)
def test_deepseek_v3_equals_transformers(case):
    cfg, hf_count = hf_pair(transformers.DeepseekV3Config, DEEPSEEK[case])
    counts = parameter_counts(cfg)
    assert counts.total == hf_count  # transformers stores experts fused; the count is the same
    # the correction bias is a buffer there: one entry per expert per MoE layer, counted apart
    assert counts.correction_bias == 8 * 2
    e, k, f, d = 8, 2, 12, 32
    assert counts.routed_experts == type(counts.routed_experts)(2 * e * 3 * f * d, 2 * k * 3 * f * d)
    assert counts.active == counts.total - counts.routed_experts.total + counts.routed_experts.active


def test_per_layer_breakdown_sums_to_the_components():
    cfg, _ = hf_pair(transformers.DeepseekV3Config, DEEPSEEK["q_lora, 1 shared"])
    counts = parameter_counts(cfg)
    assert [layer["kind"] for layer in counts.layers] == ["dense", "moe", "moe"]
    outer = sum(w.numel for w in outer_shapes(cfg))
    assert sum(layer["total"] for layer in counts.layers) + outer == counts.total
    assert sum(layer["attention"] for layer in counts.layers) == counts.attention.total
    assert sum(layer["mlp"] for layer in counts.layers) == (counts.dense_mlp.total + counts.routed_experts.total
                                                            + counts.shared_experts.total + counts.router.total)
    assert sum(layer["mlp_active"] for layer in counts.layers) == (
        counts.dense_mlp.active + counts.routed_experts.active + counts.shared_experts.active + counts.router.active)
    names = {w.name for w in shapes(cfg, 1)}
    assert {"attn.q_a_proj.weight", "attn.q_a_layernorm.weight", "attn.kv_a_proj_with_mqa.weight",
            "mlp.router.weight", "mlp.experts.w_gate"} <= names
    with pytest.raises(IndexError):
        shapes(cfg, 3)


def test_embedding_lookup_is_active_only_with_embeddings():
    untied, _ = hf_pair(transformers.LlamaConfig, dict(SMALL, tie_word_embeddings=False))
    counts = parameter_counts(untied)
    assert counts.embeddings.total == counts.head.total == 96 * 32
    assert counts.active - counts.active_without_embeddings == 96 * 32
    tied, _ = hf_pair(*DENSE["llama tied"])
    counts = parameter_counts(tied)
    assert counts.head.total == 0  # the head is E itself, multiplied for every token: not a mere lookup
    assert counts.active_without_embeddings == counts.active
    gpt2, _ = hf_pair(*DENSE["gpt2"])
    assert parameter_counts(gpt2).lookup_only == 40 * 32  # learned positions are looked up; tied wte is not


def test_kimi_k2_one_trillion_total_32_billion_active():
    cfg = ModelConfig.from_hf_config(json.loads(KIMI.read_text()))
    counts = parameter_counts(cfg)
    assert abs(counts.total - 1.026e12) / 1.026e12 < 0.01
    assert 31e9 <= counts.active_without_embeddings < counts.active <= 33.5e9
    assert counts.total == sum(c.total for c in counts.by_component().values()) and len(COMPONENTS) == 8
    per_expert = 3 * 7168 * 2048
    assert counts.routed_experts.total == 60 * 384 * per_expert
    assert counts.routed_experts.active == 60 * 8 * per_expert
    assert counts.layers[0]["kind"] == "dense" and all(layer["kind"] == "moe" for layer in counts.layers[1:])


def test_embedded_model_count_equals_its_parameters(embedded_lm):
    counts = parameter_counts(embedded_lm.config)
    assert counts.total == embedded_lm.n_params == sum(p.numel() for p in embedded_lm.decoder.parameters())
    assert counts.head.total == 0 and embedded_lm.config.tie_embeddings

