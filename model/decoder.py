"""One generic decoder-only transformer for every supported family (anchor: gpt-fast's model.py).
Families differ by config switches: norm kind, positions (RoPE or learned), MLP kind, biases, q/k norms."""
from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from .cache import KVCache
from .config import ModelConfig
from .layers import activation, apply_rope, attention, layer_norm, rms_norm, rope_cos_sin, rope_inv_freq


class Recorder(Protocol):
    """What forward() reports while it runs; see trace.py."""

    def residual(self, index: int, h: torch.Tensor) -> None: ...  # index 0: embeddings, i+1: after block i


class Norm(nn.Module):
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

    def forward(
        self,
        x: torch.Tensor,  # [B, T, d_model], already normed
        positions: torch.Tensor,  # [T]
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None = None,
        need_probs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # [B, H, T, D]
        k = self.wk(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
        if self.q_norm is not None:  # Qwen3: RMSNorm per head, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        out, probs = attention(q, k, v, positions, self.scale, self.window, need_probs)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1)), probs


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated, self.act = cfg.mlp == "swiglu", cfg.activation
        self.w_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias) if self.gated else None
        self.w_up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:  # SwiGLU
            return self.w_down(activation(self.w_gate(x), self.act) * self.w_up(x))
        return self.w_down(activation(self.w_up(x), self.act))


class Block(nn.Module):
    """Pre-norm block: h + attn(attn_norm(h)), then h + mlp(mlp_norm(h))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, rope, cache: KVCache | None) -> torch.Tensor:
        h = h + self.attn(self.attn_norm(h), positions, rope, cache)[0]
        return h + self.mlp(self.mlp_norm(h))


class Decoder(nn.Module):
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

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.rope is None:
            return None
        if self._inv_freq is None or self._inv_freq.device != positions.device:
            self._inv_freq = rope_inv_freq(self.config.rope, self.config.d_head).to(positions.device)
        return rope_cos_sin(self._inv_freq, positions, dtype)

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        if self.pos_embed is not None:
            if int(positions[-1]) >= self.config.max_positions:
                raise ValueError(f"context longer than the model's {self.config.max_positions} learned positions")
            h = h + self.pos_embed(positions)
        return h

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and head: residual stream [.., d_model] -> logits [.., vocab] in float32."""
        return torch.nn.functional.linear(self.norm(h), self.head_weight).float()

    def forward(
        self,
        ids: torch.Tensor,  # [B, T]
        cache: KVCache | None = None,
        recorder: Recorder | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] float32 (or [B, 1, vocab] with last_only) for ids at positions cache.length..."""
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        h = self.embed_tokens(ids, positions)
        rope = self.rope(positions, h.dtype)
        if recorder is not None:
            recorder.residual(0, h)
        for i, block in enumerate(self.blocks):
            h = block(h, positions, rope, cache)
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
