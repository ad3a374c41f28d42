"""Tiny random models of every supported family, built in the test with transformers as the oracle, and
initialised so that the oracle can see errors.

transformers' default initialisation (std 0.02) leaves attention within a few hundredths of uniform causal
attention and every activation in its linear range: a flipped RoPE sign, the exact GELU for the tanh one or an
epsilon in the wrong place then moves the logits by a few 1e-6, under any tolerance. Here every matrix is drawn with
std GAIN / sqrt(fan_in), so each projection of a unit-scale input has std GAIN: attention scores have std about
GAIN**2 (peaked rows) and MLP pre-activations reach well into the curved part of SiLU and GELU. Norm weights and
biases are random, and norm epsilons are large (EPS), so that where an epsilon is added changes the numbers.
`check_wide` (used by the tests) asserts that this holds for the model actually built."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import transformers
from transformers.pytorch_utils import Conv1D

VOCAB = 300
GAIN = 2.0
EPS = 0.05  # a norm epsilon large enough that adding it elsewhere (or another one) shows in the outputs
# float32 tolerances, as a fraction of the compared tensor's largest magnitude: reordered float32 arithmetic stays
# near 1e-6 (attention probabilities, sharp functions of scores of size ~10, near 1e-5); planted bugs move logits by
# 1e-4 (the exact GELU for the tanh one) to 1 (a RoPE sign, a misplaced epsilon)
TOL = 1e-5
ATTN_TOL = 3e-5
IDS = torch.randint(0, VOCAB, (14,), generator=torch.Generator().manual_seed(1)).tolist()

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=128, rms_norm_eps=EPS)

FAMILIES = {
    "llama-gqa-untied": (transformers.LlamaConfig, dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-tied-llama3-rope": (transformers.LlamaConfig, dict(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    "mistral-sliding-window": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=5)),
    # YaRN without mscale: cos and sin are scaled by 0.1 ln(factor) + 1
    "qwen2-biases-tied-yarn": (transformers.Qwen2Config, dict(
        num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32))),
    "qwen3-qk-norm": (transformers.Qwen3Config, dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)),
    "gpt2": (transformers.GPT2Config, dict(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                                           layer_norm_epsilon=EPS)),
    "gpt2-exact-gelu": (transformers.GPT2Config, dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                      n_positions=128, layer_norm_epsilon=EPS,
                                                      activation_function="gelu")),
}

DEEPSEEK_BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
                     qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, max_position_embeddings=256,
                     tie_word_embeddings=False, rms_norm_eps=EPS)
DEEPSEEK = {
    # Kimi-K2's routing: sigmoid scores, bias for choosing only, one group, one shared expert, first layer dense,
    # YaRN with mscale = mscale_all_dim (the softmax scale grows by mscale(factor)**2, cos/sin are unscaled)
    "kimi-k2-routing": dict(q_lora_rank=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
                            first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True,
                            routed_scaling_factor=2.827,
                            rope_parameters=dict(rope_type="yarn", rope_theta=50000.0, factor=8.0,
                                                 original_max_position_embeddings=32, beta_fast=1.0, beta_slow=1.0,
                                                 mscale=1.0, mscale_all_dim=1.0)),
    # no query bottleneck, group-limited routing over 4 groups, two shared experts, unnormalised weights, YaRN
    # with mscale != mscale_all_dim (cos/sin scaled too)
    "no-q-lora-grouped": dict(q_lora_rank=None, n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=3,
                              first_k_dense_replace=0, n_group=4, topk_group=2, norm_topk_prob=False,
                              routed_scaling_factor=1.5,
                              rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0,
                                                   original_max_position_embeddings=32, mscale=1.0,
                                                   mscale_all_dim=0.5)),
}


def _fan_in(module: torch.nn.Module, p: torch.Tensor) -> int:
    if isinstance(module, Conv1D):  # GPT-2 stores [in, out]
        return p.shape[0]
    return p.shape[-1]  # nn.Linear [out, in]; stacked experts [E, out, in]; the router [E, in]


@torch.no_grad()
def widen(hf: transformers.PreTrainedModel, seed: int = 0) -> transformers.PreTrainedModel:
    """Redraw every weight of hf (see the module docstring), in place."""
    g = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g)

    seen: set[int] = set()
    for mname, module in hf.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # a tied head is the embedding, drawn once
                continue
            seen.add(id(p))
            if isinstance(module, torch.nn.Embedding):
                p.copy_(randn(p))  # unit-scale rows, as a norm would make them
            elif p.dim() >= 2:
                p.copy_(randn(p) * GAIN / math.sqrt(_fan_in(module, p)))
            elif mname.endswith(("q_norm", "k_norm")):  # Qwen3 normalises q and k per head: scale them back up
                p.copy_(GAIN * (1 + 0.3 * randn(p)))
            elif "norm" in mname or "ln_" in mname:
                p.copy_(1 + 0.3 * randn(p) if pname == "weight" else 0.3 * randn(p))
            else:  # biases
                p.copy_(0.5 * randn(p))
        for bname, b in module.named_buffers(recurse=False):
            if bname == "e_score_correction_bias":
                b.copy_(0.1 * randn(b))
    return hf


def build_hf(name: str, **overrides) -> transformers.PreTrainedModel:
    """The float32 transformers model of family `name` (a key of FAMILIES or DEEPSEEK), widely initialised."""
    if name in DEEPSEEK:
        cfg = transformers.DeepseekV3Config(**{**DEEPSEEK_BASE, **DEEPSEEK[name], **overrides})
    else:
        cls, extra = FAMILIES[name]
        cfg = cls(**(extra if cls is transformers.GPT2Config else {**BASE, **extra}) | overrides)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    return widen(hf)


def run_hf(hf: transformers.PreTrainedModel, ids: list[int]):
    """transformers' forward over ids with attentions and hidden states."""
    with torch.no_grad():
        return hf(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)


