"""Turning logits into a token: temperature, top-k, top-p, greedy; with a per-call torch.Generator so that
no two users share random state. Returns what was kept, so the explorer can show what the sampler cut."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

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
    """logits [vocab] float32 -> Sample. Order as transformers: temperature, then top-k, then top-p (see Samples)."""
    s = Samples.of(logits[None], [settings], [generator])
    return Sample(s.token_ids[0], s.probs[0], s.final_probs[0], s.kept[0])


@dataclass(frozen=True)
class Samples:
    """Sample's fields for B rows at once: token_ids [B]; probs, final_probs, kept [B, vocab]; and the float32
    logits they came from."""

    token_ids: list[int]
    probs: torch.Tensor
    final_probs: torch.Tensor
    kept: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, settings: Sequence[SamplerSettings],
           generators: Sequence[torch.Generator | None]) -> "Samples":
        """Row r of logits [B, vocab] sampled with settings[r] and generators[r]. The rows go through each operation
        together (a batched decoding step samples 16 rows in the operations of one), and every operation computes a
        row the same way whatever rows are beside it (sums: row_sums), so a row draws the same token alone or
        batched."""
        logits = logits.float()
        probs = torch.softmax(logits, dim=-1)
        greedy = [r for r, s in enumerate(settings) if s.is_greedy]
        if len(greedy) == len(settings):  # every row greedy (a lesson's run): nothing to scale, cut or draw
            top = torch.argmax(logits, dim=-1)
            kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top[:, None], True)
            return cls(top.tolist(), probs, kept.float(), kept, logits)
        temperature = torch.tensor([1.0 if s.is_greedy else s.temperature for s in settings])
        scaled = logits / temperature[:, None]
        kept = torch.ones_like(scaled, dtype=torch.bool)
        # the rows with cuts, by how many candidates they look at (most likely first): top-k needs only the k best;
        # top-p alone the smallest prefix holding top_p of the mass, usually a few hundred tokens (sorting the whole
        # vocabulary would cost more than the rest of a decoding step's sampling)
        groups: dict[int, list[int]] = {}
        for r, s in enumerate(settings):
            if not s.is_greedy and (s.top_k or s.top_p < 1.0):
                groups.setdefault(min(s.top_k or TOP_P_CANDIDATES, scaled.shape[1]), []).append(r)
        for candidates, rows in groups.items():
            whole = len(rows) == len(settings)  # all rows alike (as usual): no copies in and out
            cut = _cuts(scaled if whole else scaled[rows], [settings[r] for r in rows], candidates)
            kept = cut if whole else kept.index_put_((torch.tensor(rows),), cut)
        final = torch.softmax(scaled.masked_fill(~kept, float("-inf")), dim=-1)
        tokens: dict[int, int] = {}
        if greedy:
            top = torch.argmax(logits[greedy], dim=-1)
            kept[greedy] = False
            kept[greedy, top] = True
            final[greedy] = kept[greedy].float()
            tokens = dict(zip(greedy, top.tolist()))
        ids = [tokens[r] if r in tokens else _draw(final[r], kept[r], generators[r]) for r in range(len(settings))]
        return cls(ids, probs, final, kept, logits)


def _cuts(scaled: torch.Tensor, settings: list[SamplerSettings], candidates: int) -> torch.Tensor:
    """kept [G, vocab] for G rows of scaled logits that keep at most `candidates` tokens each (top-k, then top-p)."""
    sorted_logits, order = torch.topk(scaled, candidates)
    top_k = torch.tensor([bool(s.top_k) for s in settings])
    # top-p renormalises over the top-k where there is one, else over the whole vocabulary
    log_total = torch.where(top_k, row_logsumexp(sorted_logits), row_logsumexp(scaled))
    keep_sorted = torch.ones_like(sorted_logits, dtype=torch.bool)
    top_p = torch.tensor([s.top_p if s.top_p < 1.0 else math.inf for s in settings])
    if torch.isfinite(top_p).any():
        sorted_probs = torch.exp(sorted_logits - log_total[:, None])
        short = (~top_k & (row_sums(sorted_probs) < top_p)).nonzero().flatten().tolist()
        # keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        keep_sorted &= mass_before < top_p[:, None]
        keep_sorted[:, 0] = True
        kept = torch.zeros_like(scaled, dtype=torch.bool).scatter_(1, order, keep_sorted)
        for g in short:  # a nucleus wider than the candidates (a nearly flat distribution): the whole row, sorted
            kept[g] = _cuts(scaled[g : g + 1], [settings[g]], scaled.shape[1])[0]
        return kept
    keep_sorted[:, 0] = True
    return torch.zeros_like(scaled, dtype=torch.bool).scatter_(1, order, keep_sorted)


def row_sums(x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """x [B, n] summed along each row, [B], each row's sum the same bits whatever B is. (A plain x.sum(-1) splits a
    single long row between threads but keeps each of many rows on one, so one row alone and the same row among
    others sum in different orders.) Here every row is summed in chunks, each chunk on one thread, then the chunks."""
    pad = -x.shape[1] % chunk
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.view(x.shape[0], -1, chunk).sum(-1).sum(-1)


def row_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(x))) of each row of x [B, n], as row_sums adds."""
    top = x.max(dim=-1, keepdim=True).values
    return top[:, 0] + torch.log(row_sums(torch.exp(x - top)))


def _draw(final: torch.Tensor, kept: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from `final` by inverting its cumulative distribution over the kept tokens (torch.multinomial over
    the whole vocabulary costs as much as the rest of a decoding step's sampling)."""
    candidates = kept.nonzero().flatten()
    cdf = torch.cumsum(final[candidates], dim=0)
    u = torch.rand((), generator=generator) * cdf[-1]
    i = min(int(torch.searchsorted(cdf, u, right=True)), candidates.shape[0] - 1)
    return int(candidates[i])


def entropy(probs: torch.Tensor) -> float:
    """Shannon entropy in nats of probs [vocab]."""
    return float(entropies(probs[None])[0])


def entropies(probs: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy in nats of each row of probs [B, vocab] (as row_sums adds); given the logits they are the
    softmax of, from log_softmax (one vectorised pass, where torch.special.entr's log is not vectorised)."""
    if logits is None:
        return row_sums(torch.special.entr(probs))  # -p log p, with 0 for p = 0
    return -row_sums(probs * torch.log_softmax(logits.float(), dim=-1))
