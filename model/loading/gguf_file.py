"""Loading a GGUF file: metadata -> config and tokenizer, tensors dequantized to float32 by the `gguf`
package, llama.cpp's Q/K row permutation undone (anchor: transformers' GGUF tensor table). The quantized matrices
are also offered as stored, for the fast paths that compute from them (model/fast)."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import gguf
import torch

from ..config import ModelConfig, UnsupportedModelError, unsupported
from ..decoder import Decoder
from ..fast import StoredMatrix
from ..tokenizer import Tokenizer
from .gguf_reader import GGUFFile, GGUFFormatError
from .gguf_tokenizer import gguf_tokenizer
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


FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)


def load_gguf(path: Path) -> tuple[Decoder, Tokenizer, str, dict[str, StoredMatrix]]:
    f = GGUFFile(path)
    if "rope_freqs.weight" in f.tensors:
        raise unsupported("GGUF files with rope_freqs (Llama 3.1 rope scaling); load the HF directory instead")
    name = str(f.metadata.get("general.name") or path.stem)
    try:
        cfg = ModelConfig.from_gguf_metadata(f.metadata, has_output_weight="output.weight" in f.tensors, name=name)
        tokenizer = gguf_tokenizer(f.metadata)
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
    return decoder, tokenizer, name, stored_matrices(f, rules)


def stored_matrices(f: GGUFFile, rules: list[Rule]) -> dict[str, StoredMatrix]:
    """Every quantized 2-D tensor of the file by the parameter name its rule fills, read on demand. The rule's
    transform moves whole rows (llama.cpp's Q/K permutation, a fused QKV split), so it applies to the stored rows of
    blocks as it did to the float32 rows."""
    out = {}
    for name, info in f.tensors.items():
        rule, match = next(((r, m) for r in rules if (m := re.fullmatch(r.source, name))), (None, None))
        if len(info.shape) != 2 or info.qtype in FLOAT_TYPES or rule is None:
            continue
        for i, target in enumerate(rule.targets):
            out[match.expand(target)] = StoredMatrix(info.qtype, partial(_stored_rows, f, name, rule.transform, i))
    return out


def _stored_rows(f: GGUFFile, name: str, transform: Transform | None, part: int) -> torch.Tensor:
    raw = torch.from_numpy(f.raw(name).copy())
    return transform(raw)[part].contiguous() if transform is not None else raw
