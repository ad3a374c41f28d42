"""The decoder's math as pure functions: norms, rotary embeddings, attention, feed-forward activations.
Modules in decoder.py hold parameters and call these. Conventions follow transformers (rotate-half RoPE,
float32 norms and softmax), which the tests use as the oracle."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import RopeConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

    The statistics are taken in float32 whatever the compute dtype, then the result is cast back before the
    weight multiplies it (as transformers does): in bf16, squaring and averaging 576 values would lose digits."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm (GPT-2): (x - mean) / sqrt(var + eps) * weight + bias, over the last dimension."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# Rotary position embedding (RoPE). Each pair of dimensions (i, i + d/2) of a query or key is rotated by the angle
# position * inv_freq[i]; the dot product of a rotated query and key then depends only on their distance.
# Scalings stretch the slow-turning frequencies so a model reaches past the context it was trained on.

def rope_inv_freq(rope: RopeConfig, d_rot: int) -> torch.Tensor:
    """Inverse frequencies [d_rot/2] in float32: theta^(-2i/d_rot), with linear, NTK-aware, llama3 or yarn scaling."""
    theta = rope.theta
    if rope.kind == "ntk":  # NTK-aware: a larger base; pair 0 keeps its frequency, the slowest turns factor x slower
        theta = rope.theta * rope.factor ** (d_rot / (d_rot - 2))
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_rot, 2, dtype=torch.int64).float() / d_rot))
    if rope.kind == "linear":  # every frequency slowed by factor: positions interpolated into the trained range
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        # wavelengths longer than the original context are stretched by `factor`, short ones kept,
        # the band between blended smoothly (Llama 3.1's recipe)
        low_wavelen = rope.original_max_positions / rope.low_freq_factor
        high_wavelen = rope.original_max_positions / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    if rope.kind == "yarn":
        return yarn_inv_freq(rope, inv_freq)
    return inv_freq


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, d_rot] for the given positions, computed in float32 then cast (times scale: see YaRN)."""
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, d_rot/2]
    emb = torch.cat((angles, angles), dim=-1)  # [T, d_rot]: dimension i and i + d_rot/2 share an angle
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1), halves of the last dimension: the 90-degree turn of each pair (x1[i], x2[i])."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin: each pair rotated by its angle. x [B, H, T, d_rot]; cos, sin [T, d_rot]."""
    return x * cos + rotate_half(x) * sin


# YaRN (DeepSeek-V3, Kimi-K2), in its three parts: (1) frequencies that turn fewer than beta_slow times over the
# original context are interpolated (divided by factor), those that turn more than beta_fast times are kept, a
# linear ramp blends the dimensions between; (2) cos and sin are scaled by an attention factor, which sharpens the
# softmax to make up for the longer context; (3) MLA also multiplies its softmax scale by mscale(factor,
# mscale_all_dim)^2, which with mscale == mscale_all_dim cancels (2) (Kimi-K2's config does exactly that).

