"""The kernels that read stored weights and the fast path built on them (model/fast): the values they compute with are
gguf's dequantized values or a bf16 checkpoint's own, their products agree with a float32 matmul on every
instruction-set path, the embedded model really decodes through them, and turning them off changes no token. (A
whole bf16 checkpoint: tests/model/test_bf16.py.)"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from model import kernels
from model.fast import OneCallBlock, PackedLinear, PackedWeight, packed_matrices

Q = gguf.GGMLQuantizationType
HANG = 120.0  # seconds: only a hang waits this long


@pytest.fixture(scope="module")
def ext():
    module = kernels.extension()
    # this project's machines have a compiler: a missing kernel is a failed build, not a reason to skip
    assert module is not None, f"kernels did not build: {kernels.error()}"
    yield module
    module.use_isa("best")


def quantized(n: int, k: int, qtype: Q, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """gguf's own quantizer: stored bytes uint8 [n, bytes per row] and their float32 values [n, k]."""
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.1
    raw = gguf.quants.quantize(w, qtype)
    return torch.from_numpy(raw), torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(n, k))


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("n,k", [(96, 576), (37, 544), (5, 32)])  # even and odd block counts, ragged rows
def test_products_match_a_float32_matmul_on_every_path(ext, qtype, isa, n, k):
    order = ["scalar", "avx2", "avx512"]
    if order.index(isa) > order.index(ext.use_isa("best")):
        pytest.fail(f"this CPU lacks {isa}")  # the project's machines have AVX-512: a path is never skipped
    assert ext.use_isa(isa) == isa
    raw, dense = quantized(n, k, qtype)
    packed = PackedWeight.from_stored(raw, qtype)
    assert torch.equal(packed.dequantize(), dense)  # the exact stored values, no rounding of their own
    for rows in (1, 3):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        torch.testing.assert_close(packed.matmul(x), x @ dense.T, rtol=1e-5, atol=1e-5)
    if isa == "avx512":  # it computes with each weight's dequantised value itself: a one-hot row reads a column back
        columns = torch.arange(0, k, max(1, k // 13))[:13]  # 13 rows: a tile of 8, one of 4, one alone
        assert torch.equal(packed.matmul(torch.eye(k)[columns]), dense[:, columns].T)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("n,k", [(96, 576), (37, 1544), (5, 40)])  # K beyond a multiple of the vector width too
def test_bf16_products_match_a_float32_matmul_on_every_path(ext, isa, n, k):
    order = ["scalar", "avx2", "avx512"]
    if order.index(isa) > order.index(ext.use_isa("best")):
        pytest.fail(f"this CPU lacks {isa}")
    dense = (torch.randn(n, k, generator=torch.Generator().manual_seed(n)) * 0.1).to(torch.bfloat16).float()
    packed = PackedWeight.from_bf16_values(dense)
    assert packed.kind == "bf16" and packed.shape == (n, k) and packed.nbytes == 2 * n * k  # half of float32's
    assert torch.equal(packed.dequantize(), dense)  # the stored values, exactly
    try:
        assert ext.use_isa(isa) == isa
        for rows in (1, 3):
            x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
            torch.testing.assert_close(packed.matmul(x), x @ dense.T, rtol=1e-5, atol=1e-5)
    finally:
        ext.use_isa("best")



def test_float32_values_that_are_not_bf16_are_never_rounded():
    w = torch.randn(8, 64, dtype=torch.bfloat16).float()
    assert PackedWeight.from_bf16_values(w) is not None
    w[3, 5] += 2 ** -12 * abs(float(w[3, 5]))  # one value between two bf16 neighbours
    assert PackedWeight.from_bf16_values(w) is None


def test_isa_names_are_checked(ext):
    with pytest.raises(RuntimeError, match="unknown instruction set"):
        ext.use_isa("avx1024")
    assert ext.use_isa("best") in ("avx512", "avx2", "scalar")


def test_bad_arguments_are_refused_not_read_out_of_bounds(ext):
    raw, _ = quantized(8, 64, Q.Q4_1)
    p = PackedWeight.from_stored(raw, Q.Q4_1)
    with pytest.raises(RuntimeError, match="multiple of 32|wrong shape"):
        ext.q4_1_matmul(torch.randn(1, 48), p.q, p.scale, p.minimum)
    with pytest.raises(RuntimeError, match="float32"):
        ext.q4_1_matmul(torch.randn(1, 64, dtype=torch.float64), p.q, p.scale, p.minimum)
    with pytest.raises(RuntimeError, match="unknown kind"):
        ext.Packed("q5_k", p.q, p.scale, p.minimum)
    with pytest.raises(RuntimeError, match="needs its scales"):
        ext.Packed("q4_1", p.q, None, None)
    w = torch.zeros(4, 64, dtype=torch.int16)
    with pytest.raises(RuntimeError, match="bf16 weights must be"):
        ext.bf16_matmul(torch.randn(1, 48), w)
    with pytest.raises(RuntimeError, match="bf16 weights must be"):
        ext.bf16_matmul(torch.randn(1, 64), w.float())


@pytest.fixture
def helpers(ext):
    """Sets how many helper threads the kernels' loops use; the default again afterwards."""
    yield ext.use_helpers
    ext.stall_helpers(False)
    ext.use_helpers(kernels.default_helpers())


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_products_are_the_same_bits_with_any_number_of_helpers(ext, helpers, rows):
    """A loop's chunks go to whichever thread takes them first, each computed by the same serial code."""
    matrices = [PackedWeight.from_stored(*quantized(1000, 576, qtype)[:1], qtype) for qtype in (Q.Q4_1, Q.Q8_0)]
    matrices.append(PackedWeight.from_bf16_values(torch.randn(1000, 576).to(torch.bfloat16).float()))
    x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows))
    for packed in matrices:
        results = []
        for n in (0, 1, 3):
            helpers(n)
            results.append(packed.matmul(x))
        assert all(torch.equal(r, results[0]) for r in results), packed.kind


