"""Parity with transformers (the oracle) on tiny random models of every family, built and saved in the test:
logits, every layer's attention probabilities and hidden states to 1e-4 in float32; cached decoding equals
full recomputation; greedy generation picks the same tokens."""
from __future__ import annotations

import pytest
import torch
import transformers

from tests.conftest import save_and_load

VOCAB = 300
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=128)

FAMILIES = {
    "llama-gqa-untied": (transformers.LlamaConfig, dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-tied-llama3-rope": (transformers.LlamaConfig, dict(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    "mistral-sliding-window": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=5)),
    "qwen2-biases-tied": (transformers.Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3-qk-norm": (transformers.Qwen3Config, dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)),
    "gpt2": (transformers.GPT2Config, dict(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128)),
}


def build(name: str, folder):
    cls, extra = FAMILIES[name]
    kwargs = extra if cls is transformers.GPT2Config else {**BASE, **extra}
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cls(**kwargs), attn_implementation="eager").eval()
    with torch.no_grad():  # random norms and biases, so that a swapped or missing one shows
        for pname, p in hf.named_parameters():
            if "norm" in pname or "ln_" in pname or pname.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return hf, save_and_load(hf, folder)


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    return build(request.param, tmp_path_factory.mktemp(request.param))


IDS = torch.randint(0, VOCAB, (14,), generator=torch.Generator().manual_seed(1)).tolist()


def test_logits_attention_hidden_states_match(pair):
    hf, lm = pair
    with torch.no_grad():
        ref = hf(torch.tensor([IDS]), output_attentions=True, output_hidden_states=True)
    trace = lm.trace(IDS)
    torch.testing.assert_close(trace.logits, ref.logits[0], atol=1e-4, rtol=1e-4)
    n = lm.config.n_layers
    assert len(ref.attentions) == n
    for layer in range(n):
        torch.testing.assert_close(trace.attention(layer), ref.attentions[layer][0], atol=1e-4, rtol=1e-4)
    hidden = trace.hidden_states
    assert hidden.shape == (n + 1, len(IDS), lm.config.d_model)
    for i in range(n):  # transformers' last entry is after the final norm; ours is the raw residual
        torch.testing.assert_close(hidden[i], ref.hidden_states[i][0], atol=1e-4, rtol=1e-4)
    normed = lm.decoder.norm(hidden[n])
    torch.testing.assert_close(normed, ref.hidden_states[n][0], atol=1e-4, rtol=1e-4)


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
        torch.testing.assert_close(s.trace.logits_at([-1])[0], full_logits[s.position - 1], atol=1e-4, rtol=1e-4)
        assert s.token_id == int(full_logits[s.position - 1].argmax())
    torch.testing.assert_close(steps[-1].trace.hidden_states, lm.trace(full[:-1]).hidden_states,
                               atol=1e-4, rtol=1e-4)


def test_greedy_tokens_match_transformers_generate(pair):
    hf, lm = pair
    ours = [s.token_id for s in lm.generate(IDS[:4], max_new_tokens=10, greedy=True, stop_at_eos=False)]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([IDS[:4]]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert ours == ref[0, 4:].tolist()
