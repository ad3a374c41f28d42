"""One generic decoder-only transformer for every supported family (anchor: gpt-fast's model.py).
Families differ by config switches: norm kind, positions (RoPE or learned), MLP kind, biases, q/k norms."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from .cache import KVCache
from .config import ModelConfig
from .interventions import NO_INTERVENTIONS, Interventions
from .layers import (activation, apply_rope, attention, layer_norm, rms_norm, rope_attention_factor, rope_cos_sin,
                     rope_inv_freq, route_experts, yarn_softmax_scale)


class Recorder(Protocol):
    """What forward() reports while it runs; see trace.py."""

    def residual(self, index: int, h: torch.Tensor) -> None: ...  # index 0: embeddings, i+1: after block i

    def routing(self, layer: int, experts: torch.Tensor, weights: torch.Tensor) -> None: ...  # [B*T, k] each


@dataclass
class BlockInternals:
    """Everything one block computes for a sequence, recomputed from the residual stream entering it."""

    attn_in: torch.Tensor  # [B, T, d] after attn_norm
    attn_out: torch.Tensor  # [B, T, d]
    mlp_in: torch.Tensor  # [B, T, d] after mlp_norm
    mlp_out: torch.Tensor  # [B, T, d]
    h_out: torch.Tensor  # [B, T, d] the residual stream leaving the block (as a Patch or Steering left it)
    attn_probs: torch.Tensor | None = None  # [B, H, T, T]
    latent: torch.Tensor | None = None  # MLA: [B, T, kv_lora_rank], the compressed KV the cache keeps
    router_scores: torch.Tensor | None = None  # MoE: [B*T, E]
    experts: torch.Tensor | None = None  # MoE: [B*T, k]
    expert_weights: torch.Tensor | None = None  # MoE: [B*T, k]
    shared_out: torch.Tensor | None = None  # MoE: [B, T, d] the shared experts' part of mlp_out


class Norm(nn.Module):
    """RMSNorm (Llama, Qwen, DeepSeek) or LayerNorm (GPT-2) over the model dimension, with a learned scale."""

    def __init__(self, dim: int, kind: str, eps: float) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == "layer" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            return rms_norm(x, self.weight, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)


class Attention(nn.Module):
    """Multi-head attention: each head attends with softmax(q k^T / sqrt(d_head)) over the keys before it. With fewer
    key/value heads than query heads (grouped-query attention), each KV head serves a group of query heads."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.d_head = layer, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.window = cfg.window(layer)
        self.scale = 1.0 / math.sqrt(cfg.d_head)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=cfg.out_bias)
        self.q_norm = Norm(cfg.d_head, "rms", cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = Norm(cfg.d_head, "rms", cfg.norm_eps) if cfg.qk_norm else None

    def keys(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache keeps of x [B, T, d_model] (normed): keys, rotated, and values, each [B, Hkv, T, D]."""
        b, t, _ = x.shape
        k = self.wk(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return (k if rope is None else apply_rope(k, *rope)), v

    def forward(
        self,
        x: torch.Tensor,  # [B, T, d_model], already normed
        positions: torch.Tensor,  # [T]
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None = None,
        need_probs: bool = False,
        interventions: Interventions = NO_INTERVENTIONS,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # [B, H, T, D]
        if self.q_norm is not None:  # Qwen3: RMSNorm per head, before the rotation
            q = self.q_norm(q)
        if rope is not None:
            q = apply_rope(q, *rope)
        k, v = self.keys(x, rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # [B, Hkv, past + T, D]
        out, probs = attention(q, k, v, positions, self.scale, self.window, need_probs)  # [B, H, T, D]
        out = interventions.heads(self.layer, out)  # e.g. an ablated head's output zeroed
        return self.wo(out.transpose(1, 2).reshape(b, t, -1)), probs  # heads concatenated, then mixed by wo


# DeepSeek's latent norms use RMSNorm's default epsilon, not the config's (as in its reference code)
LATENT_NORM_EPS = 1e-6


class LatentAttention(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V2/V3). Keys and values of all heads come from one small latent per
    token (kv_lora_rank), which is what the cache stores; a decoupled rotary key part is shared by all heads."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        mla = cfg.mla
        self.layer, self.n_heads, self.mla = layer, cfg.n_heads, mla
        if mla.q_lora_rank:
            self.wq_a = nn.Linear(cfg.d_model, mla.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = Norm(mla.q_lora_rank, "rms", LATENT_NORM_EPS)
            self.wq_b = nn.Linear(mla.q_lora_rank, cfg.n_heads * mla.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(cfg.d_model, cfg.n_heads * mla.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.d_model, mla.kv_lora_rank + mla.qk_rope_dim, bias=cfg.qkv_bias)
        self.kv_a_norm = Norm(mla.kv_lora_rank, "rms", LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(mla.kv_lora_rank, cfg.n_heads * (mla.qk_nope_dim + mla.v_head_dim), bias=False)
        self.wo = nn.Linear(cfg.n_heads * mla.v_head_dim, cfg.d_model, bias=cfg.out_bias)
        self.scale = mla.qk_head_dim ** -0.5 * yarn_softmax_scale(cfg.rope)

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d] -> (normed latent [B, T, kv_lora_rank], rotary key part before rotation [B, T, d_rope])."""
        latent, k_rot = self.wkv_a(x).split([self.mla.kv_lora_rank, self.mla.qk_rope_dim], dim=-1)
        return self.kv_a_norm(latent), k_rot

    def keys(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache keeps of x [B, T, d_model] (normed): the latent and the rotated key part, [B, 1, T, .] each
        (one "head")."""
        latent, k_rot = self.latent(x)
        return latent[:, None], apply_rope(k_rot[:, None], *rope)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        need_probs: bool = False,
        interventions: Interventions = NO_INTERVENTIONS,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        mla, h = self.mla, self.n_heads
        q = self.wq_b(self.q_a_norm(self.wq_a(x))) if mla.q_lora_rank else self.wq(x)
        q = q.view(b, t, h, mla.qk_head_dim).transpose(1, 2)  # [B, H, T, nope + rope]
        q_nope, q_rot = q.split([mla.qk_nope_dim, mla.qk_rope_dim], dim=-1)
        latent, k_rot = self.keys(x, rope)
        if cache is not None:
            latent, k_rot = cache.update(self.layer, latent, k_rot)
        n = latent.shape[2]
        kv = self.wkv_b(latent[:, 0]).view(b, n, h, mla.qk_nope_dim + mla.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([mla.qk_nope_dim, mla.v_head_dim], dim=-1)
        q = torch.cat((q_nope, apply_rope(q_rot, *rope)), dim=-1)
        k = torch.cat((k_nope, k_rot.expand(b, h, n, mla.qk_rope_dim)), dim=-1)
        out, probs = attention(q, k, v, positions, self.scale, None, need_probs)  # [B, H, T, v_head_dim]
        out = interventions.heads(self.layer, out)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1)), probs


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated, self.act = cfg.mlp == "swiglu", cfg.activation
        self.w_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias) if self.gated else None
        self.w_up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:  # SwiGLU: act(x W_gate) * (x W_up), then W_down
            return self.w_down(activation(self.w_gate(x), self.act) * self.w_up(x))
        return self.w_down(activation(self.w_up(x), self.act))


class MoE(nn.Module):
    """Mixture of Experts: a router picks k routed experts per token and weights them; shared experts always run."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.moe = moe = cfg.moe
        self.router = nn.Linear(cfg.d_model, moe.n_routed_experts, bias=False)
        self.register_buffer("router_bias", torch.zeros(moe.n_routed_experts))  # e_score_correction_bias
        expert_cfg = replace(cfg, d_ff=moe.d_ff_expert, mlp_bias=False)
        self.experts = nn.ModuleList(MLP(expert_cfg) for _ in range(moe.n_routed_experts))
        self.shared = MLP(replace(expert_cfg, d_ff=moe.d_ff_expert * moe.n_shared_experts)) \
            if moe.n_shared_experts else None

    def route(self, x: torch.Tensor,
              allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, d] -> scores [N, E], experts [N, k], weights [N, k]; the router runs in float32. allowed [E] bool:
        the experts it may choose (None: all)."""
        m = self.moe
        logits = torch.nn.functional.linear(x.float(), self.router.weight.float())
        return route_experts(logits, self.router_bias.float(), m.scoring, m.topk_method, m.n_experts_per_tok,
                             m.n_group, m.topk_group, m.norm_topk_prob, m.routed_scaling_factor, allowed)

    def forward(self, x: torch.Tensor, record: dict | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        scores, experts, weights = self.route(flat, allowed)
        routed = torch.zeros_like(flat)
        for e in experts.unique().tolist():
            rows, slot = (experts == e).nonzero(as_tuple=True)
            routed.index_add_(0, rows, self.experts[e](flat[rows]) * weights[rows, slot, None].to(flat.dtype))
        shared = self.shared(x) if self.shared is not None else torch.zeros_like(x)
        if record is not None:
            record.update(router_scores=scores, experts=experts, expert_weights=weights, shared_out=shared)
        return routed.view(shape) + shared


class Block(nn.Module):
    """Pre-norm block: h + attn(attn_norm(h)), then h + mlp(mlp_norm(h))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.attn = LatentAttention(cfg, layer) if cfg.mla is not None else Attention(cfg, layer)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, rope, cache: KVCache | None,
                recorder: Recorder | None = None, interventions: Interventions = NO_INTERVENTIONS) -> torch.Tensor:
        attn_out = self.attn(self.attn_norm(h), positions, rope, cache, interventions=interventions)[0]
        h = h + interventions.attention(self.layer, attn_out)
        record: dict | None = {} if recorder is not None else None
        mlp_out = self._mlp(self.mlp_norm(h), record, interventions)
        if record:  # an MoE layer reports what its router chose
            recorder.routing(self.layer, record["experts"], record["expert_weights"])
        return interventions.block(self.layer, h + interventions.mlp(self.layer, mlp_out), positions)

    def _mlp(self, x: torch.Tensor, record: dict | None, interventions: Interventions) -> torch.Tensor:
        """The MLP, or the MoE with the experts its router may choose (and what it chose, into record)."""
        if not isinstance(self.mlp, MoE):
            return self.mlp(x)
        allowed = interventions.allowed_experts(self.layer, self.mlp.moe.n_routed_experts, x.device)
        return self.mlp(x, record, allowed)

    def internals(self, h: torch.Tensor, positions: torch.Tensor, rope, need_probs: bool = False,
                  interventions: Interventions = NO_INTERVENTIONS) -> BlockInternals:
        """Recompute this block over a whole sequence h [B, T, d], keeping every intermediate (as the interventions
        made them: the outputs are what the block added to the residual stream)."""
        attn_in = self.attn_norm(h)
        attn_out, probs = self.attn(attn_in, positions, rope, None, need_probs, interventions)
        attn_out = interventions.attention(self.layer, attn_out)
        mid = h + attn_out
        mlp_in = self.mlp_norm(mid)
        record: dict = {}
        mlp_out = interventions.mlp(self.layer, self._mlp(mlp_in, record, interventions))
        h_out = interventions.block(self.layer, mid + mlp_out, positions)
        latent = self.attn.latent(attn_in)[0] if isinstance(self.attn, LatentAttention) else None
        return BlockInternals(attn_in, attn_out, mlp_in, mlp_out, h_out, probs, latent, **record)


class Decoder(nn.Module):
    """Token embedding -> n_layers Blocks -> final norm -> head (the embedding matrix again when tied): logits."""

    # The MoE router chooses between experts whose scores can differ by less than a bf16 step: as in DeepSeek's
    # reference code and transformers, its weight and correction bias stay float32 whatever the model's dtype.
    FLOAT32 = ("mlp.router.weight", "mlp.router_bias")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # given weights skip nn.Embedding's normal_ init, which on the meta device costs a second of imports
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, _weight=torch.empty(cfg.vocab_size, cfg.d_model))
        self.pos_embed = (nn.Embedding(cfg.max_positions, cfg.d_model, _weight=torch.empty(cfg.max_positions, cfg.d_model))
                          if cfg.positions == "learned" else None)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._inv_freq: torch.Tensor | None = None

    def cast(self, device: torch.device, dtype: torch.dtype) -> "Decoder":
        """This decoder on device, in dtype but for the tensors named in FLOAT32, which stay float32."""
        tensors = [*self.named_parameters(), *self.named_buffers()]
        keep = {name: t.detach().float().clone() for name, t in tensors if name.endswith(self.FLOAT32)}
        self.to(device=device, dtype=dtype)
        for name, t in keep.items():
            owner, _, attr = name.rpartition(".")
            module = self.get_submodule(owner)
            if attr in module._parameters:
                setattr(module, attr, nn.Parameter(t.to(device), requires_grad=False))
            else:
                setattr(module, attr, t.to(device))
        return self

    @property
    def d_rope(self) -> int:
        """Dimensions rotated by RoPE: the whole head, or MLA's decoupled rotary part."""
        return self.config.mla.qk_rope_dim if self.config.mla is not None else self.config.d_head

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.rope is None:
            return None
        if self._inv_freq is None or self._inv_freq.device != positions.device:
            self._inv_freq = rope_inv_freq(self.config.rope, self.d_rope).to(positions.device)
        return rope_cos_sin(self._inv_freq, positions, dtype, rope_attention_factor(self.config.rope))

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        if self.pos_embed is not None:
            if int(positions.max()) >= self.config.max_positions:
                raise ValueError(f"context longer than the model's {self.config.max_positions} learned positions")
            h = h + self.pos_embed(positions)
        return h

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and head: residual stream [.., d_model] -> logits [.., vocab] in float32."""
        x = self.norm(h)
        if self.lm_head is None:  # tied: the embedding matrix also reads tokens out
            return torch.nn.functional.linear(x, self.embed.weight).float()
        return self.lm_head(x).float()

    def forward(
        self,
        ids: torch.Tensor,  # [B, T]
        cache: KVCache | None = None,
        recorder: Recorder | None = None,
        last_only: bool = False,
        interventions: Interventions = NO_INTERVENTIONS,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] float32 (or [B, 1, vocab] with last_only) for ids at positions cache.length...
        Interventions edit the pass where they act (see interventions.py)."""
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        h = self.embed_tokens(ids, positions)
        rope = self.rope(positions, h.dtype)
        if recorder is not None:
            recorder.residual(0, h)
        for i, block in enumerate(self.blocks):
            h = block(h, positions, rope, cache, recorder, interventions)
            if recorder is not None:
                recorder.residual(i + 1, h)
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.unembed(h[:, -1:] if last_only else h)

    def attention_probs(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Recompute layer's attention probabilities [B, H, T, T] from the residual stream h [B, T, d] entering it."""
        positions = torch.arange(h.shape[1], device=h.device)
        block = self.blocks[layer]
        return block.attn(block.attn_norm(h), positions, self.rope(positions, h.dtype), None, need_probs=True)[1]

    def block_internals(self, layer: int, h: torch.Tensor, need_probs: bool = False,
                        interventions: Interventions = NO_INTERVENTIONS) -> BlockInternals:
        """Recompute everything layer computes from the residual stream h [B, T, d] entering it."""
        positions = torch.arange(h.shape[1], device=h.device)
        return self.blocks[layer].internals(h, positions, self.rope(positions, h.dtype), need_probs, interventions)
