"""Turning logits into a token: temperature, top-k, top-p, greedy; with a per-call torch.Generator so that
no two users share random state. Returns what was kept, so the explorer can show what the sampler cut."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1.0: no nucleus cut
    greedy: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


@dataclass(frozen=True)
class Sample:
    token_id: int
    probs: torch.Tensor  # [vocab] the model's distribution, softmax(logits)
    final_probs: torch.Tensor  # [vocab] the distribution actually sampled from (after temperature and cuts)
    kept: torch.Tensor  # [vocab] bool, tokens the sampler left in


def sample(logits: torch.Tensor, settings: SamplerSettings, generator: torch.Generator | None) -> Sample:
    """logits [vocab] float32 -> Sample. Order as transformers: temperature, then top-k, then top-p."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    if settings.is_greedy:
        token = int(torch.argmax(logits))
        kept = torch.zeros_like(probs, dtype=torch.bool)
        kept[token] = True
        return Sample(token, probs, kept.float(), kept)
    scaled = logits / settings.temperature
    sorted_logits, order = torch.sort(scaled, descending=True)
    keep_sorted = torch.ones_like(sorted_logits, dtype=torch.bool)
    if settings.top_k:
        keep_sorted[settings.top_k :] = False
    if settings.top_p < 1.0:
        sorted_probs = torch.softmax(sorted_logits.masked_fill(~keep_sorted, float("-inf")), dim=-1)
        # keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        keep_sorted &= mass_before < settings.top_p
    keep_sorted[0] = True
    kept = torch.empty_like(keep_sorted).scatter_(0, order, keep_sorted)
    final = torch.softmax(scaled.masked_fill(~kept, float("-inf")), dim=-1)
    token = int(torch.multinomial(final, 1, generator=generator))
    return Sample(token, probs, final, kept)


def entropy(probs: torch.Tensor) -> float:
    """Shannon entropy in nats."""
    p = probs[probs > 0]
    return float(-(p * p.log()).sum())
