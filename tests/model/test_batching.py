"""Batched decoding (model/batch.py) on tiny random models of several families, through the reference blocks (no
compiled kernels: these checkpoints are neither GGUF nor bf16): sequences of different lengths advanced together in
one forward pass give each the tokens, probabilities and recorded residual stream it gets alone. Alone and together
differ only in the order of float32 sums (a product of 1 row or of 3), so values are compared within the families'
tolerance and tokens exactly (random models with peaked distributions: no near ties)."""
from __future__ import annotations

import pytest
import torch

from model import load_model
from model import batch
from model.batch import Decoding, advance
from model.interventions import HeadAblation
from tests.model.families import TOL, VOCAB, build_hf, close, save

FAMILIES = ["llama-gqa-untied", "mistral-sliding-window", "qwen3-qk-norm", "gpt2", "kimi-k2-routing"]
PROMPTS = [torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 14, 23)]
# greedy, seeded sampling with its cuts, plain seeded sampling
SETTINGS = [dict(greedy=True), dict(temperature=0.9, top_k=20, top_p=0.9, seed=3), dict(temperature=1.2, seed=11)]


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tmp_path_factory):
    return load_model(save(build_hf(request.param), tmp_path_factory.mktemp(request.param)), device="cpu",
                      dtype="float32")


def together(lm, requests: list[dict], joins: list[int], chunk: int = 8) -> list[list]:
    """Each request's Steps, the decodings advanced together as a server steps them: request i joins at step
    joins[i]; each step reads one prompt chunk of the first one still reading, advances all ready ones in one call."""
    decodings: list[Decoding | None] = [None] * len(requests)
    steps: list[list] = [[] for _ in requests]
    for n in range(1000):
        for i, r in enumerate(requests):
            if joins[i] == n:
                decodings[i] = lm.decoding(**r, chunk=chunk)
        live = [d for d in decodings if d is not None and not d.finished]
        if not live and all(d is not None for d in decodings):
            return steps
        reading = [d for d in live if d.prefilling]
        if reading:
            reading[0].prefill()
        ready = [d for d in live if d.ready]
        if ready:
            advance(ready)
        for i, d in enumerate(decodings):
            if d is not None and d.logits is not None:
                steps[i].append(d.sample())
    raise AssertionError("the decodings never finished")


def alone(lm, request: dict) -> list:
    return list(lm.generate(**request))


def same_steps(got: list, want: list) -> None:
    assert [s.token_id for s in got] == [s.token_id for s in want]
    assert [s.position for s in got] == [s.position for s in want]
    for g, w in zip(got, want):
        assert g.prob == pytest.approx(w.prob, rel=1e-4, abs=1e-6)
        assert g.top_ids[:3] == w.top_ids[:3]
    if want[-1].trace is not None:
        close(got[-1].trace.residual, want[-1].trace.residual, TOL, "recorded residual stream")


def rows_per_pass(monkeypatch) -> list[int]:
    """The number of sequences of each batched forward pass from now on."""
    sizes: list[int] = []
    real = batch.forward_rows
    monkeypatch.setattr(batch, "forward_rows",
                        lambda decoder, rows, *chunks: sizes.append(len(rows)) or real(decoder, rows, *chunks))
    return sizes


def test_sequences_together_decode_as_each_alone(lm, monkeypatch):
    sizes = rows_per_pass(monkeypatch)
    requests = [dict(prompt=p, max_new_tokens=10 + 3 * i, record=True, stop_at_eos=False, **s)
                for i, (p, s) in enumerate(zip(PROMPTS, SETTINGS))]
    got = together(lm, requests, joins=[0, 0, 4])  # the third joins while the others decode
    assert 3 in sizes and 2 in sizes
    for g, r in zip(got, requests):
        same_steps(g, alone(lm, r))


