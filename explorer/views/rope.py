"""The RoPE view: how fast each pair of a head's dimensions turns, how far the selected token's pairs have turned, and
q·k over relative distance under the model's own scaling beside no scaling, linear, NTK-aware and YaRN stretched to a
chosen context length. Every number comes from the core's rope functions (model/layers.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from model.config import ModelConfig, RopeConfig
from model.decoder import Decoder
from model.layers import apply_rope, rope_attention_factor, rope_cos_sin, rope_inv_freq, yarn_softmax_scale
from model.trace import Trace

from . import style

SCALINGS = ("none", "linear", "ntk", "yarn")
NAMES = {"none": "No scaling", "linear": "Linear", "ntk": "NTK-aware", "yarn": "YaRN"}
COLOURS = {"none": "#4C78A8", "linear": "#F58518", "ntk": "#54A24B", "yarn": "#B279A2"}
OWN_COLOUR = "#9A9A9A"
FACTORS = (1, 2, 4, 8, 16, 32, 64)  # the context-length control: × the trained length
DEFAULT_FACTOR = 4.0
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0  # the YaRN paper's defaults (LLaMA), used for the comparison
N_DISTANCES = 360
MUTED = "#666666"


@dataclass(frozen=True)
class RopeNumbers:
    """What the view draws, for one model (or config) and one chosen stretch of its trained context."""

    name: str
    d_rot: int  # rotated dimensions per head (MLA: the decoupled rotary part)
    trained: int  # the context the frequencies were made for: a stretch multiplies it
    factor: float  # the chosen context is factor × trained
    ropes: dict[str, RopeConfig]  # "own" (the model's) and each of SCALINGS at this factor
    inv_freq: dict[str, torch.Tensor]  # [d_rot/2] radians per token, float32, per key of ropes
    position: int  # whose angles are shown
    angles: torch.Tensor  # [d_rot/2] position × the model's own inv_freq: radians turned (not wrapped)
    distances: torch.Tensor  # [n] int64, 1 .. the chosen context
    scores: dict[str, torch.Tensor]  # [n] q·k / (|q| |k|) at each distance, per key of ropes (softmax factor in)
    source: str  # which q and k, in words (escaped: token text is shown through style.token_label)

    @property
    def context(self) -> int:
        return round(self.factor * self.trained)


def rotated_dims(cfg: ModelConfig) -> int:
    """Dimensions RoPE turns in each query and key: the whole head, or MLA's decoupled rotary part."""
    return cfg.mla.qk_rope_dim if cfg.mla is not None else cfg.d_head


def trained_length(cfg: ModelConfig) -> int:
    """The context the model's frequencies were made for, before any scaling: what a stretch multiplies."""
    rope = cfg.rope
    if rope.kind in ("yarn", "llama3"):
        return rope.original_max_positions
    if rope.kind == "linear":
        return max(1, round(cfg.max_positions / rope.factor))
    return cfg.max_positions


def default_factor(cfg: ModelConfig) -> float:
    """The stretch shown until one is chosen: the model's own (Kimi-K2: ×32), or ×4 for a model without scaling."""
    return cfg.rope.factor if cfg.rope is not None and cfg.rope.kind != "default" else DEFAULT_FACTOR


def comparison_ropes(theta: float, trained: int, factor: float) -> dict[str, RopeConfig]:
    """No scaling, linear, NTK-aware and YaRN (the paper's β and attention factor) stretched factor × trained."""
    return {
        "none": RopeConfig(theta=theta),
        "linear": RopeConfig(theta=theta, kind="linear", factor=factor),
        "ntk": RopeConfig(theta=theta, kind="ntk", factor=factor),
        "yarn": RopeConfig(theta=theta, kind="yarn", factor=factor, original_max_positions=trained,
                           beta_fast=YARN_BETA_FAST, beta_slow=YARN_BETA_SLOW),
    }


def sample_distances(context: int, n: int = N_DISTANCES) -> torch.Tensor:
    """About n integer distances from 1 to context, evenly spaced on a log scale (each once)."""
    grid = torch.logspace(0, math.log10(max(context, 2)), n, dtype=torch.float64).round().long()
    return torch.unique(torch.cat([grid, torch.tensor([context])]))