def test_decoding_is_the_same_bits_with_any_number_of_helpers(embedded_lm, helpers):
    """Every loop of a step (products, attention, the MLP's activation) split or not: tokens, probabilities and the
    recorded residual stream are identical."""
    runs = []
    for n in (0, 1):
        helpers(n)
        runs.append(list(embedded_lm.generate("The capital of France is", max_new_tokens=12, temperature=0.9, seed=3,
                                              top_n=5, stop_at_eos=False, record=True)))
    alone, split = runs
    assert [(s.token_id, s.top_ids, s.top_probs) for s in alone] == [(s.token_id, s.top_ids, s.top_probs)
                                                                      for s in split]
    assert torch.equal(alone[-1].trace.hidden_states, split[-1].trace.hidden_states)


def test_a_step_split_by_the_helpers_runs_torchs_ops_on_one_openmp_thread(embedded_lm, helpers, monkeypatch):
    """A second OpenMP thread would spin after each of torch's parallel ops on the core the helper needs next: while
    the helpers split a step, its forward pass and sampling keep torch to one thread, and so does a short prompt's
    prefill (its products read the packed kernels), each giving the caller's count back; with no helper they leave
    torch's count alone."""
    from model import batch

    seen = []
    for name in ("forward_rows", "_sample_all"):
        real = getattr(batch, name)
        monkeypatch.setattr(batch, name, lambda *a, real=real: seen.append(torch.get_num_threads()) or real(*a))
    real_forward = batch.Decoding._forward
    monkeypatch.setattr(batch.Decoding, "_forward",
                        lambda self, ids: seen.append(torch.get_num_threads()) or real_forward(self, ids))
    torch.set_num_threads(2)
    for n in (1, 0):
        helpers(n)
        d = embedded_lm.decoding("The capital of France is", max_new_tokens=2, greedy=True)
        while d.prefilling:
            d.prefill()
        batch.sample_all([d])  # the prompt's last logits
        assert d.ready
        batch.advance([d])
        d.close()
        assert torch.get_num_threads() == 2
    assert seen == [1, 1, 1, 2, 2, 2]  # prefill, sampling, forward pass