def test_a_row_with_interventions_shares_the_pass_and_keeps_its_edits(lm, monkeypatch):
    """In the layers its interventions touch, a row goes through the reference block alone, with them; it shares the
    rest of the pass with the others."""
    sizes = rows_per_pass(monkeypatch)
    ablated = dict(prompt=PROMPTS[1], max_new_tokens=8, greedy=True, record=True, stop_at_eos=False,
                   interventions=[HeadAblation(1, 2)])
    plain = {**ablated, "interventions": None}
    got = together(lm, [plain, ablated, dict(plain, prompt=PROMPTS[2])], joins=[0, 0, 0])
    assert 3 in sizes
    same_steps(got[1], alone(lm, ablated))
    same_steps(got[0], alone(lm, plain))
    assert got[1][-1].trace.interventions.items == (HeadAblation(1, 2),)
    assert [s.token_id for s in got[1]] != [s.token_id for s in alone(lm, plain)] or \
        float((got[1][-1].trace.residual - alone(lm, plain)[-1].trace.residual).abs().max()) > 1e-3  # it did act


def test_chunked_prefill_equals_one_pass(lm):
    request = dict(prompt=PROMPTS[2], max_new_tokens=6, greedy=True, record=True, stop_at_eos=False)
    whole = lm.decoding(**request, chunk=1000)
    chunked = lm.decoding(**request, chunk=5)
    for d in (whole, chunked):
        while d.prefilling:
            d.prefill()
    close(chunked.logits, whole.logits, TOL, "the prompt's last logits")
    assert chunked.recorder.length == whole.recorder.length == len(PROMPTS[2])
    close(chunked.recorder.trace().residual, whole.recorder.trace().residual, TOL, "the prompt's residual stream")


def test_one_token_prompts_and_companions_at_other_lengths(lm):
    requests = [dict(prompt=[7], max_new_tokens=9, greedy=True, stop_at_eos=False),
                dict(prompt=PROMPTS[2], max_new_tokens=4, seed=5, stop_at_eos=False)]
    got = together(lm, requests, joins=[0, 2])
    for g, r in zip(got, requests):
        same_steps(g, alone(lm, r))


@pytest.mark.parametrize("kind", ["q4_1", "q8_0", "bf16"])
def test_packed_products_give_each_row_the_same_bits_whatever_its_companions(kind):
    """What makes a batched step on the kernels exact: a row's product is computed alike alone or among others (the
    tiles of several rows and the one-row path included), on every instruction set this CPU has."""
    kernels = pytest.importorskip("model.kernels")
    ext = kernels.extension()
    if ext is None:
        pytest.skip(f"no compiled kernels: {kernels.error()}")
    from model.fast.packed import PackedWeight

    g = torch.Generator().manual_seed(0)
    n, k = 70, 96
    if kind == "bf16":
        w = PackedWeight("bf16", torch.randn(n, k, generator=g).to(torch.bfloat16).view(torch.int16), None, None)
    elif kind == "q4_1":
        w = PackedWeight("q4_1", torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8),
                         torch.rand(n, k // 32, generator=g), torch.randn(n, k // 32, generator=g))
    else:
        w = PackedWeight("q8_0", torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8),
                         torch.rand(n, k // 32, generator=g), None)
    x = torch.randn(16, k, generator=g)  # rows go in tiles of 8, then 4, then one by one
    try:
        for isa in ("scalar", "avx2", "avx512"):
            try:
                ext.use_isa(isa)
            except RuntimeError:  # this CPU lacks it
                continue
            together = w.matmul(x)
            assert torch.equal(together, torch.cat([w.matmul(x[i : i + 1]) for i in range(len(x))])), isa
            for start, stop in ((3, 9), (3, 16), (0, 12), (5, 7)):  # 4 + 2, 8 + 4 + 1, 8 + 4, 2
                assert torch.equal(together[start:stop], w.matmul(x[start:stop])), (isa, start, stop)
            close(together, x @ w.dequantize().T, 1e-5, f"{kind} on {isa}")
    finally:
        ext.use_isa("best")
