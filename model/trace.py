"""Recording: the residual stream of every layer, kept compactly, from which attention and logits are
recomputed exactly on demand. A T x T map per layer and head is never stored: for 1,024 tokens on SmolLM2
that would be 1.1 GB, while the residual stream is 70 MiB and every internal of a block is a function of it (and of
the interventions that made the run, which the trace keeps and the recomputation applies again)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache
from .decoder import BlockInternals, Decoder
from .interventions import NO_INTERVENTIONS, Interventions


class TraceRecorder:
    """Receives residual streams from Decoder.forward and appends them to a growing CPU buffer."""

    def __init__(self, decoder: Decoder, capacity: int = 256, interventions: Interventions = NO_INTERVENTIONS) -> None:
        cfg = decoder.config
        self.decoder = decoder
        self.interventions = interventions  # those of the forward passes recorded (the trace says so)
        self.length = 0
        self.ids = torch.empty(capacity, dtype=torch.long)
        self.hidden = torch.empty(cfg.n_layers + 1, capacity, cfg.d_model, dtype=decoder.embed.weight.dtype)
        k = cfg.moe.n_experts_per_tok if cfg.moe else 0
        self.moe_layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
        # chosen experts and weights of every MoE layer, as the forward pass used them: [n_moe, capacity, k]
        self.experts = torch.empty(len(self.moe_layers), capacity, k, dtype=torch.long)
        self.weights = torch.empty(len(self.moe_layers), capacity, k, dtype=torch.float32)
        self._pending: list[torch.Tensor] = []
        self._stacked: torch.Tensor | None = None  # or every layer's at once (residuals)
        self._pending_routing: list[tuple[torch.Tensor, torch.Tensor]] = []

    def residual(self, index: int, h: torch.Tensor) -> None:
        if h.shape[0] != 1:
            raise ValueError("recording supports one sequence at a time")
        self._pending.append(h[0].detach())

    def residuals(self, hidden: torch.Tensor) -> None:
        """Every residual of a forward pass at once, hidden [L + 1, T, d] (a compiled step's), for the next commit."""
        self._stacked = hidden

    def routing(self, layer: int, experts: torch.Tensor, weights: torch.Tensor) -> None:
        self._pending_routing.append((experts.detach(), weights.detach().float()))

    def commit(self, ids: torch.Tensor) -> None:
        """After a forward over ids [T]: move the pending layers to the CPU in one copy and append them."""
        stacked = (self._stacked if self._stacked is not None else torch.stack(self._pending)).to("cpu")  # [L+1, T, d]
        self._pending.clear()
        self._stacked = None
        start, end = self.length, self.length + stacked.shape[1]
        if end > self.hidden.shape[1]:
            capacity = max(end, 2 * self.hidden.shape[1])
            # new buffers, not resize_: traces already handed out keep viewing the old ones
            self.hidden, self.ids, self.experts, self.weights = (
                _grown(t, start, capacity, dim) for t, dim in
                ((self.hidden, 1), (self.ids, 0), (self.experts, 1), (self.weights, 1)))
        self.hidden[:, start:end] = stacked
        self.ids[start:end] = ids.to("cpu")
        if self._pending_routing:
            self.experts[:, start:end] = torch.stack([e for e, _ in self._pending_routing]).cpu()
            self.weights[:, start:end] = torch.stack([w for _, w in self._pending_routing]).cpu()
            self._pending_routing.clear()
        self.length = end

    def trace(self) -> "Trace":
        n = self.length
        return Trace(self.decoder, self.ids[:n], self.hidden[:, :n], self.experts[:, :n], self.weights[:, :n],
                     self.interventions)


def _grown(t: torch.Tensor, keep: int, capacity: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = capacity
    new = t.new_empty(shape)
    new.narrow(dim, 0, keep).copy_(t.narrow(dim, 0, keep))
    return new


@dataclass(frozen=True)
class Routing:
    """One MoE layer over a sequence: what the router chose for every token and how the output splits."""

    layer: int
    experts: torch.Tensor  # [T, k] chosen routed experts, most weight first (as the forward pass chose them)
    weights: torch.Tensor  # [T, k] their weights (normalised, times routed_scaling_factor)
    scores: torch.Tensor  # [T, E] router scores (sigmoid or softmax), recomputed
    routed_norm: torch.Tensor  # [T] norm of the routed experts' weighted sum, recomputed
    shared_norm: torch.Tensor  # [T] norm of the shared experts' output (0 without shared experts), recomputed


@dataclass(frozen=True)
class Trace:
    """What one sequence did inside the model. Views into the recorder's buffer: cheap to hand out per step."""

    decoder: Decoder
    ids: torch.Tensor  # [T] int64, CPU
    residual: torch.Tensor  # [n_layers + 1, T, d_model] in the model's dtype, CPU
    experts: torch.Tensor  # [n_moe_layers, T, k] chosen experts of every MoE layer (empty without MoE)
    expert_weights: torch.Tensor  # [n_moe_layers, T, k]
    interventions: Interventions = NO_INTERVENTIONS  # what edited the run (a Patch keeps its source trace alive)

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def n_layers(self) -> int:
        return self.residual.shape[0] - 1

    @property
    def hidden_states(self) -> torch.Tensor:
        """[n_layers + 1, T, d_model] float32: after the embedding, then after each block (before the final norm)."""
        return self.residual.float()

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        w = self.decoder.embed.weight
        return x.to(device=w.device, dtype=w.dtype)

    @torch.inference_mode()
    def logits_at(self, positions: torch.Tensor | list[int] | slice) -> torch.Tensor:
        """Logits [len(positions), vocab] float32 on the CPU: the final residual through the final norm and head."""
        h = self._on_device(self.residual[-1, positions])
        return self.decoder.unembed(h).cpu()

    @property
    def logits(self) -> torch.Tensor:
        """[T, vocab] float32. Recomputed on each access (it is the largest tensor; not kept in the trace)."""
        return self.logits_at(slice(None))

    @torch.inference_mode()
    def attention(self, layer: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """[n_heads, T, T] float32: row i is what token i attends to; rows sum to 1; zero above the diagonal.
        With start / stop, only rows start..stop-1 ([n_heads, stop - start, stop]: a query sees no key after it): the
        keys and values of the positions before start are computed first (what a KV cache holds of them: no attention
        of theirs), so a long context's map can be computed a few rows at a time, each part a fraction of the whole's
        work."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        stop = len(self) if stop is None else stop
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"rows {start}..{stop} out of range 0..{len(self)}")
        h = self._on_device(self.residual[layer][:stop])[None]  # interventions act after the softmax: none apply here
        if start == 0:
            return self.decoder.attention_probs(layer, h)[0].float().cpu()
        block, decoder = self.decoder.blocks[layer], self.decoder
        x = block.attn_norm(h)
        positions = torch.arange(stop, device=h.device)
        cache = KVCache(self.n_layers, initial_capacity=stop)
        cache.update(layer, *block.attn.keys(x[:, :start], decoder.rope(positions[:start], h.dtype)))  # keys before
        cache.advance(start)
        rows = positions[start:]
        return block.attn(x[:, start:], rows, decoder.rope(rows, h.dtype), cache, need_probs=True)[1][0].float().cpu()

    @property
    def moe_layers(self) -> list[int]:
        cfg = self.decoder.config
        return [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]

    @torch.inference_mode()
    def internals(self, layer: int, need_probs: bool = False) -> BlockInternals:
        """Everything block `layer` computed for this sequence, recomputed from the residual stream (batch of 1)."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        h = self._on_device(self.residual[layer])[None]
        return self.decoder.block_internals(layer, h, need_probs, self.interventions)

    def routing(self, layer: int) -> Routing:
        """The router's choices in MoE layer `layer` (see Routing)."""
        moe_layers = self.moe_layers
        if layer not in moe_layers:
            raise ValueError(f"layer {layer} is not a Mixture-of-Experts layer (those are {moe_layers})")
        i = moe_layers.index(layer)
        inside = self.internals(layer)
        shared = inside.shared_out[0].float()
        routed = inside.mlp_out[0].float() - shared
        return Routing(layer, self.experts[i], self.expert_weights[i], inside.router_scores.float().cpu(),
                       routed.norm(dim=-1).cpu(), shared.norm(dim=-1).cpu())

    def latent(self, layer: int) -> torch.Tensor:
        """MLA: the compressed KV latent [T, kv_lora_rank] float32 that the cache keeps instead of keys and values."""
        if self.decoder.config.mla is None:
            raise ValueError("this model has no latent attention")
        h = self._on_device(self.residual[layer])[None]
        block = self.decoder.blocks[layer]
        with torch.inference_mode():
            return block.attn.latent(block.attn_norm(h))[0][0].float().cpu()

    @property
    def nbytes(self) -> int:
        """Bytes this trace holds of its own (ids, residual stream, routing; the model's weights are shared)."""
        return self.ids.nbytes + self.residual.nbytes + self.experts.nbytes + self.expert_weights.nbytes
