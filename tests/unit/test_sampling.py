"""The sampler: greedy, temperature, top-k, top-p, what it keeps, seeded reproducibility, invalid settings."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from model.sampling import GREEDY_BELOW_TEMPERATURE, SamplerSettings, entropy, sample

LOGITS = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, -1.0])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_and_temperature_zero_pick_argmax():
    for settings in (SamplerSettings(greedy=True), SamplerSettings(temperature=0.0)):
        s = sample(LOGITS, settings, gen())
        assert s.token_id == 0 and s.kept.sum() == 1 and s.final_probs[0] == 1


@pytest.mark.parametrize("temperature", [1e-38, 1e-45, GREEDY_BELOW_TEMPERATURE / 2])
def test_a_temperature_below_the_floor_acts_as_greedy(temperature):
    """Dividing by a temperature near 1e-37 overflowed float32: softmax was NaN and every step drew the last token of
    the vocabulary with p = 0."""
    logits = torch.randn(49152, generator=gen(3)) * 3
    settings = SamplerSettings(temperature=temperature, top_k=0, top_p=1.0)
    assert settings.is_greedy
    for seed in range(3):
        s = sample(logits, settings, gen(seed))
        assert s.token_id == int(torch.argmax(logits)) and s.final_probs[s.token_id] == 1
    assert not SamplerSettings(temperature=GREEDY_BELOW_TEMPERATURE).is_greedy


def test_model_distribution_is_softmax_of_logits_whatever_the_settings():
    s = sample(LOGITS, SamplerSettings(temperature=0.5, top_k=2), gen())
    torch.testing.assert_close(s.probs, torch.softmax(LOGITS, -1))


def test_top_k_keeps_k_and_renormalises_with_temperature():
    s = sample(LOGITS, SamplerSettings(temperature=2.0, top_k=3), gen())
    assert s.kept.tolist() == [True, True, True, False, False, False]
    expected = torch.softmax(LOGITS[:3] / 2.0, -1)
    torch.testing.assert_close(s.final_probs[:3], expected)
    assert s.final_probs[3:].sum() == 0 and s.token_id in (0, 1, 2)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.softmax(LOGITS, -1)
    cumulative = torch.cumsum(probs, -1)
    p = float(cumulative[1]) + 1e-3  # needs the third token to pass p
    s = sample(LOGITS, SamplerSettings(top_p=p), gen())
    assert s.kept.tolist() == [True, True, True, False, False, False]
    assert sample(LOGITS, SamplerSettings(top_p=1e-6), gen()).kept.tolist() == [True] + [False] * 5


def test_sampling_frequencies_follow_the_final_distribution():
    settings = SamplerSettings(temperature=1.0, top_k=2)
    g = gen(1)
    counts = torch.zeros(6)
    for _ in range(2000):
        counts[sample(LOGITS, settings, g).token_id] += 1
    expected = torch.softmax(LOGITS[:2], -1)
    assert counts[2:].sum() == 0
    assert abs(counts[0] / 2000 - expected[0]) < 0.04


def test_same_seed_same_tokens_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = [sample(LOGITS, SamplerSettings(), g).token_id for g in [gen(5)] for _ in range(20)]
    b = [sample(LOGITS, SamplerSettings(), g).token_id for g in [gen(5)] for _ in range(20)]
    assert a == b
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(temperature=math.nan), dict(temperature=math.inf),
                                    dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=math.nan)])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SamplerSettings(**kwargs)


def test_entropy():
    assert entropy(torch.tensor([1.0, 0.0])) == 0
    assert entropy(torch.full((4,), 0.25)) == pytest.approx(math.log(4))


def reference_kept(logits: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """The cuts computed the plain way: sort the whole vocabulary."""
    scaled = logits / s.temperature
    sorted_logits, order = torch.sort(scaled, descending=True)
    keep = torch.ones_like(sorted_logits, dtype=torch.bool)
    if s.top_k:
        keep[s.top_k:] = False
    if s.top_p < 1.0:
        probs = torch.softmax(sorted_logits.masked_fill(~keep, float("-inf")), -1)
        keep &= torch.cumsum(probs, -1) - probs < s.top_p
    keep[0] = True
    return torch.empty_like(keep).scatter_(0, order, keep)


@pytest.mark.parametrize("scale", [8.0, 3.0, 0.05])  # peaked, typical, nearly flat (nucleus of ~45k tokens)
@pytest.mark.parametrize("top_k,top_p", [(50, 0.95), (0, 0.9), (0, 0.5), (2000, 0.99), (0, 1.0)])
def test_cuts_match_a_full_sort_on_a_real_vocabulary(scale, top_k, top_p):
    logits = torch.randn(49152, generator=gen(7)) * scale
    settings = SamplerSettings(temperature=0.8, top_k=top_k, top_p=top_p)
    s = sample(logits, settings, gen())
    reference = reference_kept(logits, settings)
    # the two may differ only on a token whose mass before it equals top_p to float rounding
    differ = (s.kept != reference).nonzero().flatten()
    scaled = logits / settings.temperature
    probs = torch.softmax(scaled.masked_fill(reference_kept(logits, replace(settings, top_p=1.0)) == 0, float("-inf")), -1)
    for token in differ.tolist():
        assert abs(float(probs[probs > probs[token]].sum()) - top_p) < 1e-5
    assert len(differ) <= 1 and s.kept.sum() > 0 and s.kept[s.token_id]


def test_rows_sampled_together_get_what_each_gets_alone():
    """A batched decoding step samples all its rows in one set of operations (Samples.of): greedy, temperature only,
    top-k, top-p with a nucleus wider than its first candidates (a nearly flat row), top-k with top-p. Each row's
    token, distributions and kept set are the bits it gets alone, whatever rows are beside it."""
    from model.sampling import Samples, entropies, row_sums

    logits = torch.randn(6, 49152, generator=gen(11)) * torch.tensor([[3.0], [3.0], [8.0], [0.05], [3.0], [1.0]])
    settings = [SamplerSettings(greedy=True), SamplerSettings(temperature=0.7),
                SamplerSettings(temperature=1.0, top_k=50), SamplerSettings(temperature=1.0, top_p=0.9),
                SamplerSettings(temperature=0.8, top_k=40, top_p=0.8), SamplerSettings(temperature=1.3, top_p=0.5)]
    together = Samples.of(logits, settings, [gen(r) for r in range(6)])
    assert int(together.kept[3].sum()) > 1024  # the wide nucleus really left the first candidates
    for rows in ([0, 1, 2, 3, 4, 5], [5, 3], [2]):
        part = Samples.of(logits[rows], [settings[r] for r in rows], [gen(r) for r in rows])
        for i, r in enumerate(rows):
            alone = Samples.of(logits[r : r + 1], [settings[r]], [gen(r)])
            assert alone.token_ids[0] == part.token_ids[i] == together.token_ids[r]
            for name in ("probs", "final_probs", "kept"):
                assert torch.equal(getattr(alone, name)[0], getattr(part, name)[i]), (name, r)
                assert torch.equal(getattr(alone, name)[0], getattr(together, name)[r]), (name, r)
    # the sums (entropy, kept mass) too: a plain sum of one long row is split between threads, of many rows not
    terms = together.probs * logits
    for r in range(6):
        alone = entropies(together.probs[r : r + 1], logits[r : r + 1])[0]
        assert torch.equal(entropies(together.probs, logits)[r], alone)
        assert torch.equal(row_sums(terms)[r], row_sums(terms[r : r + 1])[0])


@pytest.mark.parametrize("scale", [8.0, 3.0, 0.05])
@pytest.mark.parametrize("top_k,top_p", [(50, 0.95), (0, 0.9), (5, 1.0), (0, 1.0)])
def test_the_draw_is_the_whole_vocabularys_inverse_cdf(scale, top_k, top_p):
    """The sampler computes among its candidates only (model/sampling.py: _rows); what it draws is what the plain
    way draws: the distribution over the whole vocabulary with the cut tokens at 0, inverted at u in token id order,
    u from the row's generator. Rows and seeds vary, so a draw in another order (most likely first) would differ."""
    from model.sampling import Samples

    settings = [SamplerSettings(temperature=t, top_k=top_k, top_p=top_p) for t in (0.7, 1.0, 1.4)]
    logits = torch.randn(len(settings), 49152, generator=gen(5)) * scale
    for seed in range(8):
        got = Samples.of(logits, settings, [gen(seed * 10 + r) for r in range(len(settings))], [20] * len(settings))
        for r, s in enumerate(settings):
            kept = reference_kept(logits[r], s)
            final = torch.softmax((logits[r] / s.temperature).masked_fill(~kept, float("-inf")), -1)
            cdf = torch.cumsum(final, 0)
            u = torch.rand((), generator=gen(seed * 10 + r)) * cdf[-1]
            token = min(int(torch.searchsorted(cdf, u, right=True)), int(kept.nonzero()[-1]))
            assert got.token_ids[r] == token, (seed, s)
            row = got.rows[r]
            assert row.n_kept == int(kept.sum()) and row.top_ids == torch.topk(logits[r], 20).indices.tolist()
            assert row.sampled_prob == pytest.approx(float(final[token]), rel=1e-5, abs=1e-12)
            assert row.kept_mass == pytest.approx(float(torch.softmax(logits[r], -1)[kept].sum()), rel=1e-5)
            assert row.top_kept == kept[row.top_ids].tolist()
            torch.testing.assert_close(torch.tensor(row.top_sampled_probs), final[row.top_ids], rtol=1e-5, atol=1e-12)


def test_a_draw_at_the_total_takes_the_last_kept_candidate():
    """Where u reaches the cumulative total (rounding; here every kept probability is 0), the draw takes the last
    kept candidate in id order, never a cut one."""
    from model.sampling import _draw

    ids = torch.tensor([[3, 1, 2, 0]])
    kept = torch.tensor([[False, True, True, False]])
    at = _draw(ids, torch.zeros(1, 4), kept, [gen()])
    assert int(ids[0, at[0]]) == 2
