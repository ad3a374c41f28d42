"""Model configuration: one frozen dataclass for every supported family, built from an HF config.json
or from GGUF metadata. Keys that would change the math and are not implemented raise a clear error."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# model_type in config.json / general.architecture in GGUF -> family of the generic decoder
SUPPORTED_FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gpt2": "gpt2",
    "deepseek_v3": "deepseek_v3",
    "kimi_k2": "deepseek_v3",
}
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM (SmolLM2, TinyLlama, Llama 2/3)",
    "MistralForCausalLM",
    "Qwen2ForCausalLM (Qwen2, Qwen2.5)",
    "Qwen3ForCausalLM",
    "GPT2LMHeadModel",
    "DeepseekV3ForCausalLM (DeepSeek-V3, Kimi-K2, Moonlight)",
)
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture, or a setting of it, is not implemented by the core."""


def unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{what}. Supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}.")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding: base frequency and optional scaling ("linear", "llama3" or "yarn"; "ntk", the
    NTK-aware base change, is built by the explorer's RoPE view for comparison, no checkpoint format names it)."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head Latent Attention (DeepSeek-V2/V3): queries through an optional low-rank bottleneck, keys and
    values expanded from one compressed latent per token, plus a small decoupled rotary part shared by all heads."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int
    rope_interleave: bool = True  # checkpoint stores rotary dims as interleaved pairs

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_dim + self.qk_rope_dim


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of Experts feed-forward (DeepSeek-V3): routed experts chosen per token plus always-on shared ones."""

    n_routed_experts: int
    n_shared_experts: int
    n_experts_per_tok: int
    d_ff_expert: int
    first_k_dense: int = 0
    layer_freq: int = 1
    scoring: str = "sigmoid"  # "sigmoid" | "softmax"
    topk_method: str = "noaux_tc"  # "noaux_tc" (bias used for choosing only) | "greedy" | "group_limited_greedy"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense and layer % self.layer_freq == 0


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ff: int
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-5
    positions: str = "rope"  # "rope" | "learned"
    max_positions: int = 2048
    rope: RopeConfig | None = field(default_factory=RopeConfig)
    mlp: str = "swiglu"  # "swiglu" | "plain"
    activation: str = "silu"  # silu | gelu_tanh | gelu | relu
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    sliding_window: tuple[int | None, ...] = ()  # per layer; empty = full attention everywhere
    mla: MLAConfig | None = None  # set: Multi-head Latent Attention instead of grouped-query attention
    moe: MoEConfig | None = None  # set: Mixture-of-Experts feed-forward in the layers it names
    name: str = ""

    def window(self, layer: int) -> int | None:
        return self.sliding_window[layer] if self.sliding_window else None

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and self.moe.is_moe_layer(layer)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], name: str = "") -> "ModelConfig":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_FAMILIES:
            archs = cfg.get("architectures") or [model_type]
            raise unsupported(f"unsupported architecture {archs[0]!r} (model_type {model_type!r})")
        family = SUPPORTED_FAMILIES[model_type]
        if family == "gpt2":
            return _gpt2_from_hf(cfg, name)
        if family == "deepseek_v3":
            return _deepseek_from_hf(cfg, name)
        return _llama_like_from_hf(cfg, family, name)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], has_output_weight: bool, name: str = "") -> "ModelConfig":
        """GGUF keys are `<arch>.<key>`; the tensor list tells whether the head is tied."""
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_FAMILIES:
            raise unsupported(f"unsupported GGUF architecture {arch!r}")
        family = SUPPORTED_FAMILIES[arch]

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{key}", default)

        n_heads = int(get("attention.head_count"))
        d_model = int(get("embedding_length"))
        vocab = int(get("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])) or 0))
        common = dict(
            family=family, vocab_size=vocab, d_model=d_model, n_layers=int(get("block_count")),
            n_heads=n_heads, n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            d_head=int(get("attention.key_length", d_model // n_heads)), d_ff=int(get("feed_forward_length")),
            max_positions=int(get("context_length", 2048)), tie_embeddings=not has_output_weight, name=name,
        )
        if family == "gpt2":
            return cls(**common, norm="layer", norm_eps=float(get("attention.layer_norm_epsilon", 1e-5)),
                       positions="learned", rope=None, mlp="plain", activation="gelu_tanh",
                       qkv_bias=True, out_bias=True, mlp_bias=True)
        rope_dim = get("rope.dimension_count")
        if rope_dim is not None and int(rope_dim) != common["d_head"]:
            raise unsupported(f"partial rotary embeddings (rope dim {rope_dim} of head dim {common['d_head']})")
        scaling = get("rope.scaling.type", "none")
        rope = RopeConfig(theta=float(get("rope.freq_base", 10000.0)))
        if scaling == "linear":
            rope = RopeConfig(theta=rope.theta, kind="linear", factor=float(get("rope.scaling.factor")))
        elif scaling not in ("none", None):
            raise unsupported(f"GGUF rope scaling {scaling!r}")
        window = get("attention.sliding_window")
        return cls(**common, norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)), rope=rope,
                   qkv_bias=family == "qwen2", qk_norm=family == "qwen3",
                   sliding_window=(int(window),) * common["n_layers"] if window else ())


def _rope_from_hf(cfg: Mapping[str, Any]) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); older files `rope_scaling` + `rope_theta`
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeConfig(
            theta=theta, kind="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(params["original_max_position_embeddings"]),
        )
    if kind == "yarn":
        factor = float(params["factor"])
        return RopeConfig(
            theta=theta, kind="yarn", factor=factor,
            original_max_positions=int(params["original_max_position_embeddings"]),
            beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
            mscale=float(params.get("mscale") or 0), mscale_all_dim=float(params.get("mscale_all_dim") or 0),
            attention_factor=params.get("attention_factor"), truncate=bool(params.get("truncate", True)),
        )
    raise unsupported(f"rope scaling {kind!r} is not implemented (default, linear, llama3, yarn are)")


def _llama_like_from_hf(cfg: Mapping[str, Any], family: str, name: str) -> ModelConfig:
    if cfg.get("hidden_act", "silu") != "silu":
        raise unsupported(f"activation {cfg['hidden_act']!r} in a gated MLP")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise unsupported("partial rotary embeddings")
    n_heads = int(cfg["num_attention_heads"])
    d_model = int(cfg["hidden_size"])
    n_layers = int(cfg["num_hidden_layers"])
    d_head = int(cfg.get("head_dim") or d_model // n_heads)
    attention_bias = bool(cfg.get("attention_bias", False))
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if family == "llama" and window:  # Mistral: every layer slides
        windows: tuple[int | None, ...] = (int(window),) * n_layers
    elif family in ("qwen2", "qwen3") and window and cfg.get("use_sliding_window"):
        windows = tuple(int(window) if t == "sliding_attention" else None for t in layer_types) if layer_types else ()
        if not layer_types:
            raise unsupported("Qwen sliding-window attention without layer_types")
    else:
        windows = ()
    return ModelConfig(
        family=family, vocab_size=int(cfg["vocab_size"]), d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads), d_head=d_head,
        d_ff=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_positions=int(cfg.get("max_position_embeddings", 2048)), rope=_rope_from_hf(cfg),
        qkv_bias=attention_bias or family == "qwen2", out_bias=attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)), qk_norm=family == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), sliding_window=windows, name=name,
    )


def _gpt2_from_hf(cfg: Mapping[str, Any], name: str) -> ModelConfig:
    if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("add_cross_attention"):
        raise unsupported("GPT-2 with scale_attn_by_inverse_layer_idx or cross attention")
    if not cfg.get("scale_attn_weights", True):
        raise unsupported("GPT-2 without attention scaling")
    act = cfg.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise unsupported(f"GPT-2 activation {act!r}")
    d_model, n_heads = int(cfg["n_embd"]), int(cfg["n_head"])
    return ModelConfig(
        family="gpt2", vocab_size=int(cfg["vocab_size"]), d_model=d_model, n_layers=int(cfg["n_layer"]),
        n_heads=n_heads, n_kv_heads=n_heads, d_head=d_model // n_heads, d_ff=int(cfg.get("n_inner") or 4 * d_model),
        norm="layer", norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)), positions="learned",
        max_positions=int(cfg.get("n_positions", 1024)), rope=None, mlp="plain", activation=GPT2_ACTIVATIONS[act],
        qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        name=name,
    )


def _deepseek_from_hf(cfg: Mapping[str, Any], name: str) -> ModelConfig:
    if cfg.get("hidden_act", "silu") != "silu":
        raise unsupported(f"activation {cfg['hidden_act']!r} in a gated MLP")
    scoring = cfg.get("scoring_func", "sigmoid")
    topk_method = cfg.get("topk_method", "noaux_tc")
    if scoring not in ("sigmoid", "softmax") or topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
        raise unsupported(f"MoE routing {scoring!r} / {topk_method!r}")
    n_heads = int(cfg["num_attention_heads"])
    q_lora = cfg.get("q_lora_rank")
    mla = MLAConfig(
        q_lora_rank=int(q_lora) if q_lora else None, kv_lora_rank=int(cfg["kv_lora_rank"]),
        qk_nope_dim=int(cfg["qk_nope_head_dim"]), qk_rope_dim=int(cfg["qk_rope_head_dim"]),
        v_head_dim=int(cfg["v_head_dim"]), rope_interleave=bool(cfg.get("rope_interleave", True)),
    )
    n_routed = cfg.get("n_routed_experts")
    moe = MoEConfig(
        n_routed_experts=int(n_routed), n_shared_experts=int(cfg.get("n_shared_experts") or 0),
        n_experts_per_tok=int(cfg["num_experts_per_tok"]), d_ff_expert=int(cfg["moe_intermediate_size"]),
        first_k_dense=int(cfg.get("first_k_dense_replace") or 0), layer_freq=int(cfg.get("moe_layer_freq") or 1),
        scoring=scoring, topk_method=topk_method, n_group=int(cfg.get("n_group") or 1),
        topk_group=int(cfg.get("topk_group") or 1), norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
    ) if n_routed else None
    return ModelConfig(
        family="deepseek_v3", vocab_size=int(cfg["vocab_size"]), d_model=int(cfg["hidden_size"]),
        n_layers=int(cfg["num_hidden_layers"]), n_heads=n_heads, n_kv_heads=n_heads, d_head=mla.qk_head_dim,
        d_ff=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_positions=int(cfg.get("max_position_embeddings", 4096)), rope=_rope_from_hf(cfg),
        qkv_bias=bool(cfg.get("attention_bias", False)), out_bias=bool(cfg.get("attention_bias", False)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), mla=mla, moe=moe, name=name,
    )
