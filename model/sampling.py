"""Turning logits into a token: temperature, top-k, top-p, greedy; with a per-call torch.Generator so that
no two users share random state. Returns what was kept, so the explorer can show what the sampler cut."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from . import kernels


# sample_rows from the compiled kernels where built (tests compare the two)
_COMPILED = True
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
class Row:
    """One row's sample and what a Step shows of it. The sampler works among the row's candidates only, the tokens its
    cuts can keep: greedy, the argmax; top-k, the k most likely; top-p alone, the TOP_P_CANDIDATES most likely, or
    the whole vocabulary sorted where the nucleus is wider; no cut, the whole vocabulary in id order. (A top-k row's
    ids go on to its top-n where n > k: not kept.)"""
    token_id: int
    probs: torch.Tensor  # [vocab] the model's distribution, softmax(logits)
    ids: torch.Tensor  # [K] the candidates
    final: torch.Tensor  # [K] their probabilities in the distribution sampled from (after temperature and cuts)
    kept: torch.Tensor  # [K] bool: left in by the cuts
    prob: float  # the token's in probs
    entropy: float  # of probs, nats
    sampled_prob: float  # the token's in `final`
    n_kept: int
    kept_mass: float  # the model's probability mass of the kept tokens
    top_ids: list[int]  # the row's top-n, most likely first
    top_probs: list[float]
    top_sampled_probs: list[float]
    top_kept: list[bool]


@dataclass(frozen=True)
class Samples:
    """B rows sampled at once: token_ids [B] and each Row. Rows whose candidates are alike go through each operation
    together, and every operation computes a row the same way whatever rows are beside it (sums: row_sums), so a row
    draws the same token alone or batched. Only softmax, the entropy and the candidates' choice read the whole
    vocabulary (16 rows of 49,152: 15 -> 6.6 ms on one thread); probs, final_probs and kept [B, vocab] are made when
    asked."""
    token_ids: list[int]
    rows: list[Row]

    @classmethod
    def of(cls, logits: torch.Tensor, settings: Sequence[SamplerSettings], generators: Sequence[torch.Generator | None],
           top_n: Sequence[int] | None = None) -> "Samples":
        """Row r of logits [B, vocab] sampled with settings[r] and generators[r]; top_n[r] (default 1): how many of
        its most likely tokens its Row describes. Order as transformers: temperature, then top-k, then top-p."""
        logits = logits.float()
        vocab = logits.shape[1]
        groups: dict[tuple[int, int], list[int]] = {}
        for r, s in enumerate(settings):
            groups.setdefault((_looks_at(s, vocab), min(top_n[r] if top_n else 1, vocab)), []).append(r)
        rows: list[Row] = [None] * len(settings)  # type: ignore[list-item]
        for (looks, n), members in groups.items():
            part = logits if len(members) == len(settings) else logits[members]  # one group (as usual): no copy
            for r, row in zip(members, _rows(part, [settings[r] for r in members], [generators[r] for r in members],
                                             looks, n)):
                rows[r] = row
        return cls([row.token_id for row in rows], rows)

    @property
    def probs(self) -> torch.Tensor:
        """[B, vocab] the model's distributions."""
        return torch.stack([r.probs for r in self.rows])

    @property
    def final_probs(self) -> torch.Tensor:
        """[B, vocab] the distributions sampled from, 0 where cut."""
        return self._over_vocabulary("final")

    @property
    def kept(self) -> torch.Tensor:
        """[B, vocab] bool, the tokens each sampler left in."""
        return self._over_vocabulary("kept")

    def _over_vocabulary(self, name: str) -> torch.Tensor:
        """Each Row's candidates' `name` at their ids in [B, vocab], zero elsewhere."""
        values = torch.cat([getattr(r, name) for r in self.rows])
        where = (torch.cat([torch.full_like(r.ids, i) for i, r in enumerate(self.rows)]),
                 torch.cat([r.ids for r in self.rows]))
        return values.new_zeros(len(self.rows), self.rows[0].probs.shape[0]).index_put_(where, values)


