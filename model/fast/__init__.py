"""Fast paths, swapped into a loaded reference decoder (anchor: gpt-fast's quantize.py replacing nn.Linear after
loading). The reference (model/decoder.py, model/layers.py) never knows: every fast module computes what the module
it replaces computes, and leaving `accelerate` out (EXPLORER_KERNELS=0, or no C++ compiler) changes no token.

A fast path is a function (decoder, stored matrices) -> a sentence saying what it did, or None where it does not
apply to this checkpoint on this machine. `accelerate` runs them in order; new ones (batched decoding steps) join
FAST_PATHS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import gguf
import torch
from torch import nn

from .. import kernels
from ..decoder import Decoder
from .llama_block import OneCallBlock
from .packed import KINDS, PackedLinear, PackedWeight


@dataclass(frozen=True)
class StoredMatrix:
    """A 2-D weight as the checkpoint stores it (e.g. GGUF's Q4_1 blocks), offered by the loader under the decoder
    parameter name it fills: what a fast path may compute from instead of the float32 copy."""

    qtype: gguf.GGMLQuantizationType
    read: Callable[[], torch.Tensor]  # its bytes, uint8 [rows, bytes per row], rows moved as the float32 weight's


def gguf_blocks(decoder: Decoder, stored: Mapping[str, StoredMatrix]) -> str | None:
    """Decoding reads the file's Q4_1 / Q8_0 blocks (float32 on the CPU): Llama-style blocks as one compiled call a
    step, every other matrix through a PackedLinear; the tied embedding's blocks serve as the output matrix."""
    weight = decoder.embed.weight
    wanted = {name: m for name, m in stored.items() if m.qtype in KINDS}
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not wanted or kernels.extension() is None:
        return None
    packed = {name: PackedWeight.from_stored(m.read(), m.qtype) for name, m in wanted.items()}
    use_packed(decoder, packed)
    kinds = "/".join(sorted({p.kind.upper() for p in packed_matrices(decoder).values()}))
    return f"decoding from the file's {kinds} blocks ({kernels.extension().isa()} kernels)"


def bf16_weights(decoder: Decoder, stored: Mapping[str, StoredMatrix]) -> str | None:
    """A checkpoint stored in bf16 (the hub's safetensors) and loaded as float32 (on the CPU): decoding reads each
    matrix's bf16 values, widened to float32 in registers. Every float32 weight is checked to be exactly its bf16
    value, so the products use the same values as the float32 path, from half the bytes."""
    weight = decoder.embed.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    taken = packed_matrices(decoder)  # read from GGUF blocks already
    packed = {name: p for name, w in decoder.named_parameters() if w.dim() == 2 and name not in taken
              and (p := PackedWeight.from_bf16_values(w)) is not None}
    if not packed or kernels.extension() is None:  # a model without bf16 weights never builds the kernels
        return None
    use_packed(decoder, packed)
    return f"decoding from the checkpoint's bf16 weights ({kernels.extension().isa()} kernels)"


def use_packed(decoder: Decoder, packed: dict[str, PackedWeight]) -> None:
    """Swap in the modules that read these matrices (by reference parameter name): Llama-style blocks as one
    compiled call a step, every other matrix through a PackedLinear; a tied embedding's serves as the output matrix."""
    packed = dict(packed)
    if decoder.config.rope is not None:
        for i, block in enumerate(decoder.blocks):
            fast = OneCallBlock.adopt(block, lambda name: packed.get(f"blocks.{i}.{name}"))
            if fast is not None:
                decoder.blocks[i] = fast
                for name, view in fast.packed_matrices().items():
                    # its own Linears read the same blocks: a short prompt (or a row an intervention sends through
                    # the reference block) then reads a fifth of the float32 weight's bytes
                    _swap_linear(fast, name, view)
                    del packed[f"blocks.{i}.{name}"]
    for name, p in packed.items():
        owner = name.removesuffix(".weight")
        if owner == "embed":  # lookups stay dense; tied, its blocks are also the output matrix
            if decoder.lm_head is None:
                decoder.lm_head = PackedLinear(decoder.embed.weight, None, p)
            continue
        _swap_linear(decoder, name, p)


def _swap_linear(root: nn.Module, name: str, packed: PackedWeight) -> None:
    """The nn.Linear whose weight is `name` (relative to root) replaced by a PackedLinear reading `packed`."""
    owner = name.removesuffix(".weight")
    linear = root.get_submodule(owner)
    if isinstance(linear, nn.Linear) and not isinstance(linear, PackedLinear):
        parent, _, child = owner.rpartition(".")
        setattr(root.get_submodule(parent), child, PackedLinear(linear.weight, linear.bias, packed))


FAST_PATHS: list[Callable[[Decoder, Mapping[str, StoredMatrix]], str | None]] = [gguf_blocks, bf16_weights]


def accelerate(decoder: Decoder, stored: Mapping[str, StoredMatrix]) -> list[str]:
    """Swap in every fast path that applies to this decoder (already on its device and dtype) and checkpoint;
    returns what each did. Nothing with EXPLORER_KERNELS=0."""
    if not kernels.enabled():
        return []
    return [done for path in FAST_PATHS if (done := path(decoder, stored)) is not None]


def packed_matrices(decoder: nn.Module) -> dict[str, PackedWeight]:
    """Every weight that decoding reads as packed blocks, by the reference parameter name it stands for."""
    out: dict[str, PackedWeight] = {}
    for name, m in decoder.named_modules():
        prefix = name + "." if name else ""
        if isinstance(m, OneCallBlock):
            out |= {prefix + k: v for k, v in m.packed_matrices().items()}
        elif isinstance(m, PackedLinear):
            out[prefix + "weight"] = m.packed
    return out


__all__ = ["FAST_PATHS", "OneCallBlock", "PackedLinear", "PackedWeight", "StoredMatrix", "accelerate",
           "packed_matrices"]
