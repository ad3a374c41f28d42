"""Parity with transformers (the oracle) on tiny random models of every family, built and saved in the test (see
families.py: initialised wide, so attention is peaked and activations nonlinear, which the first test checks).
In float32: logits, every layer's attention, hidden states and every internal of a block to 1e-5 of their scale
(a flipped RoPE sign or a misplaced epsilon moves them by tens of percent, the exact GELU for the tanh one by
1e-4); cached decoding equals full recomputation; greedy generation picks the same tokens."""
from __future__ import annotations

import pytest
import torch

from model import load_model
from tests.model.families import (ATTN_TOL, FAMILIES, IDS, PARTS, TOL, build_hf, capture, check_wide, close,
                                  save)


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    hf = build_hf(request.param)
    return hf, load_model(save(hf, tmp_path_factory.mktemp(request.param)), device="cpu", dtype="float32")


def test_random_model_can_show_errors(pair):
    check_wide(pair[0])


def test_logits_attention_hidden_states_match(pair):
    hf, lm = pair
    ref = capture(hf, IDS)
    trace = lm.trace(IDS)
    close(trace.logits, ref.logits[0], TOL, "logits")
    n = lm.config.n_layers
    assert len(ref.attentions) == n
    for layer in range(n):
        close(trace.attention(layer), ref.attentions[layer][0], ATTN_TOL, f"attention {layer}")
    hidden = trace.hidden_states
    assert hidden.shape == (n + 1, len(IDS), lm.config.d_model)
    for i in range(n):  # transformers' last entry is after the final norm; ours is the raw residual
        close(hidden[i], ref.hidden_states[i][0], TOL, f"hidden state {i}")
    close(hidden[n], ref.final_in, TOL, "last hidden state")


def test_every_internal_of_every_block_matches(pair):
    hf, lm = pair
    ref = capture(hf, IDS)
    trace = lm.trace(IDS)
    n = lm.config.n_layers
    for layer in range(n):
        inside = trace.internals(layer, need_probs=True)
        for field in PARTS:  # the normed inputs and outputs of attention and MLP
            close(getattr(inside, field)[0], ref.layers[layer][field], TOL, f"layer {layer} {field}")
        after = ref.hidden_states[layer + 1][0] if layer + 1 < n else ref.final_in
        close(inside.h_out[0], after, TOL, f"layer {layer} h_out")
        close(inside.attn_probs[0], ref.attentions[layer][0], ATTN_TOL, f"layer {layer} attn_probs")


def test_attention_computed_a_few_rows_at_a_time_is_the_whole_map(pair):
    """Rows start..stop of a layer's map, computed over the keys before them (as the app splits a long context's
    map into short tasks): transformers' rows, and nothing after the diagonal."""
    hf, lm = pair
    ref = capture(hf, IDS)
    trace = lm.trace(IDS)
    for layer in range(lm.config.n_layers):
        for start, stop in ((0, 4), (4, 9), (9, len(IDS)), (13, len(IDS))):
            rows = trace.attention(layer, start, stop)
            assert rows.shape == (lm.config.n_heads, stop - start, stop)
            close(rows, ref.attentions[layer][0][:, start:stop, :stop], ATTN_TOL, f"attention {layer} {start}:{stop}")
            assert torch.all(ref.attentions[layer][0][:, start:stop, stop:] == 0)


def test_attention_rows_are_causal_distributions(pair):
    _, lm = pair
    probs = lm.trace(IDS).attention(0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert torch.all(probs.triu(diagonal=1) == 0)


def test_cached_decoding_equals_full_recomputation(pair):
    _, lm = pair
    steps = list(lm.generate(IDS[:5], max_new_tokens=9, greedy=True, record=True, stop_at_eos=False))
    full = IDS[:5] + [s.token_id for s in steps]
    full_logits = lm.trace(full).logits
    for s in steps:  # each step's distribution came from the cached forward over the context before it
        close(s.trace.logits_at([-1])[0], full_logits[s.position - 1], TOL, f"step {s.index}")
        assert s.token_id == int(full_logits[s.position - 1].argmax())
    close(steps[-1].trace.hidden_states, lm.trace(full[:-1]).hidden_states, TOL, "hidden states")


def test_greedy_tokens_match_transformers_generate(pair):
    hf, lm = pair
    ours = [s.token_id for s in lm.generate(IDS[:4], max_new_tokens=10, greedy=True, stop_at_eos=False)]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([IDS[:4]]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert ours == ref[0, 4:].tolist()


def test_untied_gpt2_reads_its_own_head(tmp_path):
    hf = build_hf("gpt2", tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    lm = load_model(save(hf, tmp_path), device="cpu", dtype="float32")
    close(lm.trace(IDS).logits, capture(hf, IDS).logits[0], TOL, "logits")
