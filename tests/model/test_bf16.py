"""bfloat16 on the CPU: the core loaded with dtype="bfloat16" against transformers in bfloat16 on the same weights.

Two bf16 computations agree only to their rounding, which the wide test models (families.py) amplify from layer to
layer, so most comparisons here are per block: the Trace is given transformers' own residual stream (teacher
forcing) and each block's internals are compared with transformers' submodules on the same input. A wrong norm
epsilon changes them by tens of percent; a norm whose statistics are not taken in float32 moves each row by a few
thousandths, which test_norm_statistics_are_float32 measures against a float64 reference.

A bf16 checkpoint loaded as float32 (what a Space loads: the hub's SmolLM2 safetensors; made here from the embedded
model's weights) decodes from its bf16 values (model/fast: bf16_weights): the same values as the float32 path, so
the same tokens; EXPLORER_KERNELS=0 and a failed build give the float32 reference."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import transformers

from bench.bf16 import embedded_bf16_folder, load
from model import kernels, load_model
from model.fast import OneCallBlock, PackedLinear, packed_matrices
from tests.model.families import DEEPSEEK, IDS, PARTS, VOCAB, build_hf, capture, close, hf_layers, save

BF16_FAMILIES = ["llama-gqa-untied", "qwen3-qk-norm", *DEEPSEEK]
FREE_TOL = 0.15  # the whole model, each side rounding on its own (measured: 0.03-0.06 of the largest logit)
BLOCK_TOL = 0.04  # one block from the same input: about ten bf16 steps (measured: up to 0.016)
PROB_TOL = 0.05  # attention probabilities, absolute (transformers rounds the scores to bf16 before the softmax)
# A float32 norm rounded to bf16 is off by 2e-4 to 7e-4 per row on average (rounding errors average out as 1 /
# sqrt(row length)); statistics taken in bf16 shift whole rows, by 1.7e-3 to 0.2 here
ROW_BIAS = 2 ** -10  # for rows of 64; scaled by sqrt(64 / length)
LONG_IDS = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(3)).tolist()


def bf16_pair(name: str, folder):
    hf = build_hf(name)
    lm = load_model(save(hf, folder), device="cpu", dtype="bfloat16")
    return hf.to(torch.bfloat16), lm


@pytest.fixture(scope="module", params=BF16_FAMILIES)
def pair(request, tmp_path_factory):
    return bf16_pair(request.param, tmp_path_factory.mktemp(request.param))


# the whole model only where no router decides: in an MoE model a near-tie between experts may flip in bf16 and
# change everything after it (the per-block tests cover those models)
@pytest.fixture(scope="module", params=[name for name in BF16_FAMILIES if name not in DEEPSEEK])
def dense_pair(request, tmp_path_factory):
    return bf16_pair(request.param, tmp_path_factory.mktemp(request.param))


def forced(lm, ref, ids):
    """The Trace of ids whose residual stream is transformers': every block is then recomputed from the same
    input as transformers' block."""
    n = lm.config.n_layers
    residual = torch.stack([*(h[0] for h in ref.hidden_states[:n]), ref.final_in])
    return dataclasses.replace(lm.trace(ids), residual=residual)


def test_loads_and_computes_in_bf16(pair):
    _, lm = pair
    assert lm.dtype == torch.bfloat16
    trace = lm.trace(IDS)
    assert trace.residual.dtype == torch.bfloat16 and trace.internals(0).mlp_out.dtype == torch.bfloat16
    assert trace.logits.dtype == torch.float32


def test_logits_match_transformers(dense_pair):
    hf, lm = dense_pair
    ref = capture(hf, IDS)
    close(lm.trace(IDS).logits, ref.logits[0], FREE_TOL, "logits")


def test_every_block_matches_from_the_same_input(pair):
    hf, lm = pair
    ref = capture(hf, IDS)
    trace = forced(lm, ref, IDS)
    close(trace.logits, ref.logits[0], BLOCK_TOL, "logits from transformers' last residual")
    n = lm.config.n_layers
    for layer in range(n):
        inside = trace.internals(layer, need_probs=True)
        parts = ref.layers[layer]
        same = torch.ones(len(IDS), dtype=torch.bool)  # tokens whose experts are the same on both sides
        if "gate" in parts:
            logits, _, chosen = parts["gate"]
            close(inside.router_scores, logits.sigmoid(), BLOCK_TOL, f"layer {layer} router scores")
            same = (inside.experts.sort(-1).values == chosen.sort(-1).values).all(-1)
            assert same.float().mean() >= 0.9, f"layer {layer}: other experts chosen for {int((~same).sum())} tokens"
            close(inside.shared_out[0], parts["shared"], BLOCK_TOL, f"layer {layer} shared_out")
        if "latent" in parts:
            close(inside.latent[0], parts["latent"], BLOCK_TOL, f"layer {layer} latent")
            close(trace.latent(layer), parts["latent"], BLOCK_TOL, f"layer {layer} Trace.latent")
        for field in PARTS:
            close(getattr(inside, field)[0][same], parts[field][same], BLOCK_TOL, f"layer {layer} {field}")
        close(inside.h_out[0][same], trace.residual[layer + 1][same], BLOCK_TOL, f"layer {layer} h_out")
        probs = inside.attn_probs[0]
        assert float((probs - ref.attentions[layer][0].float()).abs().max()) < PROB_TOL, f"layer {layer} probs"


