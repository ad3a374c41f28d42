"""Declarative weight-name maps (checkpoint name -> decoder parameter) and strict loading into a Decoder.
Every parameter is filled exactly once, shapes are checked, tensors the map does not know are an error."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..config import ModelConfig
from ..decoder import Decoder

Transform = Callable[[torch.Tensor], list[torch.Tensor]]


class WeightLoadError(ValueError):
    """The checkpoint's tensors do not fit the model its config describes."""


@dataclass(frozen=True)
class Rule:
    source: str  # regex over checkpoint names; groups are substituted into targets
    targets: tuple[str, ...]  # decoder parameter names, with \1 style references
    transform: Transform | None = None  # tensor -> one tensor per target; None = as stored


def _same(t: torch.Tensor) -> list[torch.Tensor]:
    return [t]


def transpose(t: torch.Tensor) -> list[torch.Tensor]:
    # GPT-2 stores Conv1D weights as [in, out]; nn.Linear wants [out, in]
    return [t.t().contiguous()]


def split3(dim: int) -> Transform:
    def split(t: torch.Tensor) -> list[torch.Tensor]:
        if t.dim() == 2 and dim == 1:  # fused Conv1D [in, 3*out]: split columns, then transpose
            return [p.t().contiguous() for p in t.chunk(3, dim=1)]
        return [p.contiguous() for p in t.chunk(3, dim=0)]

    return split


def check_sizes(cfg: ModelConfig, shapes: Mapping[str, Sequence[int]], source: Path) -> None:
    """Refuse sizes that are not positive or that no tensor of the checkpoint could hold, before a decoder is built
    from them: a decoder of 10**9 layers takes forever to build, a negative size fails deep inside torch."""
    largest = max((math.prod(s) for s in shapes.values()), default=0)
    sizes = {"vocab_size": cfg.vocab_size, "hidden size": cfg.d_model, "layers": cfg.n_layers,
             "attention heads": cfg.n_heads, "key/value heads": cfg.n_kv_heads, "head dim": cfg.d_head,
             "feed-forward size": cfg.d_ff}
    for sub in (cfg.mla, cfg.moe):
        if sub is not None:
            sizes |= {k: v for k, v in vars(sub).items() if type(v) is int and v != 0}  # 0 stands for "none"
    bad = [f"{k} {v}" for k, v in sizes.items() if not 0 < v <= largest]
    # every layer and every routed expert has tensors of its own
    bad += [f"{v} {k} in {len(shapes)} tensors" for k, v in (("layers", cfg.n_layers), ("routed experts",
            cfg.moe.n_routed_experts if cfg.moe else 0)) if v > len(shapes)]
    bad += [f"max positions {cfg.max_positions}"] if cfg.max_positions <= 0 else []
    bad += [f"sliding window {w}" for w in cfg.sliding_window if w is not None and not 0 < w < 2**63]  # int64
    if bad:
        raise WeightLoadError(f"{source}: the configured sizes do not fit the checkpoint (its largest tensor has "
                              f"{largest} values): {', '.join(bad)}")


def load_weights(
    cfg: ModelConfig,
    names: Iterable[str],
    get: Callable[[str], torch.Tensor],
    rules: list[Rule],
    ignore: tuple[str, ...] = (),
) -> Decoder:
    """Build a Decoder for cfg from tensors fetched by name through the rules (strict)."""
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name in names:
        if any(re.fullmatch(p, name) for p in ignore):
            continue
        for rule in rules:
            m = re.fullmatch(rule.source, name)
            if m:
                try:
                    tensors = (rule.transform or _same)(get(name))
                except RuntimeError as e:  # a reshape that the stored shape cannot take
                    raise WeightLoadError(f"tensor {name} does not fit the model's layout: {e}") from e
                for target, tensor in zip(rule.targets, tensors):
                    key = m.expand(target)
                    if key in state:
                        raise WeightLoadError(f"parameter {key} filled twice (second time from {name})")
                    state[key] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise WeightLoadError(f"{len(unknown)} tensors in the checkpoint are not part of a {cfg.family} model: "
                              f"{', '.join(unknown[:8])}")
    return assign(cfg, state)


