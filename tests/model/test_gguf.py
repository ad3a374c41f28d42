"""A GGUF file written in the test from a tiny random model (with llama.cpp's Q/K permutation, as its
converter applies it) loads and matches transformers on the original weights."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import transformers
from tokenizers import pre_tokenizers

from model import load_model

VOCAB = 257  # the 256 byte symbols and one end-of-text token


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q_proj / k_proj rows (LlamaModel.permute)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf: transformers.PreTrainedModel, path, qtype: gguf.GGMLQuantizationType) -> None:
    cfg = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<|endoftext|>"])
    w.add_token_types([1] * 256 + [3])
    w.add_token_merges([])
    w.add_eos_token_id(256)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in hf.state_dict().items():
        data = t.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{layer[module]}.{kind}"
            if module == "self_attn.q_proj":
                data = llama_cpp_permute(data, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                data = llama_cpp_permute(data, cfg.num_key_value_heads)
        else:
            gname = names[name]
        if data.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


IDS = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]


def test_f32_gguf_matches_transformers(hf_model, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(hf_model, path, gguf.GGMLQuantizationType.F32)
    lm = load_model(path, device="cpu", dtype="float32")
    assert (lm.config.n_layers, lm.config.n_heads, lm.config.n_kv_heads) == (2, 4, 2)
    with torch.no_grad():
        ref = hf_model(torch.tensor([IDS]), output_attentions=True)
    trace = lm.trace(IDS)
    torch.testing.assert_close(trace.logits, ref.logits[0], atol=1e-4, rtol=1e-4)
    for layer in range(2):  # attention depends on q/k: a wrong un-permutation shows here
        torch.testing.assert_close(trace.attention(layer), ref.attentions[layer][0], atol=1e-4, rtol=1e-4)


def test_quantized_gguf_is_close(hf_model, tmp_path):
    path = tmp_path / "tiny-q8.gguf"
    write_gguf(hf_model, path, gguf.GGMLQuantizationType.Q8_0)
    lm = load_model(path, device="cpu", dtype="float32")
    with torch.no_grad():
        ref = hf_model(torch.tensor([IDS])).logits[0]
    got = lm.trace(IDS).logits
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