@pytest.mark.parametrize("isa", ["avx512", "scalar"])
def test_the_swiglu_activation_is_silu_times_up_and_each_element_alike_wherever_a_run_starts(ext, isa):
    """A block's SwiGLU runs over a row's elements in runs that start where a helper's chunk does: each element must be
    the same computation (AVX-512: the last lanes masked) wherever its run starts, and close to torch's silu."""
    assert ext.use_isa(isa) == isa
    try:
        g = torch.Generator().manual_seed(0)
        gate, up = torch.randn(203, generator=g) * 6, torch.randn(203, generator=g)
        gate[:3] = torch.tensor([-120.0, 95.0, 0.0])  # e^-gate overflows, underflows, is 1
        whole = ext.silu_times(gate, up)
        torch.testing.assert_close(whole, torch.nn.functional.silu(gate) * up, rtol=2e-6, atol=1e-7)
        for start, stop in ((0, 1), (0, 16), (1, 17), (5, 40), (17, 203), (190, 203)):
            assert torch.equal(ext.silu_times(gate[start:stop].contiguous(), up[start:stop].contiguous()),
                               whole[start:stop])
    finally:
        ext.use_isa("best")


def test_every_compiled_product_asks_ahead_for_its_weights(ext):
    """Each product asks for the weight rows a few ahead (prefetch): without it a decoding step, whose weights come
    from memory, was a third slower. GCC once silently dropped the prefetch builtin from the Q4_1 and Q8_0 loops, so
    the compiled code itself is read: every product's code holds prefetch instructions."""
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, which the compiler that built the kernels comes with) is missing"
    listing = subprocess.run([objdump, "-dC", "--no-show-raw-insn", ext.__file__], capture_output=True, text=True,
                             check=True).stdout
    prefetches: dict[str, int] = {}
    function = ""
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line
        elif "prefetcht0" in line:
            for kind in ("q4_1", "q8_0", "bf16"):
                if f"{kind}_matmul(" in function:
                    prefetches[kind] = prefetches.get(kind, 0) + 1
    assert set(prefetches) == {"q4_1", "q8_0", "bf16"}, prefetches


def test_a_helper_taken_off_its_core_holds_up_no_product_and_stores_nothing_late(ext, helpers):
    """A helper that takes a chunk and then does not run (as one the OS took off its core) costs the caller that chunk:
    the caller computes it, returns, and the helper, run again later, finds the chunk taken and writes nothing into
    an output its caller has since reused."""
    raw, _ = quantized(1000, 576, Q.Q4_1)
    packed = PackedWeight.from_stored(raw, Q.Q4_1)
    x = torch.randn(4, 576)
    helpers(0)
    want = packed.matmul(x)
    helpers(1)
    ext.stall_helpers(True)
    got = []
    caller = threading.Thread(target=lambda: got.append(packed.matmul(x)))
    caller.start()
    caller.join(HANG)  # a caller waiting for the stalled helper would wait forever
    assert got and torch.equal(got[0], want)
    assert ext.helpers_inside() == 1  # the helper is still stopped inside the finished loop
    got[0].zero_()  # the caller's output, reused
    ext.stall_helpers(False)
    deadline = time.monotonic() + HANG
    while ext.helpers_inside() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert ext.helpers_inside() == 0
    assert not got[0].any()


def test_embedded_model_decodes_from_its_gguf_blocks(embedded_lm, ext):
    decoder = embedded_lm.decoder
    assert all(isinstance(block, OneCallBlock) for block in decoder.blocks)
    assert isinstance(decoder.lm_head, PackedLinear) and decoder.lm_head.packed.kind == "q8_0"
    assert decoder.lm_head.weight is decoder.embed.weight  # tied: the embedding's blocks are the output matrix
    packed = packed_matrices(decoder)
    params = dict(decoder.named_parameters(remove_duplicate=False))
    matrices = [n for n, p in params.items() if p.dim() == 2 and n != "embed.weight"]
    assert sorted(packed) == sorted(matrices)  # every matrix a decoding step reads comes from the file's blocks
    for name, p in packed.items():  # rows moved exactly as the float32 weights were (llama.cpp's Q/K permutation)
        assert torch.equal(p.dequantize(), params[name]), name


