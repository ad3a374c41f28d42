"""explorer.analysis on the real embedded model: log-probabilities against the full logits, PCA against an SVD,
nearest tokens against brute force, the vocabulary sample."""
from __future__ import annotations

import pytest
import torch

from explorer.analysis import Projection, nearest_tokens, pca, sequence_logprobs, vocabulary_sample

TEXT = "The quick brown fox jumps over the lazy dog. Tokens <script>alert(1)</script> 🎉 and\n\ttabs. "


@pytest.fixture(scope="module")
def long_trace(embedded_lm):
    ids = (embedded_lm.tokenizer.encode(TEXT) * 20)[:300]
    return embedded_lm.trace(ids)


def test_sequence_logprobs_match_the_full_logits(long_trace):
    ids = long_trace.ids
    reference = torch.log_softmax(long_trace.logits, dim=-1)  # [T, V]
    got = sequence_logprobs(long_trace)
    assert len(got) == len(ids) - 1
    # positions on both sides of the 256-row chunk boundary
    for t in (1, 2, 100, 255, 256, 257, 299):
        assert got[t - 1] == pytest.approx(reference[t - 1, ids[t]].item(), abs=1e-4)
    assert all(lp <= 0 for lp in got)
    later = sequence_logprobs(long_trace, start=5)
    assert later == pytest.approx(got[4:], abs=1e-5)


def test_sequence_logprobs_need_a_previous_token(long_trace):
    with pytest.raises(ValueError, match="no prediction"):
        sequence_logprobs(long_trace, start=0)


def _reference_pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    centred = (x - x.mean(0)).double()
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = s ** 2
    return vh[:k], variance[:k] / variance.sum()


@pytest.mark.parametrize("k", [2, 3])
def test_pca_matches_an_svd_of_embedding_rows(embedded_lm, k):
    E = embedded_lm.decoder.embed.weight
    x = E[vocabulary_sample(E.shape[0], 1500)].float()
    projection = pca(x, k)
    components, ratio = _reference_pca(x, k)
    assert isinstance(projection, Projection)
    assert projection.components.shape == (k, x.shape[1])
    cosines = (projection.components.double() * components).sum(1).abs()
    assert torch.allclose(cosines, torch.ones(k, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(projection.explained_variance_ratio.double(), ratio, rtol=1e-4)
    assert torch.allclose(projection.components @ projection.components.T, torch.eye(k), atol=1e-5)
    # sign convention: each component's largest-magnitude loading is positive
    biggest = projection.components.abs().argmax(dim=1)
    assert (projection.components.gather(1, biggest[:, None]) > 0).all()
    y = x[:7]
    expected = (y - projection.mean) @ projection.components.T
    assert torch.allclose(projection.project(y), expected, atol=1e-5)
    assert projection.project(y).shape == (7, k)


def test_pca_is_deterministic_and_handles_few_dimensions(long_trace):
    x = long_trace.hidden_states[:, :60].reshape(-1, long_trace.hidden_states.shape[-1])
    a, b = pca(x, 2), pca(x.clone(), 2)
    assert torch.equal(a.components, b.components)
    small = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    projection = pca(small, 3)
    components, ratio = _reference_pca(small, 3)
    assert torch.allclose((projection.components.double() * components).sum(1).abs(), torch.ones(3,
                          dtype=torch.float64), atol=1e-6)
    assert torch.allclose(projection.explained_variance_ratio.double(), ratio, rtol=1e-5)


def test_nearest_tokens_match_brute_force(embedded_lm):
    E = embedded_lm.decoder.embed.weight
    token = embedded_lm.tokenizer.encode(" cat")[0]
    ids, sims = nearest_tokens(E, E[token], 5)
    assert ids[0] == token and sims[0] == pytest.approx(1.0, abs=1e-5)
    brute = torch.nn.functional.cosine_similarity(E.float(), E[token].float()[None], dim=1)
    values, expected = torch.topk(brute, 6)
    assert ids == expected[:5].tolist()
    assert sims == pytest.approx(values[:5].tolist(), abs=1e-5)
    ids, sims = nearest_tokens(E, E[token], 5, exclude=[token])
    assert token not in ids
    assert ids == expected[1:6].tolist()
    assert sims == sorted(sims, reverse=True)


def test_vocabulary_sample_is_fixed_distinct_and_in_range():
    sample = vocabulary_sample(49152, 2000)
    assert sample == vocabulary_sample(49152, 2000)
    assert sample != vocabulary_sample(49152, 2000, seed=1)
    assert len(set(sample)) == 2000 and sample == sorted(sample)
    assert 0 <= sample[0] and sample[-1] < 49152
    assert vocabulary_sample(10, 50) == list(range(10))


def test_sequence_logprobs_stop_gives_the_prefix(embedded_lm):
    trace = embedded_lm.trace(embedded_lm.tokenizer.encode("The quick brown fox jumps over the lazy dog"))
    full = sequence_logprobs(trace)
    # equal up to float rounding: one position's logits may come from the packed-weight kernel, many from a matmul
    assert sequence_logprobs(trace, stop=5) == pytest.approx(full[:4], abs=1e-4)
    assert sequence_logprobs(trace, start=3, stop=7) == pytest.approx(full[2:6], abs=1e-4)
    assert sequence_logprobs(trace, start=3, stop=7) != pytest.approx(full[3:7], abs=1e-4)
