"""Interventions on the real embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers' GGUF loader on
the same file with forward hooks doing the same (logits to 1e-3), and through the fast path: a layer an intervention
touches decodes through the reference block, so kernels on and off (EXPLORER_KERNELS=0) pick the same tokens."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import transformers

from model import AttentionAblation, HeadAblation, MLPAblation, Patch
from model.loading.embedded import embedded_gguf_path

PROMPT = "The capital of France is"
SOURCE = "The capital of Italy is"
D_HEAD = 64


@pytest.fixture(scope="module")
def hf_gguf():
    path = embedded_gguf_path()
    load = transformers.AutoModelForCausalLM.from_pretrained  # a local file: tests/conftest.py sets HF_HUB_OFFLINE
    return load(str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True).eval()


@contextmanager
def hooked(hooks: list):
    """Each (module, kind, fn) registered as a forward hook ("post") or pre-hook ("pre") for the block's duration."""
    handles = [m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn)
               for m, kind, fn in hooks]
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()


def hf_run(hf, ids: list[int], hooks: list) -> torch.Tensor:
    with hooked(hooks):
        return hf(torch.tensor([ids])).logits[0]


def zero_heads(hf, heads: list[tuple[int, int]]) -> list:
    def hook_for(head: int):
        def hook(module, args):
            x = args[0].clone()
            x[..., head * D_HEAD:(head + 1) * D_HEAD] = 0
            return (x, *args[1:])
        return hook
    return [(hf.model.layers[layer].self_attn.o_proj, "pre", hook_for(head)) for layer, head in heads]


def close(got: torch.Tensor, ref: torch.Tensor, tol: float, msg: str) -> None:
    err = float((got - ref).abs().max())
    assert err <= tol, f"{msg}: max difference {err:.3g} > {tol:g}"


def test_head_ablation_matches_transformers(embedded_lm, hf_gguf):
    assert embedded_lm.config.d_head == D_HEAD
    ids = embedded_lm.tokenizer.encode(PROMPT)
    heads = [(3, 4), (9, 0), (20, 7)]
    clean = embedded_lm.trace(ids).logits
    trace = embedded_lm.trace(ids, [HeadAblation(layer, head) for layer, head in heads])
    ref = hf_run(hf_gguf, ids, zero_heads(hf_gguf, heads))
    assert float((ref - clean).abs().max()) > 0.05  # the ablation shows
    close(trace.logits, ref, 1e-3, "logits with heads ablated")


def test_patch_matches_transformers(embedded_lm, hf_gguf):
    ids, source_ids = embedded_lm.tokenizer.encode(PROMPT), embedded_lm.tokenizer.encode(SOURCE)
    assert len(ids) == len(source_ids)
    where = [i for i, (a, b) in enumerate(zip(ids, source_ids)) if a != b]  # " France" / " Italy"
    layer = 12
    source = embedded_lm.trace(source_ids)
    trace = embedded_lm.trace(ids, [Patch(layer, where, source)])
    seen = {}
    keep = lambda m, args, out: seen.update(h=(out[0] if isinstance(out, tuple) else out).detach())
    hf_run(hf_gguf, source_ids, [(hf_gguf.model.layers[layer], "post", keep)])

    def put(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, where] = seen["h"][0, where]
        return (h, *out[1:]) if isinstance(out, tuple) else h
    ref = hf_run(hf_gguf, ids, [(hf_gguf.model.layers[layer], "post", put)])
    close(trace.logits, ref, 1e-3, "logits patched")
    top = lambda logits: embedded_lm.tokenizer.decode([int(logits[-1].argmax())])
    assert top(trace.logits).strip() == "Rome"  # the country's residual carries the answer at layer 12


def test_fast_path_honours_interventions(embedded_lm, reference_lm, hf_gguf):
    """Greedy generation with interventions: the fast path (a touched layer through the reference block), the
    reference alone and transformers with hooks pick the same tokens, with the same probabilities."""
    assert embedded_lm.fast_paths and not reference_lm.fast_paths
    edits = [HeadAblation(0, 1), HeadAblation(5, 3), AttentionAblation(27), MLPAblation(29)]
    run = lambda lm, iv: list(lm.generate(PROMPT, max_new_tokens=16, greedy=True, top_n=5, stop_at_eos=False,
                                          record=True, interventions=iv))
    fast, reference, plain = run(embedded_lm, edits), run(reference_lm, edits), run(embedded_lm, None)
    assert [s.token_id for s in fast] == [s.token_id for s in reference]
    assert [s.token_id for s in fast] != [s.token_id for s in plain]
    for a, b in zip(fast, reference):
        assert a.top_ids == b.top_ids
        assert a.top_probs == pytest.approx(b.top_probs, abs=1e-4)
    layers = hf_gguf.model.layers
    zero = lambda m, args, out: ((torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple)
                                 else torch.zeros_like(out))
    hooks = zero_heads(hf_gguf, [(0, 1), (5, 3)]) + [(layers[27].self_attn, "post", zero),
                                                      (layers[29].mlp, "post", zero)]
    ids = embedded_lm.tokenizer.encode(PROMPT)
    with hooked(hooks):
        ref = hf_gguf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
    assert [s.token_id for s in fast] == ref[0, len(ids):].tolist()
    # decoding step by step with the cache equals one pass over the whole text with the same interventions
    full = ids + [s.token_id for s in fast]
    whole = embedded_lm.trace(full, edits).logits
    for s in fast:
        close(s.trace.logits_at([-1])[0], whole[s.position - 1], 1e-3, f"step {s.index}")
