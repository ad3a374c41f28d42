"""Turning logits into a token: temperature, top-k, top-p, greedy; with a per-call torch.Generator so that
no two users share random state. Returns what was kept, so the explorer can show what the sampler cut."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


# top-p without top-k first looks for its nucleus among this many most likely tokens
TOP_P_CANDIDATES = 1024
# a temperature below this acts as greedy: logits / temperature overflow float32 near 1e-37 (every logit ±inf, so
# softmax is NaN), and well before that sampling already is argmax (a logit gap of 0.01 at 1e-4 is a factor e^-100)
GREEDY_BELOW_TEMPERATURE = 1e-4


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
        """Greedy when asked, or when the temperature is below GREEDY_BELOW_TEMPERATURE (0 included)."""
        return self.greedy or self.temperature < GREEDY_BELOW_TEMPERATURE


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
    kept = torch.ones_like(scaled, dtype=torch.bool)
    if settings.top_k or settings.top_p < 1.0:
        # the candidates, most likely first: top-k needs only the k best; top-p alone the smallest prefix holding
        # top_p of the mass, usually a few hundred tokens: sorting the whole vocabulary would cost more than the
        # rest of a decoding step's sampling
        if settings.top_k:
            sorted_logits, order = torch.topk(scaled, min(settings.top_k, scaled.shape[0]))
            log_total = torch.logsumexp(sorted_logits, dim=-1)  # top-p then renormalises over the top-k
        else:
            log_total = torch.logsumexp(scaled, dim=-1)
            sorted_logits, order = torch.topk(scaled, min(TOP_P_CANDIDATES, scaled.shape[0]))
            if float(torch.exp(sorted_logits - log_total).sum()) < settings.top_p:
                sorted_logits, order = torch.sort(scaled, descending=True)
        keep_sorted = torch.ones_like(sorted_logits, dtype=torch.bool)
        if settings.top_p < 1.0:
            sorted_probs = torch.exp(sorted_logits - log_total)
            # keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does
            mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            keep_sorted &= mass_before < settings.top_p
        keep_sorted[0] = True
        kept = torch.zeros_like(kept).scatter_(0, order, keep_sorted)
    final = torch.softmax(scaled.masked_fill(~kept, float("-inf")), dim=-1)
    return Sample(_draw(final, kept, generator), probs, final, kept)


def _draw(final: torch.Tensor, kept: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from `final` by inverting its cumulative distribution over the kept tokens (torch.multinomial over
    the whole vocabulary costs as much as the rest of a decoding step's sampling)."""
    candidates = kept.nonzero().flatten()
    cdf = torch.cumsum(final[candidates], dim=0)
    u = torch.rand((), generator=generator) * cdf[-1]
    i = min(int(torch.searchsorted(cdf, u, right=True)), candidates.shape[0] - 1)
    return int(candidates[i])


def entropy(probs: torch.Tensor) -> float:
    """Shannon entropy in nats."""
    return float(torch.special.entr(probs).sum())  # -p log p, with 0 for p = 0