def assign(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Decoder:
    with torch.device("meta"):
        decoder = Decoder(cfg)
    expected = dict(decoder.named_parameters()) | dict(decoder.named_buffers())
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightLoadError(f"checkpoint does not match the config: missing {missing[:8]}, unexpected {extra[:8]}")
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(p.shape)}"
           for k, p in expected.items() if state[k].shape != p.shape]
    if bad:
        raise WeightLoadError("tensor shapes do not match the config: " + "; ".join(bad[:8]))
    dtype = next(iter(state.values())).dtype
    state = {k: v.float() if k.endswith(Decoder.FLOAT32) else v.to(dtype) for k, v in state.items()}
    decoder.load_state_dict(state, strict=True, assign=True)
    return decoder


def hf_rules(cfg: ModelConfig) -> tuple[list[Rule], tuple[str, ...]]:
    """Rules and ignored names for transformers' checkpoint layout of cfg's family."""
    if cfg.family == "gpt2":
        p = r"(?:transformer\.)?"
        rules = [
            Rule(p + r"wte\.weight", ("embed.weight",)),
            Rule(p + r"wpe\.weight", ("pos_embed.weight",)),
            Rule(p + r"h\.(\d+)\.ln_1\.(weight|bias)", (r"blocks.\1.attn_norm.\2",)),
            Rule(p + r"h\.(\d+)\.attn\.c_attn\.(weight|bias)",
                 (r"blocks.\1.attn.wq.\2", r"blocks.\1.attn.wk.\2", r"blocks.\1.attn.wv.\2"), split3(1)),
            Rule(p + r"h\.(\d+)\.attn\.c_proj\.weight", (r"blocks.\1.attn.wo.weight",), transpose),
            Rule(p + r"h\.(\d+)\.attn\.c_proj\.bias", (r"blocks.\1.attn.wo.bias",)),
            Rule(p + r"h\.(\d+)\.ln_2\.(weight|bias)", (r"blocks.\1.mlp_norm.\2",)),
            Rule(p + r"h\.(\d+)\.mlp\.c_fc\.weight", (r"blocks.\1.mlp.w_up.weight",), transpose),
            Rule(p + r"h\.(\d+)\.mlp\.c_fc\.bias", (r"blocks.\1.mlp.w_up.bias",)),
            Rule(p + r"h\.(\d+)\.mlp\.c_proj\.weight", (r"blocks.\1.mlp.w_down.weight",), transpose),
            Rule(p + r"h\.(\d+)\.mlp\.c_proj\.bias", (r"blocks.\1.mlp.w_down.bias",)),
            Rule(p + r"ln_f\.(weight|bias)", (r"norm.\1",)),
        ]
        # attn.bias / masked_bias are causal-mask buffers saved by old versions
        return rules + head_rules(cfg), (p + r"h\.\d+\.attn\.(?:masked_)?bias",) + head_ignore(cfg)
    L = r"model\.layers\.(\d+)\."
    if cfg.family == "deepseek_v3":
        return deepseek_rules(cfg, L)
    rules = [
        Rule(r"model\.embed_tokens\.weight", ("embed.weight",)),
        Rule(L + r"input_layernorm\.weight", (r"blocks.\1.attn_norm.weight",)),
        Rule(L + r"self_attn\.(q|k|v|o)_proj\.(weight|bias)", (r"blocks.\1.attn.w\2.\3",)),
        Rule(L + r"self_attn\.(q|k)_norm\.weight", (r"blocks.\1.attn.\2_norm.weight",)),
        Rule(L + r"post_attention_layernorm\.weight", (r"blocks.\1.mlp_norm.weight",)),
        Rule(L + r"mlp\.(gate|up|down)_proj\.(weight|bias)", (r"blocks.\1.mlp.w_\2.\3",)),
        Rule(r"model\.norm\.weight", ("norm.weight",)),
    ]
    ignore: tuple[str, ...] = (L + r"self_attn\.rotary_emb\.inv_freq",)
    return rules + head_rules(cfg), ignore + head_ignore(cfg)


