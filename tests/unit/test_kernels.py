"""The block-quantized kernels: the values they compute with are gguf's dequantized values, their products agree
with a float32 matmul on every instruction-set path, and the embedded model really decodes through them."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from model import kernels
from model.decoder import Linear
from model.quantized import PackedWeight

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def ext():
    module = kernels.extension()
    # this project's machines have a compiler: a missing kernel is a failed build, not a reason to skip
    assert module is not None, f"kernels did not build: {kernels.error()}"
    yield module
    module.use_isa("best")


def quantized(n: int, k: int, qtype: Q, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """gguf's own quantizer: stored bytes [n, bytes per row] and their float32 values [n, k]."""
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.1
    raw = gguf.quants.quantize(w, qtype)
    return raw, torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(n, k))


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("n,k", [(96, 576), (37, 544), (5, 32)])  # even and odd block counts, ragged rows
def test_products_match_a_float32_matmul_on_every_path(ext, qtype, isa, n, k):
    order = ["scalar", "avx2", "avx512"]
    if order.index(isa) > order.index(ext.use_isa("best")):
        pytest.fail(f"this CPU lacks {isa}")  # the project's machines have AVX-512: a path is never skipped
    assert ext.use_isa(isa) == isa
    raw, dense = quantized(n, k, qtype)
    packed = PackedWeight.from_gguf(raw, qtype)
    assert torch.equal(packed.dequantize(), dense)  # the exact stored values, no rounding of their own
    for rows in (1, 3):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        torch.testing.assert_close(packed.matmul(x), x @ dense.T, rtol=1e-5, atol=1e-5)


def test_isa_names_are_checked(ext):
    with pytest.raises(RuntimeError, match="unknown instruction set"):
        ext.use_isa("avx1024")
    assert ext.use_isa("best") in ("avx512", "avx2", "scalar")


def test_rms_norm_kernel_matches_torch(ext):
    x, w = torch.randn(2, 576), torch.randn(576)
    torch.testing.assert_close(ext.rms_norm(x, w, 1e-5), torch.nn.functional.rms_norm(x, (576,), w, 1e-5))


def test_rope_kernel_matches_the_formula(ext):
    from model.layers import rotate_half

    x = torch.randn(1, 2, 9, 64).transpose(1, 2)  # [1, 9, 2, 64], a non-contiguous view as decoding passes
    cos, sin = torch.randn(2, 64), torch.randn(2, 64)
    torch.testing.assert_close(ext.rope(x, cos, sin), x * cos + rotate_half(x) * sin, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="cos, sin"):
        ext.rope(x, cos[:1], sin[:1])


def test_bad_arguments_are_refused_not_read_out_of_bounds(ext):
    raw, _ = quantized(8, 64, Q.Q4_1)
    p = PackedWeight.from_gguf(raw, Q.Q4_1)
    with pytest.raises(RuntimeError, match="multiple of 32|wrong shape"):
        ext.q4_1_matmul(torch.randn(1, 48), p.q, p.scale, p.minimum)
    with pytest.raises(RuntimeError, match="float32"):
        ext.q4_1_matmul(torch.randn(1, 64, dtype=torch.float64), p.q, p.scale, p.minimum)
    with pytest.raises(RuntimeError, match="unknown block kind"):
        ext.Packed("q5_k", p.q, p.scale, p.minimum)


def test_embedded_model_decodes_from_its_gguf_blocks(embedded_lm, ext):
    decoder = embedded_lm.decoder
    linears = [m for m in decoder.modules() if isinstance(m, Linear)]
    assert linears and all(m.packed is not None for m in linears)
    assert decoder.head_packed is not None and decoder.head_packed.kind == "q8_0"
    for m in linears:  # rows moved exactly as the float32 weights were (llama.cpp's Q/K permutation undone)
        assert torch.equal(m.packed.dequantize(), m.weight), m
    assert torch.equal(decoder.head_packed.dequantize(), decoder.head_weight)
    attn = decoder.blocks[0].attn
    assert attn.qkv_packed is not None and attn.wq.packed.q.data_ptr() == attn.qkv_packed.q.data_ptr()


def test_kernel_decoding_equals_dense_decoding(embedded_lm, monkeypatch):
    run = lambda: list(embedded_lm.generate("The capital of France is", max_new_tokens=12, greedy=True, top_n=5,
                                            stop_at_eos=False))
    fast = run()
    monkeypatch.setattr(kernels, "loaded", lambda: None)  # every product through the float32 weights
    dense = run()
    assert [s.token_id for s in fast] == [s.token_id for s in dense]
    for a, b in zip(fast, dense):
        assert a.top_ids == b.top_ids
        assert a.top_probs == pytest.approx(b.top_probs, abs=1e-5)


def test_one_call_block_step_equals_the_python_block(embedded_lm):
    from model.cache import KVCache

    decoder = embedded_lm.decoder
    ids = torch.tensor([embedded_lm.tokenizer.encode("The quick brown fox jumps over the")])
    t = ids.shape[1]
    with torch.inference_mode():
        h = decoder.embed_tokens(ids, torch.arange(t))
        rope = decoder.rope(torch.arange(t), h.dtype)
        first, last = (rope[0][:-1], rope[1][:-1]), (rope[0][-1:], rope[1][-1:])
        for block in decoder.blocks:
            assert block.one_call_step(h[:, -1:], last)
            # the first t-1 tokens fill both caches the Python way; the last token goes through each path
            fast, slow = KVCache(len(decoder.blocks), 16), KVCache(len(decoder.blocks), 16)
            for cache in (fast, slow):
                block(h[:, :-1], torch.arange(t - 1), first, cache)
                cache.advance(t - 1)
            one_call = block.step(h[:, -1:], last, fast)
            mid = h[:, -1:] + block.attn(block.attn_norm(h[:, -1:]), torch.tensor([t - 1]), last, slow)[0]
            python = mid + block.mlp(block.mlp_norm(mid))
            torch.testing.assert_close(one_call, python, rtol=1e-4, atol=1e-4)
            keys = lambda c: c.layers[block.layer][0][:, :, :t]  # the new key went into the cache, rotated
            torch.testing.assert_close(keys(fast), keys(slow), rtol=1e-5, atol=1e-5)
            h = block(h, torch.arange(t), rope, None)


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension\nblockquant.cpp:1: error: c++: command not found")

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_error", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="float32 weights"):
        assert kernels.extension() is None
    assert "command not found" in kernels.error()
    raw, dense = quantized(4, 64, Q.Q4_1)
    assert not PackedWeight.from_gguf(raw, Q.Q4_1).usable_for(torch.randn(1, 64))


def test_model_summary_says_where_decoding_reads_from(embedded_lm):
    from explorer.ui.common import model_summary

    assert "decoding from the file's Q4_1/Q8_0 blocks" in model_summary(embedded_lm)


def test_models_without_blocks_never_build_the_kernels(monkeypatch):
    from model import load_model

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "extension", lambda: pytest.fail("a model without GGUF blocks built the kernels"))
    lm = load_model("random:deepseek-v3-mini")
    assert not lm.decoder.packed_weights()
    assert len(list(lm.generate("Hi", max_new_tokens=3, greedy=True, record=True))) == 3
