"""A GGUF file written in the test from a tiny random Llama (initialised wide, see families.py; with llama.cpp's Q/K
permutation, as its converter applies it) loads and matches transformers. For a quantized file the oracle is
transformers on the dequantized weights, so the comparison stays tight: a skipped un-permutation, a wrong
dequantization or a flipped RoPE sign shows, where a comparison with the unquantized model would have to allow
the quantization error. Decoding (which reads the quantized blocks themselves where the kernels are built) is
compared too."""
from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch
import transformers
from tokenizers import pre_tokenizers

from model import load_model
from tests.model.families import ATTN_TOL, EPS, TOL, capture, check_wide, close, widen

VOCAB = 257  # the 256 byte symbols and one end-of-text token
Q = gguf.GGMLQuantizationType
IDS = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 72]


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
        if data.ndim == 2 and qtype != Q.F32:
            w.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequantized(hf: transformers.PreTrainedModel, qtype: gguf.GGMLQuantizationType) -> transformers.PreTrainedModel:
    """hf with every matrix replaced by what the file holds for it, dequantized. Blocks run along rows, so
    quantizing llama.cpp's row-permuted q/k gives the permuted rows of the quantized matrix: no un-permutation."""
    out = copy.deepcopy(hf)
    with torch.no_grad():
        for p in out.parameters():
            if p.dim() == 2:
                q = gguf.quants.quantize(p.numpy().astype(np.float32), qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype)))
    return out


@pytest.fixture(scope="module")
def hf_model():
    # every matrix has a multiple of 32 columns (Q4_1 and Q8_0 blocks)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                   rms_norm_eps=EPS)
    torch.manual_seed(0)
    return widen(transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval())


def test_random_model_can_show_errors(hf_model):
    check_wide(hf_model, IDS)


def compare(lm, hf) -> None:
    ref = capture(hf, IDS)
    trace = lm.trace(IDS)
    close(trace.logits, ref.logits[0], TOL, "logits")
    for layer in range(lm.config.n_layers):  # attention depends on q/k: a wrong un-permutation shows here
        close(trace.attention(layer), ref.attentions[layer][0], ATTN_TOL, f"attention {layer}")
        close(trace.hidden_states[layer], ref.hidden_states[layer][0], TOL, f"hidden state {layer}")


def test_f32_gguf_matches_transformers(hf_model, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(hf_model, path, Q.F32)
    lm = load_model(path, device="cpu", dtype="float32")
    assert (lm.config.n_layers, lm.config.n_heads, lm.config.n_kv_heads) == (2, 4, 2)
    assert lm.config.norm_eps == pytest.approx(EPS)
    compare(lm, hf_model)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=["q8_0", "q4_1"])
def test_quantized_gguf_matches_transformers_on_the_dequantized_weights(hf_model, tmp_path, qtype):
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(hf_model, path, qtype)
    lm = load_model(path, device="cpu", dtype="float32")
    reference = dequantized(hf_model, qtype)
    with torch.no_grad():  # the quantization is not lost in the tolerance
        moved = (reference(torch.tensor([IDS])).logits - hf_model(torch.tensor([IDS])).logits).abs().max()
    assert moved > 100 * TOL * hf_model(torch.tensor([IDS])).logits.abs().max()
    compare(lm, reference)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=["q8_0", "q4_1"])
def test_quantized_gguf_decoding_matches_transformers(hf_model, tmp_path, qtype):
    """Cached decoding (a block step reads the file's quantized blocks where the kernels are built) against
    transformers' full forward over the same text on the dequantized weights, and its greedy choices."""
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(hf_model, path, qtype)
    lm = load_model(path, device="cpu", dtype="float32")
    reference = dequantized(hf_model, qtype)
    steps = list(lm.generate(IDS[:5], max_new_tokens=9, greedy=True, record=True, stop_at_eos=False))
    full = IDS[:5] + [s.token_id for s in steps]
    with torch.no_grad():
        ref_logits = reference(torch.tensor([full])).logits[0]
        ref_tokens = reference.generate(torch.tensor([IDS[:5]]), max_new_tokens=9, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)[0, 5:].tolist()
    for s in steps:
        close(s.trace.logits_at([-1])[0], ref_logits[s.position - 1], TOL, f"step {s.index}")
    assert [s.token_id for s in steps] == ref_tokens
