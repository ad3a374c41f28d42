"""load_model: the embedded default, a GGUF file, a Hugging Face directory, or a hub id."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..fast import accelerate
from ..lm import LanguageModel, _pick_device, default_dtype
from .embedded import EMBEDDED_HUB_ID, EMBEDDED_NAME, embedded_gguf_path
from .gguf_file import load_gguf
from .gguf_reader import GGUFFile
from .gguf_tokenizer import gguf_tokenizer
from .hf_dir import PICKLE_SUFFIXES, load_hf_dir, refuse_pickle
from .hub import fetch
from .random_init import RANDOM_PREFIX, load_random

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    source: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LanguageModel:
    """Load a model for tracing and generation.

    source: None (the embedded SmolLM2-135M-Instruct GGUF; from the hub where the package is not installed),
    a .gguf file, a Hugging Face model directory, a hub id, or `random:<config>` (random weights, see
    random_init.py; e.g. `random:deepseek-v3-mini`). device: default CUDA when available, else CPU. dtype: default bf16 on CUDA, float32 on CPU."""
    if isinstance(source, str) and source.startswith(RANDOM_PREFIX):
        decoder, cfg, name = load_random(source)
        # the embedded model's tokenizer (only its metadata is read); the config shares its vocabulary
        tokenizer = gguf_tokenizer(GGUFFile(embedded_gguf_path()).metadata)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"{source}: vocabulary {cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
        dev = _pick_device(device)
        decoder = decoder.cast(dev, resolve_dtype(dtype, dev))
        return LanguageModel(decoder, tokenizer, name=name, source=source, random_weights=True,
                             fast_paths=accelerate(decoder, {}))
    if source is None:
        try:
            path, label = embedded_gguf_path(), EMBEDDED_NAME
        except FileNotFoundError:  # e.g. on a Hugging Face Space, which installs requirements.txt only
            return load_model(EMBEDDED_HUB_ID, device, dtype)
    else:
        path, label = Path(source).expanduser(), None
    stored = {}  # matrices as the file stores them, for the fast paths
    if path.is_dir():
        decoder, tokenizer, name = load_hf_dir(path)
    elif path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise refuse_pickle(path)
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: expected a .gguf file or a Hugging Face model directory")
        decoder, tokenizer, name, stored = load_gguf(path)
    elif source is not None and HUB_ID.fullmatch(str(source)) and not str(source).endswith(".gguf"):
        decoder, tokenizer, name = load_hf_dir(fetch(str(source)))
        name = str(source)
    else:
        raise FileNotFoundError(f"no such model file or directory: {source}")
    dev = _pick_device(device)
    decoder = decoder.cast(dev, resolve_dtype(dtype, dev))
    return LanguageModel(decoder, tokenizer, name=label or name, source=str(source or path),
                         fast_paths=accelerate(decoder, stored))