def test_kernel_decoding_equals_reference_decoding(embedded_lm, reference_lm):
    """The fast path on or off changes no token of a greedy generation, and barely a probability."""
    run = lambda lm: list(lm.generate("The capital of France is", max_new_tokens=24, greedy=True, top_n=5,
                                      stop_at_eos=False, record=True))
    fast, reference = run(embedded_lm), run(reference_lm)
    assert not reference_lm.fast_paths and not any(isinstance(b, OneCallBlock) for b in reference_lm.decoder.blocks)
    assert [s.token_id for s in fast] == [s.token_id for s in reference]
    for a, b in zip(fast, reference):
        assert a.top_ids == b.top_ids
        assert a.top_probs == pytest.approx(b.top_probs, abs=1e-5)
    # the residual stream recorded while decoding, block by block (only the order of float additions differs)
    a, b = fast[-1].trace.hidden_states, reference[-1].trace.hidden_states  # [layers + 1, T, d]
    assert ((a - b).norm(dim=-1) / b.norm(dim=-1)).max() < 1e-5


@pytest.mark.parametrize("repeats", [1, 12])  # 8 tokens, and 85: the attention's vector softmax takes 16 keys at once
def test_one_call_block_step_equals_the_reference_block(embedded_lm, reference_lm, repeats):
    from model.cache import KVCache

    fast_decoder, decoder = embedded_lm.decoder, reference_lm.decoder
    ids = torch.tensor([embedded_lm.tokenizer.encode(" ".join(["The quick brown fox jumps over the"] * repeats))])
    t = ids.shape[1]
    with torch.inference_mode():
        h = decoder.embed_tokens(ids, torch.arange(t))
        rope = decoder.rope(torch.arange(t), h.dtype)
        first, last = (rope[0][:-1], rope[1][:-1]), (rope[0][-1:], rope[1][-1:])
        for fast_block, block in zip(fast_decoder.blocks, decoder.blocks):
            # the first t-1 tokens fill both caches through the reference; the last token goes through each block
            fast, slow = KVCache(len(decoder.blocks), 16), KVCache(len(decoder.blocks), 16)
            for cache in (fast, slow):
                block(h[:, :-1], torch.arange(t - 1), first, cache)
                cache.advance(t - 1)
            one_call = fast_block(h[:, -1:], torch.tensor([t - 1]), last, fast)
            python = block(h[:, -1:], torch.tensor([t - 1]), last, slow)
            torch.testing.assert_close(one_call, python, rtol=1e-4, atol=1e-4)
            for kv in (0, 1):  # the new key (rotated) and value went into the cache
                torch.testing.assert_close(fast.layers[block.layer][kv][:, :, :t], slow.layers[block.layer][kv][:, :, :t],
                                           rtol=1e-5, atol=1e-5)
            h = block(h, torch.arange(t), rope, None)


def test_every_block_in_one_call_equals_the_blocks_one_by_one(embedded_lm):
    """A decoding step runs every block in one compiled call (model/fast/llama_block.py step_all, what model/batch.py
    uses for a step without interventions); the same step through Decoder.forward calls the compiled block step once
    per block from Python. Logits and recorded residual streams are the same bits, token after token."""
    from model.batch import advance, one_call

    lm = embedded_lm
    ids = lm.prompt_ids("The quick brown fox jumps over the lazy dog, and then")
    a, b = (lm.decoding(ids, max_new_tokens=40, greedy=True, stop_at_eos=False, record=True) for _ in range(2))
    for d in (a, b):
        while d.logits is None:
            d.prefill()
    assert one_call(lm.decoder, [a])
    for _ in range(12):
        for d in (a, b):
            d.sample()
        a.logits = a._forward(a.pending)  # the blocks one by one (Decoder.forward)
        a.pending = []
        advance([b])  # the one call
        assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.recorder.trace().residual, b.recorder.trace().residual)


