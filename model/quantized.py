"""GGUF block-quantized matrices kept as stored, for decoding from them with model/kernels (see blockquant.cpp).

A Linear whose weight came from a Q4_1 or Q8_0 tensor keeps its float32 weight (prefill, recomputation and every
view use it: dense matmuls of many rows are compute-bound) and a PackedWeight beside it; products of a few rows,
as in decoding one token, read the packed blocks instead: the same values, about a fifth of the bytes."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import gguf
import numpy as np
import torch

from . import kernels

BLOCK = 32
# Products with at most this many rows read the packed blocks; more rows use the dense float32 weight.
MAX_PACKED_ROWS = 4


@dataclass(frozen=True)
class PackedWeight:
    kind: str  # "q4_1" | "q8_0"
    q: torch.Tensor  # q4_1: uint8 [N, K/2] (low nibble j, high nibble j + 16 of each block); q8_0: int8 [N, K]
    scale: torch.Tensor  # float32 [N, K/32]
    minimum: torch.Tensor | None  # float32 [N, K/32] (q4_1 only)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scale.shape[0], self.scale.shape[1] * BLOCK

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.minimum) if t is not None)

    @classmethod
    def from_gguf(cls, raw: np.ndarray, qtype: gguf.GGMLQuantizationType) -> "PackedWeight | None":
        """raw: a tensor's stored bytes as uint8 [rows, bytes per row]; None for types the kernels do not read."""
        rows = raw.shape[0]
        if qtype == gguf.GGMLQuantizationType.Q4_1:  # block: d f16, m f16, 16 bytes of nibbles
            blocks = raw.reshape(rows, -1, 20)
            scales = blocks[:, :, :4].copy().view(np.float16).astype(np.float32)  # [rows, nb, 2]: d, m
            return cls("q4_1", torch.from_numpy(blocks[:, :, 4:].reshape(rows, -1).copy()),
                       torch.from_numpy(np.ascontiguousarray(scales[:, :, 0])),
                       torch.from_numpy(np.ascontiguousarray(scales[:, :, 1])))
        if qtype == gguf.GGMLQuantizationType.Q8_0:  # block: d f16, 32 int8
            blocks = raw.reshape(rows, -1, 34)
            scale = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)[:, :, 0]
            return cls("q8_0", torch.from_numpy(blocks[:, :, 2:].reshape(rows, -1).copy().view(np.int8)),
                       torch.from_numpy(np.ascontiguousarray(scale)), None)
        return None

    def rows_transformed(self, transform: Callable[[torch.Tensor], list[torch.Tensor]]) -> list["PackedWeight"]:
        """Apply a loader transform that only moves or splits rows (llama.cpp's Q/K unpermute, fused QKV split)."""
        parts = [transform(t) if t is not None else None for t in (self.q, self.scale, self.minimum)]
        n = len(parts[0])
        return [PackedWeight(self.kind, parts[0][i].contiguous(), parts[1][i].contiguous(),
                             parts[2][i].contiguous() if parts[2] is not None else None) for i in range(n)]

    @classmethod
    def stacked(cls, parts: list["PackedWeight"]) -> "PackedWeight":
        """One matrix of the parts' rows, in order (the parts must share kind and K)."""
        cat = lambda ts: torch.cat(ts) if ts[0] is not None else None
        return cls(parts[0].kind, cat([p.q for p in parts]), cat([p.scale for p in parts]),
                   cat([p.minimum for p in parts]))

    def row_slice(self, start: int, stop: int) -> "PackedWeight":
        """Rows start:stop, sharing this one's memory."""
        part = lambda t: t[start:stop] if t is not None else None
        return PackedWeight(self.kind, part(self.q), part(self.scale), part(self.minimum))

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]: the values the kernels compute with (tests compare them with gguf's dequantizer)."""
        n, k = self.shape
        if self.kind == "q4_1":
            lo, hi = (self.q & 0x0F).view(n, -1, 16), (self.q >> 4).view(n, -1, 16)
            q = torch.cat((lo, hi), dim=-1).float()
            return (self.scale[..., None] * q + self.minimum[..., None]).reshape(n, k)
        return (self.scale[..., None] * self.q.view(n, -1, BLOCK).float()).reshape(n, k)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] float32 -> x @ W.T [..., N]."""
        y = self.for_kernels(x.reshape(-1, x.shape[-1]).contiguous())
        return y.view(*x.shape[:-1], y.shape[-1])

    @cached_property
    def for_kernels(self):
        """This matrix as the compiled kernels take it (model/kernels: Packed)."""
        return kernels.extension().Packed(self.kind, self.q, self.scale, self.minimum)

    def usable_for(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() <= MAX_PACKED_ROWS * x.shape[-1]
                and kernels.loaded() is not None)