def activation_inputs(hf: transformers.PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """Every value that entered an MLP activation function (SiLU, GELU) in transformers' forward over ids."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().flatten()))
             for name, m in hf.named_modules() if name.endswith(("act_fn", "mlp.act"))]
    try:
        run_hf(hf, ids)
    finally:
        for h in hooks:
            h.remove()
    assert seen, "no activation function found to hook"
    return torch.cat(seen)


def check_wide(hf: transformers.PreTrainedModel, ids: list[int] = IDS) -> None:
    """Assert that the random model can show errors: attention rows are peaked, not near uniform, and the MLP
    activations work in their curved range, not the linear one around 0."""
    ref = run_hf(hf, ids)
    t = len(ids)
    uniform = 1.0 / torch.arange(1, t + 1, dtype=torch.float32)  # the largest weight of uniform causal attention
    for layer, att in enumerate(ref.attentions):
        peak = att[0].float().amax(-1)  # [H, T]
        # on average over heads and the rows past the first few, the largest weight is far above uniform
        assert peak[:, 4:].mean() > 3 * uniform[4:].mean(), f"layer {layer}: attention near uniform"
        assert peak[:, 4:].mean() > 0.5, f"layer {layer}: attention not peaked"
    x = activation_inputs(hf, ids)
    # SiLU and GELU bend within about |x| < 3: most inputs should be there and not at 0
    assert x.std() > 1.0, f"activation inputs too narrow (std {x.std():.3f})"
    assert ((x.abs() > 0.5) & (x.abs() < 4)).float().mean() > 0.4


def hf_layers(hf: transformers.PreTrainedModel) -> torch.nn.ModuleList:
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


# the core's BlockInternals field -> the transformers submodule (Llama-like, GPT-2) whose output it is
PARTS = {"attn_in": ("input_layernorm", "ln_1"), "attn_out": ("self_attn", "attn"),
         "mlp_in": ("post_attention_layernorm", "ln_2"), "mlp_out": ("mlp",)}
# DeepSeek-V3: the compressed KV (latent, then the rotary key part) before its norm and the latent after it, the
# router's (logits, weights, experts) and the shared experts' output
MOE_PARTS = {"kv_a": "self_attn.kv_a_proj_with_mqa", "latent": "self_attn.kv_a_layernorm", "gate": "mlp.gate",
             "shared": "mlp.shared_experts"}


def capture(hf: transformers.PreTrainedModel, ids: list[int]):
    """transformers' forward over ids (attentions, hidden states) and, per layer, what its submodules returned
    (see PARTS and MOE_PARTS), taken with forward hooks; `final_in` is what entered the final norm."""
    layers: list[dict] = [{} for _ in hf_layers(hf)]
    seen: dict = {}
    hooks = []

    def keep(where: dict, key: str):
        def hook(module, args, out):
            if key == "gate":  # (router logits [T, E], weights [T, k], experts [T, k]) in float32
                where[key] = tuple(o.detach() for o in out)
            else:  # attention modules return (output, probabilities)
                where[key] = (out[0] if isinstance(out, tuple) else out).detach()[0]
        return hook

    for i, layer in enumerate(hf_layers(hf)):
        modules = dict(layer.named_modules())
        for field, names in PARTS.items():
            name = next(n for n in names if n in modules)
            hooks.append(modules[name].register_forward_hook(keep(layers[i], field)))
        for field, name in MOE_PARTS.items():
            if name in modules:
                hooks.append(modules[name].register_forward_hook(keep(layers[i], field)))
    final = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    hooks.append(final.register_forward_hook(lambda m, args, out: seen.__setitem__("final_in", args[0].detach()[0])))
    try:
        out = run_hf(hf, ids)
    finally:
        for h in hooks:
            h.remove()
    out.layers, out.final_in = layers, seen["final_in"]
    return out


def save(hf: transformers.PreTrainedModel, folder: Path) -> Path:
    from tests.conftest import write_tiny_tokenizer

    hf.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return folder


def close(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5, msg: str = "") -> None:
    """got equals ref within tol times ref's largest magnitude (float32 parity: the same math in another order)."""
    ref = ref.float()
    scale = float(ref.abs().max()) or 1.0
    err = float((got.float() - ref).abs().max())
    assert err <= tol * scale, f"{msg}: max difference {err:.3g} > {tol:g} x {scale:.3g}"
