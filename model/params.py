"""Parameter accounting from a ModelConfig alone, no weights: every weight's name and shape, layer by layer, and
the counts per component, in total and active per token (a Mixture-of-Experts layer runs only k of its experts)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from .config import ModelConfig

COMPONENTS = ("embeddings", "attention", "dense_mlp", "routed_experts", "shared_experts", "router", "norms", "head")


class Weight(NamedTuple):
    """One weight tensor. Names follow the core's modules (`blocks.{i}.` is left off inside a layer); MLA weights
    take transformers' DeepseekV3 names; routed experts are one stacked tensor per projection, [E, out, in]."""

    name: str
    shape: tuple[int, ...]
    component: str  # one of COMPONENTS
    active: int  # entries used for one token: all of them, or k/E of a stacked routed-expert tensor
    buffer: bool = False  # stored in checkpoints but not trained by gradient (the router's correction bias)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Count:
    total: int
    active: int


@dataclass(frozen=True)
class ParameterCounts:
    """Counts by component, summed over the whole model.

    attention holds everything inside the attention module, its inner norms included (Qwen3's q/k norms, MLA's
    q_a/kv_a norms); norms are the two pre-norms of every block and the final norm. The token embedding (and
    GPT-2's learned positions) is a table lookup: it is in `total` and in `active`, and left out of
    `active_without_embeddings` -- unless the head is tied to it, since the head then multiplies by all of E for
    every token. A tied head has no parameters of its own (head = 0). The router's e_score_correction_bias is a
    buffer (transformers' num_parameters() leaves it out): it is counted apart, in `correction_bias`."""

    embeddings: Count
    attention: Count
    dense_mlp: Count
    routed_experts: Count
    shared_experts: Count
    router: Count
    norms: Count
    head: Count
    lookup_only: int  # embedding entries only looked up, never multiplied
    correction_bias: int
    # per layer: layer, kind ("dense" | "moe"), attention, mlp, mlp_active, norms, total, active
    layers: tuple[dict, ...]

    def by_component(self) -> dict[str, Count]:
        return {name: getattr(self, name) for name in COMPONENTS}

    @property
    def total(self) -> int:
        return sum(c.total for c in self.by_component().values())

    @property
    def active(self) -> int:
        return sum(c.active for c in self.by_component().values())

    @property
    def active_without_embeddings(self) -> int:
        return self.active - self.lookup_only


def _linear(name: str, n_out: int, n_in: int, component: str, bias: bool = False) -> list[Weight]:
    weights = [Weight(f"{name}.weight", (n_out, n_in), component, n_out * n_in)]
    if bias:
        weights.append(Weight(f"{name}.bias", (n_out,), component, n_out))
    return weights


def _norm(name: str, dim: int, cfg: ModelConfig, component: str = "norms") -> list[Weight]:
    weights = [Weight(f"{name}.weight", (dim,), component, dim)]
    if cfg.norm == "layer":
        weights.append(Weight(f"{name}.bias", (dim,), component, dim))
    return weights


def _attention(cfg: ModelConfig) -> list[Weight]:
    d, h = cfg.d_model, cfg.n_heads
    mla = cfg.mla
    if mla is None:
        qk = ([Weight(f"attn.{n}_norm.weight", (cfg.d_head,), "attention", cfg.d_head) for n in "qk"]
              if cfg.qk_norm else [])
        return (_linear("attn.wq", h * cfg.d_head, d, "attention", cfg.qkv_bias)
                + _linear("attn.wk", cfg.n_kv_heads * cfg.d_head, d, "attention", cfg.qkv_bias)
                + _linear("attn.wv", cfg.n_kv_heads * cfg.d_head, d, "attention", cfg.qkv_bias)
                + qk + _linear("attn.wo", d, h * cfg.d_head, "attention", cfg.out_bias))
    # transformers' DeepseekV3Attention: attention_bias reaches q_a, kv_a and o only; q_proj and the b's have none
    if mla.q_lora_rank is None:
        q = _linear("attn.q_proj", h * mla.qk_head_dim, d, "attention")
    else:
        q = (_linear("attn.q_a_proj", mla.q_lora_rank, d, "attention", cfg.qkv_bias)
             + [Weight("attn.q_a_layernorm.weight", (mla.q_lora_rank,), "attention", mla.q_lora_rank)]
             + _linear("attn.q_b_proj", h * mla.qk_head_dim, mla.q_lora_rank, "attention"))
    return (q + _linear("attn.kv_a_proj_with_mqa", mla.kv_lora_rank + mla.qk_rope_dim, d, "attention", cfg.qkv_bias)
            + [Weight("attn.kv_a_layernorm.weight", (mla.kv_lora_rank,), "attention", mla.kv_lora_rank)]
            + _linear("attn.kv_b_proj", h * (mla.qk_nope_dim + mla.v_head_dim), mla.kv_lora_rank, "attention")
            + _linear("attn.o_proj", d, h * mla.v_head_dim, "attention", cfg.out_bias))


