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

    def reserve(self, layer: int, end: int, like_k: torch.Tensor,
                like_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """layer's key and value buffers [B, Hkv, capacity, D] (shaped like like_k / like_v but for the length),
        with room for end positions: grown by doubling, keeping the first `length` positions."""
        stored = self.layers[layer]
        if stored is None or stored[0].shape[2] < end:
            capacity = max(self.capacity, end)
            while capacity < end:
                capacity *= 2
            new = (like_k.new_empty(*like_k.shape[:2], capacity, like_k.shape[3]),
                   like_v.new_empty(*like_v.shape[:2], capacity, like_v.shape[3]))
            if stored is not None:
                new[0][:, :, :self.length] = stored[0][:, :, :self.length]
                new[1][:, :, :self.length] = stored[1][:, :, :self.length]
            stored = self.layers[layer] = new
            self.capacity = capacity
        return stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [B, Hkv, T, D] at positions length..length+T; return all keys and values so far."""
        start, end = self.length, self.length + k.shape[2]
        keys, values = self.reserve(layer, end, k, v)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Called by the decoder once every layer has written its n new positions."""
        self.length += n
