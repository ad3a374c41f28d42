"""The real embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers' own GGUF loader on the
same file, and its generation and recording end to end."""
from __future__ import annotations

import pytest
import torch
import transformers

from model import load_model
from model.loading.embedded import embedded_gguf_path

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def hf_gguf():
    path = embedded_gguf_path()
    # a local file, never the hub: local_files_only, and tests/conftest.py sets HF_HUB_OFFLINE
    load = transformers.AutoModelForCausalLM.from_pretrained
    return load(str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True).eval()


def test_loads_offline():
    lm = load_model()
    assert lm.name == "SmolLM2-135M-Instruct"
    cfg = lm.config
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.vocab_size) == (30, 9, 3, 576, 49152)
    assert cfg.tie_embeddings and lm.decoder.lm_head.weight is lm.decoder.embed.weight  # tied (the fast head shares it)
    assert 134e6 < lm.n_params < 136e6


def test_logits_match_transformers_gguf_loader(embedded_lm, hf_gguf):
    ids = embedded_lm.tokenizer.encode("In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole")
    with torch.no_grad():
        ref = hf_gguf(torch.tensor([ids]), output_hidden_states=True)
    trace = embedded_lm.trace(ids)
    torch.testing.assert_close(trace.logits, ref.logits[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(trace.hidden_states[:30], torch.stack(ref.hidden_states[:30])[:, 0],
                               atol=1e-3, rtol=1e-3)


def test_32_greedy_tokens_identical(embedded_lm, hf_gguf):
    ids = embedded_lm.tokenizer.encode("Once upon a time")
    ours = [s.token_id for s in embedded_lm.generate(ids, max_new_tokens=32, greedy=True, stop_at_eos=False)]
    with torch.no_grad():
        ref = hf_gguf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
    assert len(ours) == 32
    assert ours == ref[0, len(ids):].tolist()


def test_capital_of_france_is_paris(embedded_lm):
    steps = list(embedded_lm.generate(PROMPT, max_new_tokens=4, greedy=True))
    text = "".join(s.text for s in steps)
    assert text.strip().startswith("Paris"), text
    assert steps[0].top_ids[0] == steps[0].token_id
    assert steps[0].prob > 0.2


def test_step_fields_describe_the_sampler(embedded_lm):
    steps = list(embedded_lm.generate(PROMPT, max_new_tokens=6, temperature=0.8, top_k=5, top_p=0.9, seed=3))
    for s in steps:
        assert s.top_probs == sorted(s.top_probs, reverse=True)
        assert 0 < sum(s.top_probs) <= 1 + 1e-5
        assert 1 <= s.n_kept <= 5 and s.token_id in s.top_ids[:5]
        assert s.top_kept[: s.n_kept] == [True] * s.n_kept and not any(s.top_kept[s.n_kept:])
        assert abs(sum(s.top_sampled_probs) - 1) < 1e-5  # the kept tokens are all in the top 20
        assert s.entropy > 0 and 0 < s.prob <= 1
        # the sampled distribution: the kept tokens' probabilities at temperature 0.8, renormalised
        tempered = [p ** (1 / 0.8) for p in s.top_probs[: s.n_kept]]
        assert s.sampled_prob == pytest.approx(tempered[s.top_ids.index(s.token_id)] / sum(tempered), rel=1e-4)
        assert s.kept_mass == pytest.approx(sum(s.top_probs[: s.n_kept]), rel=1e-4)


def test_seed_reproduces_and_text_pieces_concatenate(embedded_lm):
    run = lambda seed: list(embedded_lm.generate("Write a haiku about the sea.", chat=True, max_new_tokens=24,
                                                 temperature=1.0, seed=seed))
    a, b, c = run(7), run(7), run(8)
    assert [s.token_id for s in a] == [s.token_id for s in b]
    assert [s.token_id for s in a] != [s.token_id for s in c]
    ids = [s.token_id for s in a]
    assert "".join(s.text for s in a) == embedded_lm.tokenizer.decode(ids)


def test_chat_generation_stops_at_end_of_turn(embedded_lm):
    steps = list(embedded_lm.generate("What is 2+2? Answer with one number.", chat=True, max_new_tokens=40,
                                      greedy=True))
    assert steps[-1].finish_reason == "stop"
    assert embedded_lm.tokenizer.token_strings([steps[-1].token_id]) == ["<|im_end|>"]
    assert "4" in "".join(s.text for s in steps)


def test_recording_during_generation(embedded_lm):
    prompt_ids = embedded_lm.tokenizer.encode(PROMPT)
    steps = list(embedded_lm.generate(prompt_ids, max_new_tokens=5, greedy=True, record=True, stop_at_eos=False))
    for s in steps:
        assert len(s.trace) == s.position  # the context the token was predicted from
        assert s.trace.ids.tolist() == prompt_ids + [t.token_id for t in steps[: s.index]]
        torch.testing.assert_close(torch.softmax(s.trace.logits_at([-1])[0], -1)[s.top_ids],
                                   torch.tensor(s.top_probs), atol=1e-5, rtol=1e-4)
    att = steps[-1].trace.attention(29)
    assert att.shape == (9, len(steps[-1].trace), len(steps[-1].trace))


def test_trace_of_1024_tokens_fits_the_budget(embedded_lm):
    ids = (embedded_lm.tokenizer.encode(" the quick brown fox jumps over the lazy dog") * 200)[:1024]
    trace = embedded_lm.trace(ids)
    assert len(trace) == 1024
    assert trace.nbytes <= 128 * 2**20, f"{trace.nbytes / 2**20:.1f} MiB"
    assert trace.hidden_states.shape == (31, 1024, 576)
    att = trace.attention(10)
    assert att.shape == (9, 1024, 1024)
    torch.testing.assert_close(att.sum(-1), torch.ones(9, 1024))


def assert_same_residual(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Residual streams [L + 1, T, d] computed in another order (chunks over a cache, or one pass): equal to float32
    rounding of each layer's scale. SmolLM2's stream reaches ~2e4 in a few dimensions (massive activations), where a
    rounding step is ~1e-3, so an absolute tolerance would pass or fail by luck of the summation order."""
    scale = expected.abs().amax(dim=(1, 2), keepdim=True)  # [L + 1, 1, 1]
    torch.testing.assert_close(actual / scale, expected / scale, atol=1e-5, rtol=0)


def test_a_trace_in_chunks_is_the_trace(embedded_lm):
    ids = (embedded_lm.tokenizer.encode(" the quick brown fox jumps over the lazy dog") * 40)[:300]
    chunks = list(embedded_lm.trace_in_chunks(ids, chunk=128))
    assert [c is None for c in chunks] == [True, True, False]  # 128 + 128 + 44 tokens: one yield per chunk
    whole, chunked = embedded_lm.trace(ids), chunks[-1]
    assert chunked.ids.tolist() == ids
    assert_same_residual(chunked.hidden_states, whole.hidden_states)
    torch.testing.assert_close(chunked.attention(12), whole.attention(12), atol=1e-5, rtol=1e-4)


def test_a_recording_generation_returns_the_whole_context_trace(embedded_lm):
    prompt_ids = embedded_lm.tokenizer.encode(PROMPT)
    tokens = embedded_lm.generate(prompt_ids, max_new_tokens=5, greedy=True, record=True, stop_at_eos=False)
    steps = [next(tokens) for _ in range(5)]
    with pytest.raises(StopIteration) as done:
        next(tokens)
    ids = prompt_ids + [s.token_id for s in steps]
    trace = done.value.value
    assert trace.ids.tolist() == ids  # the last token included
    assert_same_residual(trace.hidden_states, embedded_lm.trace(ids).hidden_states)
    assert len(steps[-1].trace) == len(ids) - 1  # each step's own trace is still the context it was predicted from