def _mlp(prefix: str, cfg: ModelConfig, d_ff: int, component: str) -> list[Weight]:
    d, bias = cfg.d_model, cfg.mlp_bias
    gate = _linear(f"{prefix}.w_gate", d_ff, d, component, bias) if cfg.mlp == "swiglu" else []
    return (gate + _linear(f"{prefix}.w_up", d_ff, d, component, bias)
            + _linear(f"{prefix}.w_down", d, d_ff, component, bias))


def _moe(cfg: ModelConfig) -> list[Weight]:
    moe, d = cfg.moe, cfg.d_model
    e, k, f = moe.n_routed_experts, moe.n_experts_per_tok, moe.d_ff_expert
    routed = [Weight(f"mlp.experts.{n}", shape, "routed_experts", k * math.prod(shape[1:]))
              for n, shape in (("w_gate", (e, f, d)), ("w_up", (e, f, d)), ("w_down", (e, d, f)))]
    shared = _mlp("mlp.shared", cfg, f * moe.n_shared_experts, "shared_experts") if moe.n_shared_experts else []
    return (_linear("mlp.router", e, d, "router")
            + [Weight("mlp.router.e_score_correction_bias", (e,), "router", e, buffer=True)] + shared + routed)


def shapes(cfg: ModelConfig, layer: int) -> list[Weight]:
    """The weights of block `layer`, in the order the computation meets them."""
    if not 0 <= layer < cfg.n_layers:
        raise IndexError(f"layer {layer} of a {cfg.n_layers}-layer model")
    mlp = _moe(cfg) if cfg.is_moe_layer(layer) else _mlp("mlp", cfg, cfg.d_ff, "dense_mlp")
    return _norm("attn_norm", cfg.d_model, cfg) + _attention(cfg) + _norm("mlp_norm", cfg.d_model, cfg) + mlp


def outer_shapes(cfg: ModelConfig) -> list[Weight]:
    """The weights outside the blocks: token (and learned position) embeddings, final norm, untied head."""
    d = cfg.d_model
    weights = [Weight("embed.weight", (cfg.vocab_size, d), "embeddings", cfg.vocab_size * d)]
    if cfg.positions == "learned":
        weights.append(Weight("pos_embed.weight", (cfg.max_positions, d), "embeddings", cfg.max_positions * d))
    weights += _norm("norm", d, cfg)
    if not cfg.tie_embeddings:
        weights += _linear("lm_head", cfg.vocab_size, d, "head")
    return weights


def _sum(weights: list[Weight], component: str | None = None) -> Count:
    chosen = [w for w in weights if not w.buffer and (component is None or w.component == component)]
    return Count(sum(w.numel for w in chosen), sum(w.active for w in chosen))


def parameter_counts(cfg: ModelConfig) -> ParameterCounts:
    """Exact counts for cfg; equal to sum(p.numel()) of the model the config describes."""
    layers, every = [], outer_shapes(cfg)
    distinct: dict[bool, list[Weight]] = {}  # dense and MoE layers each have one structure
    for i in range(cfg.n_layers):
        moe = cfg.is_moe_layer(i)
        weights = distinct.setdefault(moe, shapes(cfg, i))
        every += weights
        attn, norms = _sum(weights, "attention"), _sum(weights, "norms")
        mlp = _sum([w for w in weights if w.component not in ("attention", "norms")])
        layers.append(dict(layer=i, kind="moe" if moe else "dense", attention=attn.total, mlp=mlp.total,
                           mlp_active=mlp.active, norms=norms.total, total=attn.total + mlp.total + norms.total,
                           active=attn.active + mlp.active + norms.active))
    embeddings = _sum(every, "embeddings")
    # a tied head multiplies by all of E, so only the position table (if any) is a pure lookup then
    lookup = embeddings.total - (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
    return ParameterCounts(
        **{c: _sum(every, c) for c in COMPONENTS}, lookup_only=lookup,
        correction_bias=sum(w.numel for w in every if w.buffer), layers=tuple(layers),
    )