def row_bias(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> float:
    """RMS over rows of the mean relative error of a bf16 RMSNorm output `out` against float64 math on its input,
    scaled to rows of 64: rounding errors average out within a row, an error in the row's statistics does not."""
    x64 = x.detach().double()
    truth = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.detach().double()
    rel = torch.where(truth != 0, (out.double() - truth) / truth, 0.0)  # an input can be exactly 0
    return float(rel.mean(-1).pow(2).mean().sqrt()) / math.sqrt(64 / x.shape[-1])  # as for rows of 64


def test_norm_statistics_are_float32(pair):
    hf, lm = pair
    ref = capture(hf, LONG_IDS)
    trace = forced(lm, ref, LONG_IDS)
    for layer, hf_layer in enumerate(hf_layers(hf)):
        inside = trace.internals(layer)
        norm, h = hf_layer.input_layernorm, trace.residual[layer]
        # the bar is one transformers meets
        assert row_bias(ref.layers[layer]["attn_in"], h, norm.weight, norm.variance_epsilon) < ROW_BIAS
        checks = {"attn_in": (inside.attn_in[0], h, norm)}
        mid = h + inside.attn_out[0]  # what entered the second norm, as the block added it
        checks["mlp_in"] = (inside.mlp_in[0], mid, hf_layer.post_attention_layernorm)
        if "latent" in ref.layers[layer]:
            kv_norm = hf_layer.self_attn.kv_a_layernorm
            compressed = ref.layers[layer]["kv_a"][..., : kv_norm.weight.shape[0]]
            checks["latent"] = (inside.latent[0], compressed, kv_norm)
        for name, (out, x, norm) in checks.items():
            bias = row_bias(out, x, norm.weight, norm.variance_epsilon)
            assert bias < ROW_BIAS, f"layer {layer} {name}: rows off by {bias:.2g} on average"


def test_router_keeps_float32_as_transformers_does(tmp_path):
    hf = build_hf("kimi-k2-routing")
    with torch.no_grad():
        for layer in hf_layers(hf):
            if hasattr(layer.mlp, "gate"):  # every score 0.5: the correction bias alone chooses, 0.001 apart
                layer.mlp.gate.weight.zero_()
                layer.mlp.gate.e_score_correction_bias.copy_(3 + 1e-3 * torch.randperm(16).float())
    folder = save(hf, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, local_files_only=True,
                                                                  attn_implementation="eager").eval()
    lm = load_model(folder, device="cpu", dtype="bfloat16")
    ref = capture(reference, IDS)
    trace = lm.trace(IDS)
    for layer in trace.moe_layers:
        chosen = ref.layers[layer]["gate"][2]
        assert torch.equal(trace.routing(layer).experts.sort(-1).values, chosen.sort(-1).values), f"layer {layer}"


@pytest.fixture(scope="module")
def space_folder(tmp_path_factory):
    return embedded_bf16_folder(tmp_path_factory.mktemp("smollm2-bf16"))


@pytest.fixture(scope="module")
def space_models(space_folder):
    """The bf16 folder loaded as float32 on the CPU: with the fast paths, and with EXPLORER_KERNELS=0."""
    return load(space_folder, kernels_on=True), load(space_folder, kernels_on=False)


def test_a_bf16_checkpoint_decodes_from_its_bf16_values(space_models):
    fast, reference = space_models
    assert fast.dtype == torch.float32 and any("bf16 weights" in done for done in fast.fast_paths)
    assert not reference.fast_paths and not packed_matrices(reference.decoder)  # the switch turns it off
    decoder = fast.decoder
    assert all(isinstance(block, OneCallBlock) for block in decoder.blocks)
    assert isinstance(decoder.lm_head, PackedLinear) and decoder.lm_head.weight is decoder.embed.weight
    packed = packed_matrices(decoder)
    params = dict(decoder.named_parameters(remove_duplicate=False))
    assert sorted(packed) == sorted(n for n, p in params.items() if p.dim() == 2 and n != "embed.weight")
    for name, p in packed.items():  # the stored values exactly, in half the bytes
        assert p.kind == "bf16" and torch.equal(p.dequantize(), params[name]), name
        assert 2 * p.nbytes == params[name].numel() * 4, name


def test_bf16_decoding_gives_the_float32_paths_tokens(space_models):
    fast, reference = space_models
    greedy = lambda lm: list(lm.generate("The capital of France is", max_new_tokens=24, greedy=True, top_n=5,
                                         stop_at_eos=False, record=True))
    a, b = greedy(fast), greedy(reference)
    assert [s.token_id for s in a] == [s.token_id for s in b]
    for x, y in zip(a, b):
        assert x.top_ids == y.top_ids and x.top_probs == pytest.approx(y.top_probs, abs=1e-5)
    # the residual stream recorded while decoding (only the order of float additions differs)
    ha, hb = a[-1].trace.hidden_states, b[-1].trace.hidden_states
    assert ((ha - hb).norm(dim=-1) / hb.norm(dim=-1)).max() < 1e-5


def test_a_failed_build_falls_back_to_the_float32_path(space_folder, monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension\nblockquant.cpp:1: error: c++: command not found")

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_error", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        lm = load(space_folder, kernels_on=True)
    assert not lm.fast_paths and not packed_matrices(lm.decoder)
    assert len(list(lm.generate("Hi", max_new_tokens=3, greedy=True))) == 3


def test_float32_checkpoints_are_not_read_as_bf16(tmp_path):
    lm = load_model(save(build_hf("llama-gqa-untied"), tmp_path), device="cpu", dtype="float32")
    assert not lm.fast_paths and not packed_matrices(lm.decoder)
