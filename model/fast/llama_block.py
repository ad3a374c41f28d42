"""A Llama-style block whose one-token decoding step is one compiled call (model/kernels: llama_block_step):
RMSNorm, fused q/k/v, RoPE, the cache write, grouped-query attention and SwiGLU, reading the checkpoint's blocks.
Python would spend as long dispatching the step's ~40 small ops as the matrix products take."""
from __future__ import annotations

from functools import cached_property
from typing import Callable

import torch

from .. import kernels
from ..cache import KVCache
from ..decoder import MLP, Attention, Block, Recorder
from ..interventions import NO_INTERVENTIONS, Interventions
from .packed import PackedWeight

# the reference parameters each packed matrix stands for, in the order the kernel's fused matrices stack them
QKV, GATE_UP = ("attn.wq", "attn.wk", "attn.wv"), ("mlp.w_gate", "mlp.w_up")


def fits(block: Block) -> bool:
    """The structure the compiled step implements: RMSNorm (one epsilon), RoPE, plain multi-head or grouped-query
    attention without window, q/k norms or biases, SwiGLU with SiLU."""
    attn, mlp = block.attn, block.mlp
    return (isinstance(attn, Attention) and isinstance(mlp, MLP) and mlp.gated and mlp.act == "silu"
            and attn.q_norm is None and attn.window is None
            and block.attn_norm.kind == block.mlp_norm.kind == "rms" and block.attn_norm.eps == block.mlp_norm.eps
            and all(m.bias is None for m in (attn.wq, attn.wk, attn.wv, attn.wo, mlp.w_gate, mlp.w_up, mlp.w_down)))


class OneCallBlock(Block):
    """The reference block (its submodules and parameters, under the same names) plus its matrices as packed blocks.
    A one-token step with a cache runs in one compiled call; everything else (prefill, recomputation, views, a step
    that an intervention edits in this layer) is the reference forward, unchanged."""

    @classmethod
    def adopt(cls, block: Block, packed: Callable[[str], PackedWeight | None]) -> "OneCallBlock | None":
        """The fast form of `block`, given its matrices' packed blocks by parameter name (relative to the block);
        None where the block or its blocks do not fit."""
        if not fits(block):
            return None
        mats = {name: packed(name + ".weight") for name in QKV + ("attn.wo",) + GATE_UP + ("mlp.w_down",)}
        if any(p is None for p in mats.values()) or any(
                len({(mats[n].kind, mats[n].shape[1]) for n in group}) > 1 for group in (QKV, GATE_UP)):
            return None
        fast = cls.__new__(cls)
        vars(fast).update(vars(block))  # the same submodules, parameters and settings: only the class changes
        fast.qkv = PackedWeight.stacked([mats[n] for n in QKV])
        fast.gate_up = PackedWeight.stacked([mats[n] for n in GATE_UP])
        fast.wo, fast.w_down = mats["attn.wo"], mats["mlp.w_down"]
        return fast

    def packed_matrices(self) -> dict[str, PackedWeight]:
        """Each reference weight's packed form, as the step reads it (views of the fused matrices)."""
        out = {}
        for fused, group in ((self.qkv, QKV), (self.gate_up, GATE_UP)):
            start = 0
            for name in group:
                rows = self.get_submodule(name).out_features
                out[name + ".weight"] = fused.row_slice(start, start + rows)
                start += rows
        return out | {"attn.wo.weight": self.wo, "mlp.w_down.weight": self.w_down}

    def forward(self, h: torch.Tensor, positions: torch.Tensor, rope, cache: KVCache | None,
                recorder: Recorder | None = None, interventions: Interventions = NO_INTERVENTIONS) -> torch.Tensor:
        if (cache is None or h.shape[:2] != (1, 1) or rope is None or h.dtype != torch.float32
                or interventions.touches(self.layer)):  # the compiled step knows no interventions: the reference does
            return super().forward(h, positions, rope, cache, recorder, interventions)
        return self.step_rows(h, rope, [cache])

    @cached_property
    def for_kernels(self):
        """This block as the compiled kernels take it (model/kernels: LlamaBlock)."""
        attn: Attention = self.attn
        return kernels.extension().LlamaBlock(
            self.attn_norm.weight, self.mlp_norm.weight, self.attn_norm.eps, self.qkv.for_kernels, self.wo.for_kernels,
            self.gate_up.for_kernels, self.w_down.for_kernels, attn.n_heads, attn.n_kv_heads, attn.scale)

    def step_rows(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], caches: list[KVCache]) -> torch.Tensor:
        """One new token of each of B sequences, h [B, 1, d] float32, each over its own cache (at its own length;
        rope: cos, sin [B, d_head] at those positions), in one compiled call that reads the matrices once for all."""
        return step_all([self], h, rope, caches)


def step_all(blocks: list[OneCallBlock], h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
             caches: list[KVCache], positions: list[int] | None = None,
             residuals: torch.Tensor | None = None) -> torch.Tensor:
    """OneCallBlock.step_rows through every block in turn, in one compiled call (model/kernels: llama_blocks_rows): the
    model thread gives up the GIL once a step instead of around each block, and other threads' Python makes it wait
    once. Row r is at positions[r] (by default its cache's length) of caches[r]; rows may share a cache (a short
    prompt's ids, each at its own position: the call writes every row's key and value before any row attends).
    residuals [layers, B, d], when given, receives each block's output."""
    attn: Attention = blocks[0].attn
    positions = [cache.length for cache in caches] if positions is None else positions
    ends: dict[int, int] = {}  # each cache's room needed, by id
    for cache, at in zip(caches, positions):
        ends[id(cache)] = max(ends.get(id(cache), 0), at + 1)
    like = h.new_empty(1, attn.n_kv_heads, 0, attn.d_head)
    buffers = [[cache.reserve(block.layer, ends[id(cache)], like, like) for cache in caches] for block in blocks]
    return kernels.extension().llama_blocks_rows(
        h.contiguous(), [block.for_kernels for block in blocks], rope[0].contiguous(), rope[1].contiguous(),
        [[k for k, _ in layer] for layer in buffers], [[v for _, v in layer] for layer in buffers],
        list(positions), residuals)
