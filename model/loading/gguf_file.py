"""Loading a GGUF file: metadata -> config and tokenizer, tensors dequantized to float32 by the `gguf`
package, llama.cpp's Q/K row permutation undone (anchor: transformers' GGUF tensor table)."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..config import ModelConfig, UnsupportedModelError, unsupported
from .. import kernels
from ..decoder import MLP, Attention, Decoder
from ..quantized import PackedWeight
from ..tokenizer import Tokenizer
from .gguf_reader import GGUFFile, GGUFFormatError
from .weights import Rule, Transform, check_sizes, load_weights, split3


def unpermute(n_heads: int) -> Transform:
    """Undo llama.cpp's convert-time permutation of Q/K rows, made for its interleaved RoPE kernel;
    the core uses transformers' rotate-half layout."""

    def transform(t: torch.Tensor) -> list[torch.Tensor]:
        shape = t.shape
        # llama.cpp wrote rows as (head, half, i) -> (head, i, half); swap back
        return [t.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)]

    return transform


def gguf_rules(cfg: ModelConfig) -> list[Rule]:
    B = r"blk\.(\d+)\."
    rules = [
        Rule(r"token_embd\.weight", ("embed.weight",)),
        Rule(B + r"attn_norm\.(weight|bias)", (r"blocks.\1.attn_norm.\2",)),
        Rule(B + r"attn_output\.(weight|bias)", (r"blocks.\1.attn.wo.\2",)),
        Rule(B + r"ffn_norm\.(weight|bias)", (r"blocks.\1.mlp_norm.\2",)),
        Rule(B + r"ffn_(gate|up|down)\.(weight|bias)", (r"blocks.\1.mlp.w_\2.\3",)),
        Rule(r"output_norm\.(weight|bias)", (r"norm.\1",)),
        Rule(r"output\.weight", ("lm_head.weight",)),
    ]
    if cfg.family == "gpt2":
        rules += [
            Rule(r"position_embd\.weight", ("pos_embed.weight",)),
            Rule(B + r"attn_qkv\.(weight|bias)",
                 (r"blocks.\1.attn.wq.\2", r"blocks.\1.attn.wk.\2", r"blocks.\1.attn.wv.\2"), split3(0)),
        ]
    elif cfg.family == "llama":
        rules += [
            Rule(B + r"attn_q\.weight", (r"blocks.\1.attn.wq.weight",), unpermute(cfg.n_heads)),
            Rule(B + r"attn_k\.weight", (r"blocks.\1.attn.wk.weight",), unpermute(cfg.n_kv_heads)),
            Rule(B + r"attn_v\.weight", (r"blocks.\1.attn.wv.weight",)),
            Rule(B + r"attn_(q|k|v)\.bias", (r"blocks.\1.attn.w\2.bias",)),
        ]
    else:  # qwen2 / qwen3: llama.cpp does not permute these
        rules += [
            Rule(B + r"attn_(q|k|v)\.(weight|bias)", (r"blocks.\1.attn.w\2.\3",)),
            Rule(B + r"attn_(q|k)_norm\.weight", (r"blocks.\1.attn.\2_norm.weight",)),
        ]
    return rules


def load_gguf(path: Path) -> tuple[Decoder, Tokenizer, str]:
    f = GGUFFile(path)
    if "rope_freqs.weight" in f.tensors:
        raise unsupported("GGUF files with rope_freqs (Llama 3.1 rope scaling); load the HF directory instead")
    name = str(f.metadata.get("general.name") or path.stem)
    try:
        cfg = ModelConfig.from_gguf_metadata(f.metadata, has_output_weight="output.weight" in f.tensors, name=name)
        tokenizer = Tokenizer.from_gguf_metadata(f.metadata)
    except UnsupportedModelError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, OverflowError) as e:
        problem = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise GGUFFormatError(f"{path}: metadata does not describe a usable model ({problem})") from e
    check_sizes(cfg, {k: t.shape for k, t in f.tensors.items()}, path)
    # numpy releases the GIL while dequantizing: the tensors decode in parallel
    with ThreadPoolExecutor() as pool:
        arrays = dict(zip(f.tensors, pool.map(f.dequantize, f.tensors)))
    rules = gguf_rules(cfg)
    decoder = load_weights(cfg, list(arrays), lambda k: torch.from_numpy(arrays.pop(k)), rules)
    keep_packed(decoder, f, rules)
    return decoder, tokenizer, name


def keep_packed(decoder: Decoder, f: GGUFFile, rules: list[Rule]) -> None:
    """Give each Linear whose weight was Q4_1 / Q8_0 in the file those blocks too, moved through the same rule
    (decoding then reads them: see model/quantized.py). Nothing is kept where the kernels cannot be built."""
    if kernels.extension() is None:
        return
    modules = dict(decoder.named_modules())
    for name, info in f.tensors.items():
        packed = PackedWeight.from_gguf(f.raw(name), info.qtype) if len(info.shape) == 2 else None
        rule, match = next(((r, m) for r in rules if (m := re.fullmatch(r.source, name))), (None, None))
        if packed is None or rule is None:
            continue
        parts = packed.rows_transformed(rule.transform) if rule.transform else [packed]
        for target, part in zip(rule.targets, parts):
            owner = match.expand(target).rsplit(".", 1)[0]
            if owner == "lm_head" or (owner == "embed" and decoder.lm_head is None):
                decoder.head_packed = part  # the output matrix (tied: the embedding, whose lookups stay dense)
            elif owner != "embed":
                modules[owner].packed = part
    fuse_packed(decoder)


def fuse_packed(decoder: Decoder) -> None:
    """Stack the packed rows of linears that read the same input (q, k, v; gate, up) into one matrix, so a decoding
    step makes one kernel call for them; each linear keeps a view of its own rows."""
    groups = [(m, "qkv_packed", (m.wq, m.wk, m.wv)) for m in decoder.modules() if isinstance(m, Attention)]
    groups += [(m, "gate_up_packed", (m.w_gate, m.w_up)) for m in decoder.modules() if isinstance(m, MLP) and m.gated]
    for module, attr, linears in groups:
        parts = [linear.packed for linear in linears]
        if any(p is None for p in parts) or len({(p.kind, p.shape[1]) for p in parts}) > 1:
            continue
        fused = PackedWeight.stacked(parts)
        setattr(module, attr, fused)
        start = 0
        for linear in linears:
            linear.packed = fused.row_slice(start, start + linear.out_features)
            start += linear.out_features