def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(rope: RopeConfig, inv_freq: torch.Tensor) -> torch.Tensor:
    """(1): the unscaled inverse frequencies [d_rot/2], interpolated below the ramp, kept above it."""
    d_rot = 2 * inv_freq.shape[0]

    def dim_turning(rotations: float) -> float:  # the dimension that turns `rotations` times over the context
        return d_rot * math.log(rope.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = dim_turning(rope.beta_fast), dim_turning(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d_rot - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(d_rot // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    return inv_freq / rope.factor * (1 - keep) + inv_freq * keep


def rope_attention_factor(rope: RopeConfig) -> float:
    """(2): YaRN scales cos and sin by this factor; 1 for the other kinds."""
    if rope.kind != "yarn":
        return 1.0
    if rope.attention_factor is not None:
        return float(rope.attention_factor)
    if rope.mscale and rope.mscale_all_dim:
        return yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim)
    return yarn_mscale(rope.factor)


def yarn_softmax_scale(rope: RopeConfig | None) -> float:
    """(3): the factor MLA's softmax scale is multiplied by (1 without YaRN or without mscale_all_dim)."""
    if rope is None or rope.kind != "yarn" or not rope.mscale_all_dim:
        return 1.0
    return yarn_mscale(rope.factor, rope.mscale_all_dim) ** 2


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv * n_rep, T, D]: each KV head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def attention_mask(q_positions: torch.Tensor, n_keys: int, window: int | None) -> torch.Tensor:
    """Boolean [Tq, Tk], True where query i may attend to key j: causal, optionally a sliding window."""
    k = torch.arange(n_keys, device=q_positions.device)[None, :]
    q = q_positions[:, None]
    allowed = k <= q
    if window is not None:
        allowed &= k > q - window
    return allowed


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    scale: float,
    window: int | None = None,
    need_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal attention, softmax(q k^T * scale, keys after the query masked out) v.
    q [B, H, Tq, Dk], k [B, Hkv, Tk, Dk], v [B, Hkv, Tk, Dv] -> [B, H, Tq, Dv].

    With need_probs the probabilities [B, H, Tq, Tk] are computed eagerly (float32 softmax) and returned;
    without, torch's fused scaled_dot_product_attention does the same math. Keys are the positions 0..Tk-1."""
    n_rep = q.shape[1] // k.shape[1]
    n_q, n_k = q.shape[2], k.shape[2]
    if not need_probs:
        if n_q == 1 and window is None:
            mask = None  # one new token at the end sees every cached key
            causal = False
        elif n_q == n_k and window is None:
            mask, causal = None, True
        else:
            mask, causal = attention_mask(q_positions, n_k, window), False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                             enable_gqa=n_rep > 1)
        return out, None
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, H, Tq, Tk]
    scores = scores.masked_fill(~attention_mask(q_positions, n_k, window), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.to(v.dtype), v), probs


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The MLP's nonlinearity: SiLU x*sigmoid(x) (SwiGLU models), GELU exact or its tanh approximation (GPT-2), ReLU."""
    if kind == "silu":
        return F.silu(x)
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "gelu":
        return F.gelu(x)
    if kind == "relu":
        return F.relu(x)
    raise ValueError(f"unknown activation {kind!r}")


def route_experts(
    logits: torch.Tensor,  # [N, E] float32
    bias: torch.Tensor | None,  # [E] e_score_correction_bias
    scoring: str,
    topk_method: str,
    k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    scaling: float,
    allowed: torch.Tensor | None = None,  # [E] bool: the experts that may be chosen (None: all)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing: (scores [N, E], chosen experts [N, k], their weights [N, k]), most weight first.

    noaux_tc adds the load-balancing bias to the scores for choosing only; the weights come from the raw scores.
    With n_group > 1 only the topk_group best groups of experts (by their two best scores) may be chosen.
    An expert not allowed (ablated) never wins a choice, nor counts among its group's best scores."""
    scores = torch.sigmoid(logits) if scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    choice = scores + bias if topk_method == "noaux_tc" and bias is not None else scores
    if allowed is not None:
        choice = choice.masked_fill(~allowed, float("-inf"))
    if n_group > 1 and topk_method != "greedy":
        grouped = choice.view(choice.shape[0], n_group, -1)
        group_scores = grouped.topk(2, dim=-1)[0].sum(-1) if topk_method == "noaux_tc" else grouped.max(-1)[0]
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(topk_group, dim=-1)[1], True)
        choice = choice.masked_fill(~keep[:, :, None].expand_as(grouped).reshape_as(choice), float("-inf"))
    experts = choice.topk(k, dim=-1)[1]
    weights = scores.gather(1, experts)
    if norm_topk_prob and k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    weights = weights * scaling
    order = weights.argsort(dim=-1, descending=True)
    return scores, experts.gather(1, order), weights.gather(1, order)