def _looks_at(s: SamplerSettings, vocab: int) -> int:
    """How many of a row's most likely tokens its sampler looks at: 1 greedy, top_k, TOP_P_CANDIDATES for top-p alone,
    0 for no cut (every token)."""
    if s.is_greedy:
        return 1
    if s.top_k or s.top_p < 1.0:
        return min(s.top_k or TOP_P_CANDIDATES, vocab)
    return 0


def _rows(logits: torch.Tensor, settings: list[SamplerSettings], generators: list[torch.Generator | None],
          looks: int, n: int) -> list[Row]:
    """The Rows of G rows whose samplers look at the same number of candidates (_looks_at) and describe the same
    top-n: _sample_rows' tensors, computed by the compiled kernels' copy of it where a model loaded them (the same
    operations in one call: the model thread gives up the GIL once, not ~60 times), made into Rows."""
    compiled = kernels.loaded()
    sample_rows = compiled.sample_rows if compiled is not None and _COMPILED else _sample_rows
    probs, *tensors, short = sample_rows(logits, [s.temperature for s in settings], [s.top_k for s in settings],
                                         [s.top_p for s in settings], list(generators), looks, n)
    ids, final, kept = tensors[3:6]
    names = ("entropy", "prob", "top_probs", "token_id", "sampled_prob", "n_kept", "kept_mass", "top_ids",
             "top_sampled_probs", "top_kept")
    values = [t.tolist() for t in tensors[:3] + tensors[6:]]
    rows = [Row(probs=probs[i], ids=ids[i], final=final[i], kept=kept[i], **dict(zip(names, v)))
            for i, v in enumerate(zip(*values))]
    for i in short.tolist() if looks < logits.shape[1] else []:  # the whole row, sorted
        rows[i] = _rows(logits[i : i + 1], [settings[i]], [generators[i]], logits.shape[1], n)[0]
    return rows


def _sample_rows(logits: torch.Tensor, temperatures: list[float], top_k: list[int], top_p: list[float],
                 generators: list[torch.Generator | None], looks: int, n: int) -> list[torch.Tensor]:
    """G rows' samples: probs [G, vocab], entropy, prob, top_probs, ids, final, kept, token, sampled_prob, n_kept,
    kept_mass, top, top_final, top_kept, and the rows whose nucleus is wider than their candidates (short)."""
    g, vocab = logits.shape
    probs = torch.softmax(logits, dim=-1)
    entropy = entropies(probs, logits)
    temperature = torch.tensor(temperatures)[:, None]
    short = torch.empty(0, dtype=torch.long)
    if looks == 1:  # greedy: the argmax (the first of equal maxima), kept alone
        ids = torch.argmax(logits, dim=-1, keepdim=True)
        kept = torch.ones_like(ids, dtype=torch.bool)
        final, chosen = kept.float(), torch.zeros(g, dtype=torch.long)
        top = torch.topk(logits, n).indices
        top_kept = top == ids
        top_final = top_kept.float()
    elif looks == 0:  # no cut: every token, in id order
        ids = torch.arange(vocab).expand(g, vocab)
        final = torch.softmax(logits / temperature, dim=-1)
        kept = torch.ones_like(final, dtype=torch.bool)
        chosen = _draw(None, final, kept, generators)
        top = torch.topk(logits, n).indices
        top_final, top_kept = final.gather(1, top), kept.gather(1, top)
    else:
        top_logits, ids = torch.topk(logits, max(looks, n))
        scaled = top_logits[:, :looks] / temperature
        kept = torch.zeros_like(ids, dtype=torch.bool)
        kept[:, :looks], short = _cuts(scaled, logits, temperature, top_k, top_p)
        final = torch.softmax(scaled.masked_fill(~kept[:, :looks], float("-inf")), dim=-1)
        final = torch.nn.functional.pad(final, (0, ids.shape[1] - looks))
        if len(short):  # a nucleus wider than the candidates (a nearly flat distribution): those rows, again
            live = sorted(set(range(g)) - set(short.tolist()))
            chosen = torch.zeros(g, dtype=torch.long)
            if live:
                rows = torch.tensor(live)
                chosen[rows] = _draw(ids[rows], final[rows], kept[rows], [generators[i] for i in live])
        else:
            chosen = _draw(ids, final, kept, generators)
        top, top_final, top_kept = ids[:, :n], final[:, :n], kept[:, :n]
    mass = row_sums(probs.gather(1, ids) * kept) if looks else row_sums(probs)
    token = ids.gather(1, chosen[:, None])[:, 0]
    return [probs, entropy, probs.gather(1, token[:, None])[:, 0], probs.gather(1, top), ids, final, kept, token,
            final.gather(1, chosen[:, None])[:, 0], kept.sum(-1), mass, top, top_final, top_kept, short]