@torch.inference_mode()
def head_query_key(decoder: Decoder, trace: Trace, layer: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The query and key of every head at `position` in `layer`, before their rotation: ([H, d_rot], [H, d_rot])
    float32, each head's key beside its query (grouped-query heads share one; MLA's rotary key is shared by all).
    Computed by the block's own modules from the residual stream entering it."""
    block = decoder.blocks[layer]
    attn = block.attn
    w = decoder.embed.weight
    x = block.attn_norm(trace.residual[layer, position].to(device=w.device, dtype=w.dtype)[None])  # [1, d_model]
    cfg = decoder.config
    h = cfg.n_heads
    if cfg.mla is not None:
        mla = cfg.mla
        q = attn.wq_b(attn.q_a_norm(attn.wq_a(x))) if mla.q_lora_rank else attn.wq(x)
        q = q.view(h, mla.qk_head_dim)[:, mla.qk_nope_dim:]
        k = attn.latent(x)[1].expand(h, mla.qk_rope_dim)
    else:
        q = attn.wq(x).view(h, cfg.d_head)
        k = attn.wk(x).view(cfg.n_kv_heads, cfg.d_head)
        if attn.q_norm is not None:  # Qwen3 normalises each head before rotating it
            q, k = attn.q_norm(q), attn.k_norm(k)
        k = k.repeat_interleave(h // cfg.n_kv_heads, dim=0)  # query head i reads KV head i // group
    return q.float().cpu(), k.float().cpu()


def qk_by_distance(rope: RopeConfig, q: torch.Tensor, k: torch.Tensor, distances: torch.Tensor,
                   latent: bool = False) -> torch.Tensor:
    """q·k / (|q| |k|) [n] of a query Δ tokens after its key, for each Δ in distances, averaged over the rows of q
    and k ([H, d_rot], one per head), rotated by the core's apply_rope (a query at m and a key at m - Δ give the same
    score as a query at Δ and a key at 0). latent: MLA, whose softmax scale also grows with YaRN's mscale."""
    d_rot = q.shape[-1]
    inv_freq = rope_inv_freq(rope, d_rot)
    scale = rope_attention_factor(rope)
    cos, sin = rope_cos_sin(inv_freq, distances, torch.float32, scale)  # [n, d_rot]
    cos0, sin0 = rope_cos_sin(inv_freq, torch.zeros(1, dtype=torch.long), torch.float32, scale)
    q_rot = apply_rope(q[:, None, :], cos, sin)  # [H, n, d_rot]
    k_rot = apply_rope(k[:, None, :], cos0, sin0)  # [H, 1, d_rot]
    dots = (q_rot * k_rot).sum(-1) / (q.norm(dim=-1) * k.norm(dim=-1)).clamp_min(1e-12)[:, None]  # [H, n]
    return dots.mean(0) * (yarn_softmax_scale(rope) if latent else 1.0)


def score_gain(rope: RopeConfig, latent: bool = False) -> float:
    """How much a scaling multiplies every q·k: its attention factor on cos and sin, squared (q and k both turn), and
    for MLA the softmax scale's YaRN factor."""
    return rope_attention_factor(rope) ** 2 * (yarn_softmax_scale(rope) if latent else 1.0)


def rope_numbers(cfg: ModelConfig, factor: float, position: int | None = None, q: torch.Tensor | None = None,
                 k: torch.Tensor | None = None, layer: int = 0, head: int | None = None,
                 token: str = "") -> RopeNumbers:
    """The view's numbers. position: whose angles (None: the last trained position); q, k [H, d_rot]: the real query
    and key of `token` in `layer`, one head's or every head's (head None: their curves averaged); without them the
    standard curve, q = k = (1, …, 1), which shows RoPE alone."""
    if cfg.rope is None:
        raise ValueError(f"{cfg.name or 'this model'} has no rotary embedding: its positions are learned vectors")
    if not factor >= 1:
        raise ValueError(f"the context stretch must be at least ×1, not {factor}")
    d_rot, trained = rotated_dims(cfg), trained_length(cfg)
    ropes = {"own": cfg.rope, **comparison_ropes(cfg.rope.theta, trained, factor)}
    inv_freq = {key: rope_inv_freq(r, d_rot) for key, r in ropes.items()}
    if position is None:
        position = trained - 1
    angles = torch.tensor([float(position)]) * inv_freq["own"]  # as rope_cos_sin forms them: float32
    if q is None or k is None:
        q = k = torch.ones(1, d_rot)
        source = "the standard curve, q = k = (1, …, 1)"
    else:
        who = f"head {head}" if head is not None else f"{q.shape[0]} heads averaged"
        shown = style.token_label(token, 16)
        source = f"layer {layer}, {who}, q and k of “{shown}” (position {position:,}) Δ apart"
    distances = sample_distances(round(factor * trained))
    scores = {key: qk_by_distance(r, q, k, distances, cfg.mla is not None) for key, r in ropes.items()}
    return RopeNumbers(cfg.name, d_rot, trained, float(factor), ropes, inv_freq, position, angles, distances, scores,
                       source)


def _n(value: float) -> str:
    return f"{value:,.0f}"


def scaling_label(rope: RopeConfig) -> str:
    """'none', 'linear ×4', 'YaRN ×32 from 4,096'."""
    if rope.kind == "default":
        return "none"
    name = {"linear": "linear", "ntk": "NTK-aware", "yarn": "YaRN", "llama3": "Llama 3"}.get(rope.kind, rope.kind)
    origin = f" from {_n(rope.original_max_positions)}" if rope.kind in ("yarn", "llama3") else ""
    return f"{name} ×{rope.factor:g}{origin}"


def _subplot_titles_inherit_font(fig: go.Figure) -> None:
    # make_subplots writes its titles at a fixed 16 px; left unset they follow the layout's font (presentation mode)
    for annotation in fig.layout.annotations:
        annotation.font.size = None


def frequencies_figure(n: RopeNumbers, height: int = style.VIEW_HEIGHT) -> go.Figure:
    """Top: radians per token of every pair under each scaling (log; the colours of explain_html, the model's own in
    grey). Bottom: the angle the selected position has turned each pair by, under the model's own scaling."""
    pairs = list(range(n.d_rot // 2))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.16,
                        subplot_titles=("Frequencies", f"Angle at position {n.position:,}"))
    _subplot_titles_inherit_font(fig)
    for key in ("own", *SCALINGS):
        own = key == "own"
        label = f"own: {scaling_label(n.ropes['own'])}" if own else f"{NAMES[key]} ×{n.factor:g}"
        freq = n.inv_freq[key].tolist()
        fig.add_trace(go.Scatter(
            x=pairs, y=freq, mode="lines", name=label, showlegend=False,
            line=dict(color=OWN_COLOUR if own else COLOURS[key], width=7 if own else 2.2),
            opacity=0.55 if own else 1.0, customdata=[2 * math.pi / f for f in freq],
            hovertemplate=f"{label}<br>pair %{{x}}: %{{y:.3g}} rad/token<br>one turn every %{{customdata:,.4g}} "
                          "tokens<extra></extra>"), row=1, col=1)
    angles = n.angles.tolist()
    if n.position == 0:
        fig.add_annotation(text="position 0: no pair is turned", showarrow=False, x=0.5, y=0.2, xref="paper",
                           yref="paper", font=dict(color=MUTED))
    fig.add_trace(go.Scatter(
        x=pairs, y=angles, mode="lines+markers", name="angle", showlegend=False, line=dict(color="#222222", width=2),
        marker=dict(size=5), customdata=[[a / (2 * math.pi), math.degrees(a % (2 * math.pi))] for a in angles],
        hovertemplate="pair %{x}: position × frequency = %{y:.4g} rad<br>= %{customdata[0]:.3g} turns: the pair "
                      "points at %{customdata[1]:.0f}°<extra></extra>"), row=2, col=1)
    fig.add_hline(y=2 * math.pi, line=dict(color=style.SELECTED, dash="dot", width=1.5), row=2, col=1)
    # an annotation on a log axis is placed by the log of its coordinate (a shape by the coordinate itself)
    fig.add_annotation(text="one turn", x=1, xref="x2 domain", y=math.log10(2 * math.pi), yref="y2", xanchor="right",
                       yanchor="top", showarrow=False, font=dict(color=style.SELECTED))
    fig.update_yaxes(type="log", dtick=2, exponentformat="power", row=1, col=1, title_text="rad / token")
    turned = [a for a in angles if a > 0] or [1.0]
    fig.update_yaxes(type="log", dtick=2, exponentformat="power", row=2, col=1, title_text="rad",
                     range=[math.log10(min(turned)) - 0.4, math.log10(max(*turned, 2 * math.pi)) + 0.6])
    fig.update_xaxes(title_text="pair i", row=2, col=1, title_standoff=4)
    style.layout(fig, height=height)
    fig.update_layout(margin=dict(l=55, r=8, t=30, b=40))
    return fig


def distance_figure(n: RopeNumbers, height: int = style.VIEW_HEIGHT) -> go.Figure:
    """q·k over distance Δ, one panel per scaling at the chosen stretch, each over the model's own (grey); dotted: the
    trained length, dashed: the chosen context."""
    titles = [NAMES[key] + (f" ×{n.factor:g}" if key != "none" else "") for key in SCALINGS]
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, shared_yaxes=True, subplot_titles=titles,
                        vertical_spacing=0.16, horizontal_spacing=0.05)
    _subplot_titles_inherit_font(fig)
    x = n.distances.tolist()
    own_label = f"own: {scaling_label(n.ropes['own'])}"
    values = [v for scores in n.scores.values() for v in scores.tolist()]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or 1.0)
    marks = ((n.trained, "dot"), (n.context, "dash")) if n.context != n.trained else ((n.trained, "dot"),)
    for i, key in enumerate(SCALINGS):
        row, col = i // 2 + 1, i % 2 + 1
        for which, colour, width in (("own", OWN_COLOUR, 4), (key, COLOURS[key], 1.8)):
            label = own_label if which == "own" else titles[i]
            fig.add_trace(go.Scatter(
                x=x, y=n.scores[which].tolist(), mode="lines", name=label, showlegend=False,
                line=dict(color=colour, width=width), opacity=0.6 if which == "own" else 1.0,
                hovertemplate=f"{label}<br>Δ = %{{x:,}} tokens: q·k = %{{y:.3f}}<extra></extra>"), row=row, col=col)
        for where, dash in marks:
            fig.add_vline(x=where, line=dict(color=MUTED, dash=dash, width=1.2), row=row, col=col)
    fig.update_xaxes(type="log", exponentformat="SI", dtick=2 if n.context > 30000 else 1)
    fig.update_xaxes(title_text="distance Δ", title_standoff=2, row=2)
    fig.update_yaxes(range=[low - pad, high + pad])
    fig.update_yaxes(title_text="q·k / |q||k|", row=1, col=1)  # one title: two would overlap on short panels
    style.layout(fig, height=height)
    fig.update_layout(margin=dict(l=55, r=8, t=30, b=40))
    return fig


