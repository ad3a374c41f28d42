"""Matrices kept as the checkpoint stores them (GGUF's Q4_1, Q8_0 blocks; bf16), and a Linear that multiplies a few
rows straight from them with the compiled kernels (model/kernels/blockquant.cpp): the same weight values as the
float32 copy, about a fifth (Q4_1) or half (bf16) of the bytes read. Decoding one token reads every weight once, so
bytes read set its speed."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import gguf
import torch
from torch import nn

from .. import kernels

BLOCK = 32
KINDS = {gguf.GGMLQuantizationType.Q4_1: "q4_1", gguf.GGMLQuantizationType.Q8_0: "q8_0"}  # what the kernels read
# Products with at most this many rows read the packed blocks (a batched decoding step: model/batch.py keeps its
# batches this small, so that each row's numbers are those it gets alone); more rows (prefill, recomputation) use the
# float32 weight: a dense matmul of many rows is bound by arithmetic, not by bytes.
MAX_PACKED_ROWS = 16


@dataclass(frozen=True)
class PackedWeight:
    kind: str  # "q4_1" | "q8_0" | "bf16"
    # q4_1: uint8 [N, K/2] (low nibble j, high nibble j + 16 of each block); q8_0: int8 [N, K]; bf16: int16 [N, K]
    # holding bfloat16 bits
    q: torch.Tensor
    scale: torch.Tensor | None  # float32 [N, K/32] (not bf16)
    minimum: torch.Tensor | None  # float32 [N, K/32] (q4_1 only)

    @property
    def shape(self) -> tuple[int, int]:
        if self.kind == "bf16":
            return tuple(self.q.shape)
        return self.scale.shape[0], self.scale.shape[1] * BLOCK

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.minimum) if t is not None)

    @classmethod
    def from_stored(cls, raw: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> "PackedWeight | None":
        """raw: a matrix's stored bytes, uint8 [rows, bytes per row]; None for types the kernels do not read."""
        rows, kind = raw.shape[0], KINDS.get(qtype)
        if kind == "q4_1":  # block: d f16, m f16, 16 bytes of nibbles
            blocks = raw.reshape(rows, -1, 20)
            d_m = blocks[:, :, :4].contiguous().view(torch.float16).float()  # [rows, nb, 2]: d, m
            return cls("q4_1", blocks[:, :, 4:].reshape(rows, -1).contiguous(), d_m[:, :, 0].contiguous(),
                       d_m[:, :, 1].contiguous())
        if kind == "q8_0":  # block: d f16, 32 int8
            blocks = raw.reshape(rows, -1, 34)
            d = blocks[:, :, :2].contiguous().view(torch.float16).float()[:, :, 0].contiguous()
            return cls("q8_0", blocks[:, :, 2:].reshape(rows, -1).contiguous().view(torch.int8), d, None)
        return None

    @classmethod
    def from_bf16_values(cls, weight: torch.Tensor) -> "PackedWeight | None":
        """A float32 matrix whose every value is a bfloat16 (a bf16 checkpoint loaded as float32) as those bf16 values;
        None where one is not (rounding would change the weight)."""
        stored = weight.detach().to(torch.bfloat16)
        if not torch.equal(stored.float(), weight):
            return None
        return cls("bf16", stored.view(torch.int16), None, None)

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
        if self.kind == "bf16":
            return self.q.view(torch.bfloat16).float()
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


class PackedLinear(nn.Linear):
    """A reference nn.Linear (same weight and bias, same name in the model) that multiplies a few float32 rows on the
    CPU straight from the checkpoint's stored matrix; anything else goes through the float32 weight as before."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, packed: PackedWeight) -> None:
        nn.Module.__init__(self)
        if packed.shape != tuple(weight.shape):
            raise ValueError(f"packed blocks {packed.shape} do not match the weight {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.weight, self.bias = weight, bias
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() <= MAX_PACKED_ROWS * x.shape[-1]:
            y = self.packed.matmul(x)
            return y if self.bias is None else y + self.bias
        return super().forward(x)
