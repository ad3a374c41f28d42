"""Pure layer math: the fused attention path equals the eager one that returns probabilities; the KV cache."""
from __future__ import annotations

import pytest
import torch

from model.cache import KVCache
from model.layers import attention, attention_mask, repeat_kv


@pytest.mark.parametrize("n_q,n_k,window", [(7, 7, None), (1, 9, None), (3, 9, None), (8, 8, 3), (1, 9, 4)])
def test_sdpa_and_eager_attention_agree(n_q, n_k, window):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, n_q, 16, generator=g)
    k = torch.randn(1, 2, n_k, 16, generator=g)
    v = torch.randn(1, 2, n_k, 16, generator=g)
    positions = torch.arange(n_k - n_q, n_k)
    fast, none = attention(q, k, v, positions, 0.25, window, need_probs=False)
    eager, probs = attention(q, k, v, positions, 0.25, window, need_probs=True)
    assert none is None
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
    assert probs.shape == (1, 6, n_q, n_k)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 6, n_q))
    assert torch.all(probs[..., ~attention_mask(positions, n_k, window)] == 0)


def test_sliding_window_mask():
    mask = attention_mask(torch.arange(5), 5, window=2)
    assert mask.int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_repeat_kv_serves_groups_of_query_heads():
    x = torch.arange(2 * 3).float().view(1, 2, 3, 1)
    y = repeat_kv(x, 3)
    assert y.shape == (1, 6, 3, 1)
    assert torch.equal(y[0, 0], y[0, 2]) and torch.equal(y[0, 3], x[0, 1])


def test_kv_cache_grows_and_keeps_contents():
    cache = KVCache(n_layers=1, initial_capacity=2)
    chunks = [torch.randn(1, 2, n, 4) for n in (2, 1, 3)]
    for c in chunks:
        k, v = cache.update(0, c, c * 2)
        cache.advance(c.shape[2])
    torch.testing.assert_close(k, torch.cat(chunks, 2))
    torch.testing.assert_close(v, torch.cat(chunks, 2) * 2)
    assert cache.length == 6 and cache.capacity >= 6