def explain_html(n: RopeNumbers, latent: bool = False) -> str:
    """The model's rotary embedding in a line, then what each scaling does, a sentence each with this stretch's
    numbers. latent: the model uses MLA (its softmax scale carries YaRN's mscale)."""
    s, trained, context = n.factor, _n(n.trained), _n(n.context)
    own, yarn = n.ropes["own"], n.ropes["yarn"]
    own_text = scaling_label(own)
    if own.kind == "yarn":
        own_text += (f" (β_fast {own.beta_fast:g}, β_slow {own.beta_slow:g}; scores × "
                     f"{score_gain(own, latent):.3g})")
    sentences = {
        "none": f"as trained; past {trained} tokens the slow pairs reach angles never seen.",
        "linear": f"every frequency ÷ {s:g}: {context} tokens turn as far as {trained} did; neighbours look "
                  f"{s:g}× closer.",
        "ntk": f"base θ·{s:g}<sup>d/(d−2)</sup>: the fastest pair kept, the slowest turns {s:g}× slower.",
        "yarn": f"pairs turning over {yarn.beta_fast:g} times in {trained} tokens kept, under {yarn.beta_slow:g} "
                f"÷ {s:g}, a ramp between; scores × (0.1 ln {s:g} + 1)² = {score_gain(yarn):.3g}.",
    }
    items = "".join(f'<li><b style="color:{COLOURS[key]}">{NAMES[key]}</b>: {text}</li>'
                    for key, text in sentences.items())
    return (f'<div class="rope-explain"><div><b>{style.escape(n.name or "This model")}</b>: θ = {own.theta:,g}, '
            f"{n.d_rot // 2} pairs, trained on {trained} (dotted); own scaling (grey): {own_text}. "
            f"Stretched ×{s:g} to {context} (dashed).</div><div>q·k: {n.source}.</div><ul>{items}</ul></div>")
