"""A model with random weights from a config alone, for showing an architecture's shapes and mechanics (e.g.
Mixture-of-Experts routing) where no checkpoint fits the machine. Its text is noise; say so wherever it is shown."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..decoder import Decoder, Norm

RANDOM_PREFIX = "random:"
ASSETS = Path(__file__).resolve().parents[2] / "assets"


def config_path(spec: str) -> Path:
    """`random:deepseek-v3-mini` names assets/deepseek-v3-mini.config.json; `random:path/config.json` any file."""
    name = spec.removeprefix(RANDOM_PREFIX)
    path = Path(name) if name.endswith(".json") else ASSETS / f"{name}.config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config for a random model at {path}")
    return path


def random_decoder(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """Weights drawn as in pretraining initialisation (normal, std 0.02), norms at 1, a small router bias."""
    generator = torch.Generator().manual_seed(seed)
    decoder = Decoder(cfg)
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, Norm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, 0.02, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        for name, buffer in decoder.named_buffers():
            if name.endswith("router_bias"):
                buffer.normal_(0.0, 0.01, generator=generator)
    return decoder


def load_random(spec: str) -> tuple[Decoder, ModelConfig, str]:
    path = config_path(spec)
    cfg = ModelConfig.from_hf_config(json.loads(path.read_text()), name=path.name.removesuffix(".config.json"))
    return random_decoder(cfg), cfg, f"{cfg.name} (random weights)"
