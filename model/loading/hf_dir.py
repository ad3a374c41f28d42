"""Loading a Hugging Face model directory: config.json, single or sharded *.safetensors, tokenizer.json.
Pickle checkpoints (.bin/.pt) are refused: unpickling can run arbitrary code."""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import ModelConfig, UnsupportedModelError, unsupported
from ..decoder import Decoder
from ..tokenizer import Tokenizer
from .hf_tokenizer import hf_tokenizer
from .weights import WeightLoadError, check_sizes, hf_rules, load_weights

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
        try:
            files = sorted({folder / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ValueError(f"{index} is not a valid shard index: {type(e).__name__}: {e}") from e
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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # invalid JSON or UTF-8; arrays nested thousands deep
        raise ValueError(f"{path} is not valid JSON: {type(e).__name__}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}, not an object")
    return raw


def load_hf_dir(folder: Path) -> tuple[Decoder, Tokenizer, str]:
    raw = read_config(folder)
    name = str(raw.get("_name_or_path") or folder.name)
    try:
        cfg = ModelConfig.from_hf_config(raw, name=name)
    except UnsupportedModelError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError, OverflowError) as e:
        problem = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{folder / 'config.json'} is not a valid config ({problem})") from e
    try:
        tokenizer = hf_tokenizer(folder)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # e.g. bad UTF-8 or JSON
        raise ValueError(f"{folder}: malformed tokenizer files ({type(e).__name__}: {e})") from e
    except Exception as e:
        if type(e) is not Exception:
            raise
        # the tokenizers library raises a bare Exception for a tokenizer.json it cannot parse
        raise ValueError(f"{folder / 'tokenizer.json'} cannot be read: {e}") from e
    rules, ignore = hf_rules(cfg)
    with ExitStack() as stack:
        handles, shapes, paths = {}, {}, {}
        for f in safetensors_files(folder):
            try:
                handle = stack.enter_context(safe_open(str(f), framework="pt"))
                file_shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
            except SafetensorError as e:
                raise WeightLoadError(f"{f} is not a valid safetensors file: {e}") from e
            for key in file_shapes:
                if key in handles:
                    raise WeightLoadError(f"tensor {key} appears in more than one shard")
                handles[key], paths[key] = handle, f
            shapes |= file_shapes
        if any(k.endswith("weight_scale_inv") for k in handles):
            raise unsupported("FP8 block-quantized checkpoints (weight_scale_inv tensors); use a bf16 conversion")
        check_sizes(cfg, shapes, folder / "config.json")

        def get(key: str) -> torch.Tensor:
            try:
                t = handles[key].get_tensor(key)
            except SafetensorError as e:
                raise WeightLoadError(f"{paths[key]}: tensor {key} cannot be read: {e}") from e
            if not t.is_floating_point():  # e.g. int32 bytes where floats belong: converting would be garbage
                raise WeightLoadError(f"{paths[key]}: tensor {key} has dtype {t.dtype}, not a floating-point type")
            return t

        decoder = load_weights(cfg, list(handles), get, rules, ignore)
    return decoder, tokenizer, name
