"""Shared fixtures: tiny random checkpoints written in the test, and the real embedded model (loaded once)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network, even by accident
# tests write only to temporary folders: Hypothesis keeps no example database, and its caches go to a folder removed
# at exit (set before any test runs, when Hypothesis first looks for it)
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="explorer-hypothesis-")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HYPOTHESIS_HOME.name)

import pytest
from hypothesis import settings
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

settings.register_profile("explorer", database=None)
settings.load_profile("explorer")


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE over the 256 byte symbols plus an end-of-text token; enough to run a tiny model."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))


def save_and_load(hf, folder: Path):
    """Save a transformers model with a tiny tokenizer and load it back with the core (CPU, float32)."""
    from model import load_model

    hf.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return load_model(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def embedded_lm():
    from model import load_model

    return load_model(device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def reference_lm():
    """The embedded model with every fast path left out (EXPLORER_KERNELS=0): the readable reference alone."""
    from model import load_model

    previous = os.environ.get("EXPLORER_KERNELS")
    os.environ["EXPLORER_KERNELS"] = "0"
    try:
        return load_model(device="cpu", dtype="float32")
    finally:
        if previous is None:
            del os.environ["EXPLORER_KERNELS"]
        else:
            os.environ["EXPLORER_KERNELS"] = previous