def _cuts(scaled: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor, top_k: list[int],
          top_p: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """kept [G, c] for G rows of their c largest scaled logits, largest first (top-k, then top-p), and the rows whose
    nucleus (top-p without top-k) is wider than their c. Top-p renormalises over the top-k where there is one, else
    over the whole vocabulary: those rows' logits / temperature."""
    keep = torch.ones_like(scaled, dtype=torch.bool)
    top_p_ = torch.tensor([p if p < 1.0 else math.inf for p in top_p])
    short = torch.empty(0, dtype=torch.long)
    if torch.isfinite(top_p_).any():
        with_k = torch.tensor(top_k).ne(0)
        log_total = row_logsumexp(scaled)
        without_k = (~with_k).nonzero().flatten()
        if len(without_k):
            log_total[without_k] = row_logsumexp(logits[without_k] / temperature[without_k])
        sorted_probs = torch.exp(scaled - log_total[:, None])
        short = (~with_k & (row_sums(sorted_probs) < top_p_)).nonzero().flatten()
        # keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        keep &= mass_before < top_p_[:, None]
    keep[:, 0] = True
    return keep, short


def _draw(ids: torch.Tensor | None, final: torch.Tensor, kept: torch.Tensor,
          generators: list[torch.Generator | None]) -> torch.Tensor:
    """Each row's token, as its position among its candidates ids [G, K] (None: the vocabulary in id order): the
    inverse of the cumulative distribution of `final` over the kept candidates in id order, where a cut one adds 0
    (torch.multinomial over the whole vocabulary costs as much as the rest of a decoding step's sampling); where u
    reaches the total by rounding, the last kept one."""
    order = None if ids is None else ids.argsort(dim=-1)
    in_order = (lambda t: t) if order is None else (lambda t: t.gather(1, order))
    cdf = torch.cumsum(in_order(final), dim=-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]) * cdf[:, -1]
    at = torch.searchsorted(cdf, u[:, None], right=True)[:, 0]
    flags = in_order(kept).flip(-1).to(torch.uint8)
    last = kept.shape[1] - 1 - torch.argmax(flags, dim=-1)  # argmax: the first maximum
    at = torch.minimum(at, last)
    return at if order is None else order.gather(1, at[:, None])[:, 0]


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


def entropy(probs: torch.Tensor) -> float:
    """Shannon entropy in nats of probs [vocab]."""
    return float(entropies(probs[None])[0])


def entropies(probs: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy in nats of each row of probs [B, vocab] (as row_sums adds); given the logits they are the
    softmax of, from log_softmax (one vectorised pass, where torch.special.entr's log is not vectorised)."""
    if logits is None:
        return row_sums(torch.special.entr(probs))  # -p log p, with 0 for p = 0
    return -row_sums(probs * torch.log_softmax(logits.float(), dim=-1))