def head_rules(cfg: ModelConfig) -> list[Rule]:
    return [] if cfg.tie_embeddings else [Rule(r"lm_head\.weight", ("lm_head.weight",))]


def head_ignore(cfg: ModelConfig) -> tuple[str, ...]:
    return (r"lm_head\.weight",) if cfg.tie_embeddings else ()  # some tied checkpoints store the matrix twice


def deinterleave_rope(rows_per_group: int, rope_dim: int) -> Transform:
    """DeepSeek checkpoints store each rotary part as interleaved pairs (x0, x1), (x2, x3)...; reorder those rows
    to (x0, x2, ..., x1, x3, ...) so the core's rotate-half RoPE computes exactly the interleaved rotation (both q
    and k are reordered alike, so q.k is unchanged). Rows come in groups (one per head) ending in the rope part."""
    order = torch.cat((torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)))

    def transform(t: torch.Tensor) -> list[torch.Tensor]:
        groups = t.reshape(-1, rows_per_group, *t.shape[1:])
        rope = groups[:, rows_per_group - rope_dim:][:, order]
        return [torch.cat((groups[:, : rows_per_group - rope_dim], rope), dim=1).reshape(t.shape)]

    return transform


def deepseek_rules(cfg: ModelConfig, L: str) -> tuple[list[Rule], tuple[str, ...]]:
    mla = cfg.mla
    q_fix = kv_fix = None
    if mla.rope_interleave:
        q_fix = deinterleave_rope(mla.qk_head_dim, mla.qk_rope_dim)
        kv_fix = deinterleave_rope(mla.kv_lora_rank + mla.qk_rope_dim, mla.qk_rope_dim)
    A, M = L + r"self_attn\.", L + r"mlp\."
    rules = [
        Rule(r"model\.embed_tokens\.weight", ("embed.weight",)),
        Rule(L + r"input_layernorm\.weight", (r"blocks.\1.attn_norm.weight",)),
        Rule(L + r"post_attention_layernorm\.weight", (r"blocks.\1.mlp_norm.weight",)),
        Rule(A + r"q_a_proj\.(weight|bias)", (r"blocks.\1.attn.wq_a.\2",)),
        Rule(A + r"q_a_layernorm\.weight", (r"blocks.\1.attn.q_a_norm.weight",)),
        Rule(A + r"q_b_proj\.weight", (r"blocks.\1.attn.wq_b.weight",), q_fix),
        Rule(A + r"q_proj\.weight", (r"blocks.\1.attn.wq.weight",), q_fix),
        Rule(A + r"kv_a_proj_with_mqa\.(weight|bias)", (r"blocks.\1.attn.wkv_a.\2",), kv_fix),
        Rule(A + r"kv_a_layernorm\.weight", (r"blocks.\1.attn.kv_a_norm.weight",)),
        Rule(A + r"kv_b_proj\.weight", (r"blocks.\1.attn.wkv_b.weight",)),
        Rule(A + r"o_proj\.(weight|bias)", (r"blocks.\1.attn.wo.\2",)),
        Rule(M + r"(gate|up|down)_proj\.weight", (r"blocks.\1.mlp.w_\2.weight",)),
        Rule(M + r"gate\.weight", (r"blocks.\1.mlp.router.weight",)),
        Rule(M + r"gate\.e_score_correction_bias", (r"blocks.\1.mlp.router_bias",)),
        Rule(M + r"experts\.(\d+)\.(gate|up|down)_proj\.weight", (r"blocks.\1.mlp.experts.\2.w_\3.weight",)),
        Rule(M + r"shared_experts\.(gate|up|down)_proj\.weight", (r"blocks.\1.mlp.shared.w_\2.weight",)),
        Rule(r"model\.norm\.weight", ("norm.weight",)),
    ]
    # multi-token-prediction layers past the last block only serve speculative decoding
    mtp = rf"model\.layers\.(?:{'|'.join(str(i) for i in range(cfg.n_layers, cfg.n_layers + 4))})\..*"
    return rules + head_rules(cfg), (mtp,) + head_ignore(cfg)


