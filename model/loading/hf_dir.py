"""Loading a Hugging Face model directory: config.json, single or sharded *.safetensors, tokenizer.json.
Pickle checkpoints (.bin/.pt) are refused: unpickling can run arbitrary code."""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from safetensors import safe_open

from ..config import ModelConfig, unsupported
from ..decoder import Decoder
from ..tokenizer import Tokenizer
from .weights import WeightLoadError, hf_rules, load_weights

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class PickleRefusedError(ValueError):
    """A checkpoint in a pickle-based format; the project never unpickles."""


def refuse_pickle(path: Path) -> PickleRefusedError:
    return PickleRefusedError(
        f"{path} is a pickle-based checkpoint, which can run arbitrary code when loaded; it is refused. "
        "Use the model's .safetensors (or GGUF) files instead, or convert it once in a trusted environment."
    )


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are not in {folder}: {missing}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = [f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise refuse_pickle(pickles[0])
    raise FileNotFoundError(f"no *.safetensors weights in {folder}")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model directory")
    return json.loads(path.read_text())


def load_hf_dir(folder: Path) -> tuple[Decoder, Tokenizer, str]:
    raw = read_config(folder)
    name = raw.get("_name_or_path") or folder.name
    cfg = ModelConfig.from_hf_config(raw, name=name)
    tokenizer = Tokenizer.from_hf_dir(folder)
    rules, ignore = hf_rules(cfg)
    with ExitStack() as stack:
        handles = {}
        for f in safetensors_files(folder):
            handle = stack.enter_context(safe_open(str(f), framework="pt"))
            for key in handle.keys():
                if key in handles:
                    raise WeightLoadError(f"tensor {key} appears in more than one shard")
                handles[key] = handle
        if any(k.endswith("weight_scale_inv") for k in handles):
            raise unsupported("FP8 block-quantized checkpoints (weight_scale_inv tensors); use a bf16 conversion")
        decoder = load_weights(cfg, list(handles), lambda k: handles[k].get_tensor(k), rules, ignore)
    return decoder, tokenizer, name