def test_fast_modules_keep_the_reference_names_and_values(embedded_lm, reference_lm):
    fast = dict(embedded_lm.decoder.named_parameters())
    assert fast.keys() == dict(reference_lm.decoder.named_parameters()).keys()
    for name, p in reference_lm.decoder.named_parameters():
        assert torch.equal(fast[name], p), name


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension
    from model import load_model

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension\nblockquant.cpp:1: error: c++: command not found")

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_error", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="float32 weights"):
        lm = load_model(device="cpu", dtype="float32")
    assert "command not found" in kernels.error()
    assert not lm.fast_paths and not packed_matrices(lm.decoder)
    assert len(list(lm.generate("Hi", max_new_tokens=3, greedy=True))) == 3


def test_model_summary_says_where_decoding_reads_from(embedded_lm, reference_lm):
    from explorer.ui.common import model_summary

    assert "decoding from the file's Q4_1/Q8_0 blocks" in model_summary(embedded_lm)
    assert "blocks" not in model_summary(reference_lm)


def test_models_without_blocks_never_build_the_kernels(monkeypatch):
    from model import load_model

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "extension", lambda: pytest.fail("a model without GGUF blocks built the kernels"))
    lm = load_model("random:deepseek-v3-mini")
    assert not lm.fast_paths and not packed_matrices(lm.decoder)
    assert len(list(lm.generate("Hi", max_new_tokens=3, greedy=True, record=True))) == 3


def test_a_build_killed_midway_does_not_hang_the_next_start(tmp_path, monkeypatch):
    """torch waits forever for the 'lock' file a killed build leaves; the kernels' own OS lock (released when a
    process dies) makes such a file stale, and it goes before torch looks. The folder is torch's own."""
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = Path(_get_build_directory("explorer_blockquant_test", verbose=False))
    (folder / "lock").touch()  # what a build killed midway leaves behind
    with kernels._building("explorer_blockquant_test") as building:  # noqa: SLF001
        assert building == folder
        assert not (folder / "lock").exists()


def test_the_compiled_sampler_is_the_python_one_bit_for_bit(ext, monkeypatch):
    """A decoding step's sampling runs in one compiled call (sample_rows: the GIL given up once, not around each of
    ~60 small operations); it is model/sampling.py's _sample_rows in C++, the same ATen operations in the same order,
    so every number and every draw is the same bits: greedy, no cut, top-k, top-p (a nucleus wider than its
    candidates included), both, rows alone and together."""
    from model import sampling
    from model.sampling import SamplerSettings, Samples

    settings = [SamplerSettings(greedy=True), SamplerSettings(temperature=0.7), SamplerSettings(top_k=50),
                SamplerSettings(temperature=1.3, top_p=0.9), SamplerSettings(temperature=0.8, top_k=40, top_p=0.8),
                SamplerSettings(top_k=3, top_p=0.5), SamplerSettings(temperature=1e-5)]
    scale = torch.tensor([[3.0], [3.0], [8.0], [0.05], [3.0], [1.0], [2.0]])
    calls = []
    real = ext.sample_rows
    monkeypatch.setattr(ext, "sample_rows", lambda *args: calls.append(args[-2]) or real(*args))
    for seed in range(6):
        logits = torch.randn(len(settings), 49152, generator=torch.Generator().manual_seed(seed)) * scale
        for rows in (list(range(len(settings))), [3], [5, 1]):
            got = {}
            for compiled in (True, False):
                monkeypatch.setattr(sampling, "_COMPILED", compiled)
                gens = [torch.Generator().manual_seed(seed * 100 + r) for r in rows]
                got[compiled] = Samples.of(logits[rows], [settings[r] for r in rows], gens, [20] * len(rows))
            for a, b in zip(got[True].rows, got[False].rows):
                for name, value in vars(a).items():
                    other = getattr(b, name)
                    same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
                    assert same, (seed, rows, name)
    assert sorted(set(calls)) == [0, 1, 3, 40, 50, 1024, 49152]  # every kind of row took the compiled call
