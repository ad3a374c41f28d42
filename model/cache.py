"""KV cache: an object passed to the decoder's forward, not state hidden in modules (as nanochat's KVCache).
Preallocated per layer and grown by doubling, so a decode step writes in place."""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for one batch of sequences that share a length."""

    def __init__(self, n_layers: int, initial_capacity: int = 256) -> None:
        self.length = 0
        self.capacity = initial_capacity
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [B, Hkv, T, D] at positions length..length+T; return all keys and values so far."""
        start, end = self.length, self.length + k.shape[2]
        stored = self.layers[layer]
        if stored is None or stored[0].shape[2] < end:
            capacity = max(self.capacity, end)
            while capacity < end:
                capacity *= 2
            new = (k.new_empty(*k.shape[:2], capacity, k.shape[3]), v.new_empty(*v.shape[:2], capacity, v.shape[3]))
            if stored is not None:
                new[0][:, :, :start] = stored[0][:, :, :start]
                new[1][:, :, :start] = stored[1][:, :, :start]
            stored = self.layers[layer] = new
            self.capacity = capacity
        stored[0][:, :, start:end] = k
        stored[1][:, :, start:end] = v
        return stored[0][:, :, :end], stored[1][:, :, :end]

    def advance(self, n: int) -> None:
        """Called by the decoder once every layer has written its n new positions."""
        self.length += n

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for pair in self.layers if pair for t in pair)
