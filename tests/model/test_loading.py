"""Source resolution: without the embedded package the default model comes from the hub id."""
from __future__ import annotations

import torch
import transformers

import model.loading as loading
from model import load_model
from tests.conftest import write_tiny_tokenizer


def test_default_model_falls_back_to_the_hub_id(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    write_tiny_tokenizer(tmp_path)
    asked = []

    def missing():
        raise FileNotFoundError("no package")

    monkeypatch.setattr(loading, "embedded_gguf_path", missing)
    monkeypatch.setattr(loading, "fetch", lambda repo: asked.append(repo) or tmp_path)
    lm = load_model(device="cpu")
    assert asked == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert lm.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and lm.config.n_layers == 1
