"""Recording: the residual stream of every layer, kept compactly, from which attention and logits are
recomputed exactly on demand. A T x T map per layer and head is never stored: for 1,024 tokens on SmolLM2
that would be 1.1 GB, while the residual stream is 70 MiB and every internal of a block is a function of it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .decoder import Decoder


class TraceRecorder:
    """Receives residual streams from Decoder.forward and appends them to a growing CPU buffer."""

    def __init__(self, decoder: Decoder, capacity: int = 256) -> None:
        cfg = decoder.config
        self.decoder = decoder
        self.length = 0
        self.ids = torch.empty(capacity, dtype=torch.long)
        self.hidden = torch.empty(cfg.n_layers + 1, capacity, cfg.d_model, dtype=decoder.embed.weight.dtype)
        self._pending: list[torch.Tensor] = []

    def residual(self, index: int, h: torch.Tensor) -> None:
        if h.shape[0] != 1:
            raise ValueError("recording supports one sequence at a time")
        self._pending.append(h[0].detach())

    def commit(self, ids: torch.Tensor) -> None:
        """After a forward over ids [T]: move the pending layers to the CPU in one copy and append them."""
        stacked = torch.stack(self._pending).to("cpu", non_blocking=False)  # [L+1, T, d]
        self._pending.clear()
        start, end = self.length, self.length + stacked.shape[1]
        if end > self.hidden.shape[1]:
            capacity = max(end, 2 * self.hidden.shape[1])
            # a new buffer, not resize_: traces already handed out keep viewing the old one
            hidden = self.hidden.new_empty(self.hidden.shape[0], capacity, self.hidden.shape[2])
            hidden[:, :start] = self.hidden[:, :start]
            new_ids = self.ids.new_empty(capacity)
            new_ids[:start] = self.ids[:start]
            self.hidden, self.ids = hidden, new_ids
        self.hidden[:, start:end] = stacked
        self.ids[start:end] = ids.to("cpu")
        self.length = end

    def trace(self) -> "Trace":
        return Trace(self.decoder, self.ids[: self.length], self.hidden[:, : self.length])


@dataclass(frozen=True)
class Trace:
    """What one sequence did inside the model. Views into the recorder's buffer: cheap to hand out per step."""

    decoder: Decoder
    ids: torch.Tensor  # [T] int64, CPU
    residual: torch.Tensor  # [n_layers + 1, T, d_model] in the model's dtype, CPU

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
    def attention(self, layer: int) -> torch.Tensor:
        """[n_heads, T, T] float32: row i is what token i attends to; rows sum to 1; zero above the diagonal."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        h = self._on_device(self.residual[layer])[None]
        return self.decoder.attention_probs(layer, h)[0].float().cpu()

    @property
    def nbytes(self) -> int:
        """Bytes this trace holds of its own (ids and residual stream; the model's weights are shared)."""
        return self.ids.nbytes + self.residual.nbytes
