"""The Architecture view: the model as the course draws it -- embedding, N x [norm, attention (GQA or MLA), norm,
MLP or MoE], final norm, head -- with weight and activation shapes, parameters in total and active per token, and,
for a loaded model, live vector norms through the layers. Works from a ModelConfig alone (no weights)."""
from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go

from model.config import ModelConfig
from model.params import COMPONENTS, ParameterCounts, Weight, outer_shapes, shapes

from . import style

COLOURS = {"embeddings": "#54A24B", "attention": style.PROMPT, "dense_mlp": style.GENERATED,
           "routed_experts": "#B279A2", "shared_experts": "#9D755D", "router": "#D8B130", "norms": "#8C8C8C",
           "head": "#72B7B2"}
LABELS = {"embeddings": "Embeddings", "attention": "Attention", "dense_mlp": "Dense MLP",
          "routed_experts": "Routed experts", "shared_experts": "Shared experts", "router": "Routers",
          "norms": "Norms", "head": "Head (unembedding)"}
STAGES = {"resid_norm_in": "‖h‖ residual in", "attn_norm_out_norm": "‖norm(h)‖ into attention",
          "attn_out_norm": "‖attention out‖", "mlp_norm_out_norm": "‖norm(h)‖ into MLP",
          "mlp_out_norm": "‖MLP out‖", "resid_norm_out": "‖h‖ residual out"}
LEGEND = {"resid_norm_in": "h in", "attn_norm_out_norm": "norm → attn", "attn_out_norm": "attn out",
          "mlp_norm_out_norm": "norm → MLP", "mlp_out_norm": "MLP out", "resid_norm_out": "h out"}  # ‖·‖ of each
NORM_NAMES = {"rms": "RMSNorm", "layer": "LayerNorm"}
MUTED = "#666666"

_CSS = (
    "<style>"
    ".arch{font-family:%(font)s;font-size:16px;color:#222;line-height:1.35}"
    ".arch .sum{font-size:19px;margin:4px 0 10px}"
    ".arch .key{color:%(muted)s;font-size:14px;margin-bottom:8px}"
    ".arch .box{border:1px solid #ddd;border-left:6px solid;border-radius:6px;padding:6px 10px;margin:4px 0;"
    "background:#fff}"
    ".arch .box b{font-size:17px}"
    ".arch .arrow{color:%(muted)s;text-align:center;font-size:18px;margin:0}"
    ".arch .cards{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
    # min-width 0: a card never grows past its column (its long shapes wrap) into the plots beside it
    ".arch .card{flex:1 1 300px;min-width:0;overflow-wrap:anywhere;border:2px solid #bbb;border-radius:10px;padding:6px 10px;background:#FAFAFA}"
    ".arch .card>h4{margin:2px 0 6px;font-size:18px}"
    ".arch .p{float:right;font-weight:600;margin-left:8px}"
    ".arch .a{color:%(muted)s;font-weight:400}"
    ".arch .sh,.arch code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px}"
    ".arch ul{margin:2px 0 2px 0;padding-left:18px}"
    # !important: the app's own table styles (borders, padding, stripes) would otherwise win
    ".arch table{border-collapse:collapse;margin:4px 0;border:0!important;width:auto!important}"
    ".arch tr{border:0!important}"
    ".arch td,.arch th{padding:1px 10px 1px 0!important;text-align:left;vertical-align:top;border:0!important;"
    "background:none!important}"
    ".arch td.n,.arch th.n{text-align:right}"
    ".arch .w td{font-size:14px}"
    ".arch .live{background:#FFF6D6;border-radius:4px;padding:1px 5px;font-size:14px;white-space:nowrap}"
    ".arch .res{color:%(muted)s;font-size:15px;margin:2px 0 2px 12px}"
    "</style>"
) % dict(font=style.FONT, muted=MUTED)


def human(n: float) -> str:
    """A parameter count the way model cards write it: 1.03T, 32.9B, 135M, 4.6K."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.{max(0, 2 - int(math.log10(abs(value))))}f}{suffix}"
    return f"{n:.0f}"


def layer_ranges(layers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0–2, 5, 7–8'."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def layer_groups(counts: ParameterCounts) -> list[tuple[str, list[int]]]:
    """(kind, its layers) for "dense" and "moe", in the order they first appear."""
    groups: dict[str, list[int]] = {}
    for layer in counts.layers:
        groups.setdefault(layer["kind"], []).append(layer["layer"])
    return list(groups.items())


def group_title(cfg: ModelConfig, kind: str, layers: Sequence[int]) -> str:
    """'layer 0: dense MLP' / 'layers 1–60: MoE, 384 experts, 8 active + 1 shared'."""
    where = f"layer{'s' if len(layers) > 1 else ''} {layer_ranges(layers)}"
    if kind == "dense":
        return f"{where}: dense MLP"
    moe = cfg.moe
    shared = f" + {moe.n_shared_experts} shared" if moe.n_shared_experts else ""
    return f"{where}: MoE, {moe.n_routed_experts} experts, {moe.n_experts_per_tok} active{shared}"


def _n(value: int) -> str:
    return f"{value:,}"


def _shape(shape: Sequence[int | str]) -> str:
    # no thousands separators inside a shape: [T, 7,168] would read as three dimensions
    return '<span class="sh">[' + ", ".join(str(v) for v in shape) + "]</span>"


def _params(total: int, active: int | None = None) -> str:
    extra = f' <span class="a">· {human(active)} active</span>' if active is not None and active != total else ""
    return f'<span class="p" title="{_n(total)} parameters">{human(total)}{extra}</span>'


def _weights(weights: Sequence[Weight]) -> str:
    rows = []
    for w in weights:
        name = w.name.removeprefix("attn.").removeprefix("mlp.").removesuffix(".weight")
        stacked = f"{_n(w.shape[0])} × " if w.component == "routed_experts" else ""
        shape = w.shape[1:] if stacked else w.shape
        note = " (buffer)" if w.buffer else ""
        rows.append(f"<tr><td><code>{style.escape(name)}</code>{note}</td><td>{stacked}{_shape(shape)}</td>"
                    f'<td class="n">{human(w.numel)}</td></tr>')
    return f'<table class="w">{"".join(rows)}</table>'


def _box(component: str, title: str, weights: Sequence[Weight], body: str, live: str = "") -> str:
    trained = [w for w in weights if not w.buffer]
    total, active = sum(w.numel for w in trained), sum(w.active for w in trained)
    params, table = (_params(total, active), _weights(weights)) if weights else ("", "")
    return (f'<div class="box" style="border-left-color:{COLOURS[component]}">{params}'
            f"<b>{title}</b> {live}{body}{table}</div>")


def _live(values: dict | None, *keys: str) -> str:
    if not values:
        return ""
    shown = [f"{STAGES[k]} = {float(values[k]):.3g}" for k in keys if values.get(k) is not None]
    return " ".join(f'<span class="live">{style.escape(s)}</span>' for s in shown)


def _rope_text(cfg: ModelConfig, rope_live: dict | None) -> str:
    if cfg.rope is None:
        return "Positions come from the learned position embedding; no rotation here."
    r = cfg.rope
    dims = cfg.mla.qk_rope_dim if cfg.mla else cfg.d_head
    scaled = f", {r.kind} ×{r.factor:g} (from {_n(r.original_max_positions)} positions)" if r.kind != "default" else ""
    text = f"RoPE θ = {r.theta:,g}{scaled}: rotates {dims} dims of each query and key, in {dims // 2} pairs."
    if rope_live:
        fast, slow = (float(a) for a in rope_live["angles_first_last"])
        text += (f' <span class="live">at position {int(rope_live["position"])}: fastest pair turned '
                 f"{fast:.3g} rad ({fast / (2 * math.pi):.3g} turns), slowest {slow:.3g} rad</span>")
    return text


def _attention(cfg: ModelConfig, weights: Sequence[Weight], live: dict | None, rope: dict | None) -> str:
    h, d = cfg.n_heads, cfg.d_model
    mla = cfg.mla
    if mla is None:
        kind = ("Multi-head attention" if cfg.n_kv_heads == h else "Multi-query attention" if cfg.n_kv_heads == 1
                else f"Grouped-query attention: {cfg.n_kv_heads} K/V heads, each shared by {h // cfg.n_kv_heads} "
                     "query heads")
        steps = [f"q = x·W_qᵀ {_shape(['T', h, cfg.d_head])}; k, v {_shape(['T', cfg.n_kv_heads, cfg.d_head])}",
                 f"scores = softmax(q·kᵀ/√{cfg.d_head}, causal) {_shape([h, 'T', 'T'])}",
                 f"heads' outputs {_shape(['T', h * cfg.d_head])} → W_o → {_shape(['T', d])}",
                 f"KV cache per token per layer: {_n(2 * cfg.n_kv_heads * cfg.d_head)} numbers"]
    else:
        nope, rot, v = mla.qk_nope_dim, mla.qk_rope_dim, mla.v_head_dim
        kind = f"Multi-head Latent Attention: K and V rebuilt from a latent of {mla.kv_lora_rank} per token"
        q_path = (f"q_a_proj → {_shape(['T', mla.q_lora_rank])} → RMSNorm → q_b_proj" if mla.q_lora_rank
                  else "q_proj")
        steps = [f"queries: x → {q_path} → q {_shape(['T', h, nope + rot])} (no-rope {nope} ‖ rope {rot})",
                 f"kv_a_proj_with_mqa: x → latent c_KV {_shape(['T', mla.kv_lora_rank])} ‖ k_rope "
                 f"{_shape(['T', rot])}, one rotary key shared by all heads",
                 f"RMSNorm(c_KV) → kv_b_proj → k_nope {_shape(['T', h, nope])}, v {_shape(['T', h, v])}",
                 f"scores = softmax((q_nope·k_nope + q_rope·k_rope)/√{nope + rot}, causal) {_shape([h, 'T', 'T'])}",
                 f"heads' outputs {_shape(['T', h * v])} → o_proj → {_shape(['T', d])}",
                 f"KV cache per token per layer: {_n(mla.kv_lora_rank + rot)} numbers (the latent and k_rope; "
                 f"full K and V would be {_n(h * (nope + rot + v))})"]
    steps.append(_rope_text(cfg, rope))
    body = "<ul>" + "".join(f"<li>{s}</li>" for s in steps) + "</ul>"
    return _box("attention", style.escape(kind), weights, body, _live(live, "attn_out_norm"))


def _mlp(cfg: ModelConfig, weights: Sequence[Weight], live: dict | None) -> str:
    d, live_html = cfg.d_model, _live(live, "mlp_out_norm")
    if cfg.moe is None or not any(w.component == "routed_experts" for w in weights):
        if cfg.mlp == "swiglu":
            body = (f"<ul><li>SwiGLU: silu(x·W_gateᵀ) ⊙ (x·W_upᵀ) {_shape(['T', cfg.d_ff])} → W_down → "
                    f"{_shape(['T', d])}</li></ul>")
        else:
            body = (f"<ul><li>{cfg.activation}(x·W_upᵀ) {_shape(['T', cfg.d_ff])} → W_down → "
                    f"{_shape(['T', d])}</li></ul>")
        return _box("dense_mlp", "MLP (feed-forward)", weights, body, live_html)
    moe = cfg.moe
    e, k, f = moe.n_routed_experts, moe.n_experts_per_tok, moe.d_ff_expert
    groups = (f"; first the best {moe.topk_group} of {moe.n_group} expert groups" if moe.n_group > 1 else "")
    top = ""
    if live and live.get("top_experts"):
        top = "<li>this token's experts: " + " ".join(
            f'<span class="live">#{int(i)} · {float(g):.2f}</span>' for i, g in live["top_experts"]) + "</li>"
    router = _box("router", "Router", [w for w in weights if w.component == "router"],
                  f"<ul><li>scores = {moe.scoring}(x·W_routerᵀ) {_shape(['T', e])}; each token takes the top {k}"
                  f"{groups}; weights normalised, × {moe.routed_scaling_factor:g}</li>{top}</ul>")
    shared = ""
    if moe.n_shared_experts:
        shared = _box("shared_experts", f"Shared expert{'s' if moe.n_shared_experts > 1 else ''} (always on)",
                      [w for w in weights if w.component == "shared_experts"],
                      f"<ul><li>SwiGLU with d_ff = {_n(f * moe.n_shared_experts)}, run for every token</li></ul>")
    routed = _box("routed_experts", f"Routed experts: {k} of {e} per token",
                  [w for w in weights if w.component == "routed_experts"],
                  f"<ul><li>each a SwiGLU with d_ff = {_n(f)}; a token runs {k}: hidden {_shape(['T', k, f])}</li>"
                  f"<li>out = shared(x) + Σ gᵢ·expertᵢ(x) {_shape(['T', d])}</li></ul>")
    trained = [w for w in weights if not w.buffer]
    total = _params(sum(w.numel for w in trained), sum(w.active for w in trained))
    return (f'<div class="box" style="border-left-color:{COLOURS["routed_experts"]}">{total}'
            f"<b>Mixture of Experts</b> {live_html}{router}{shared}{routed}</div>")


def _card(cfg: ModelConfig, counts: ParameterCounts, kind: str, layers: list[int],
          stages: Sequence[dict] | None, rope: dict | None, selected: int | None) -> str:
    weights = shapes(cfg, layers[0])
    shown = selected if selected in layers else layers[0]
    live = stages[shown] if stages else None
    norm = NORM_NAMES[cfg.norm]
    per = counts.layers[layers[0]]
    n = len(layers)
    sizes = (f"{human(per['total'])} per layer, × {n} = {human(per['total'] * n)}"
             + (f" ({human(per['active'] * n)} active)" if per["active"] != per["total"] else ""))
    title = style.escape(group_title(cfg, kind, layers))
    live_note = f' <span class="live">live values: layer {shown}</span>' if live else ""
    norm_weights = [w for w in weights if w.component == "norms"]
    half = len(norm_weights) // 2
    return (
        f'<div class="card"><h4>{title}</h4><div class="key">{sizes}{live_note}</div>'
        f'<div class="res">h {_shape(["T", cfg.d_model])} {_live(live, "resid_norm_in")}</div>'
        + _box("norms", norm, norm_weights[:half], "", _live(live, "attn_norm_out_norm"))
        + _attention(cfg, [w for w in weights if w.component == "attention"], live, rope)
        + '<div class="res">h ← h + attention</div>'
        + _box("norms", norm, norm_weights[half:], "", _live(live, "mlp_norm_out_norm"))
        + _mlp(cfg, [w for w in weights if w.component not in ("norms", "attention")], live)
        + f'<div class="res">h ← h + MLP {_live(live, "resid_norm_out")}</div></div>'
    )


def _share(part: int, whole: int) -> str:
    percent = 100 * part / whole
    return "&lt;0.1%" if 0 < percent < 0.1 else f"{percent:.1f}%"


def _summary(counts: ParameterCounts) -> str:
    rows = []
    for name, c in counts.by_component().items():
        if c.total:
            rows.append(f'<tr><td><span style="color:{COLOURS[name]}">■</span> {LABELS[name]}</td>'
                        f'<td class="n">{human(c.total)}</td><td class="n">{human(c.active)}</td>'
                        f'<td class="n">{_share(c.total, counts.total)}</td><td class="n sh">{_n(c.total)}</td></tr>')
    rows.append(f'<tr><th>Total</th><th class="n">{human(counts.total)}</th><th class="n">{human(counts.active)}</th>'
                f'<th class="n">100%</th><th class="n sh">{_n(counts.total)}</th></tr>')
    return ('<table><tr><th>component</th><th class="n">total</th><th class="n">active / token</th>'
            f'<th class="n">share</th><th class="n">exact</th></tr>{"".join(rows)}</table>')


def architecture_html(cfg: ModelConfig, counts: ParameterCounts, name: str, stages: Sequence[dict] | None = None,
                      rope: dict | None = None, layer: int | None = None) -> str:
    """The block diagram with shapes and counts. stages: one dict of vector norms per layer (keys of STAGES, and
    optionally top_experts [(expert, weight)]); rope: {position, angles_first_last}; layer: whose live values each
    card shows (a card not holding it shows its first layer)."""
    if stages is not None and len(stages) != cfg.n_layers:
        raise ValueError(f"{len(stages)} stages for a {cfg.n_layers}-layer model")
    outer = {w.name: w for w in outer_shapes(cfg)}
    d, v = cfg.d_model, cfg.vocab_size
    if counts.active != counts.total:
        active = (f"<b>{human(counts.active)}</b> active per token ({human(counts.active_without_embeddings)} "
                  "without the embedding lookup)")
    else:
        active = "all active for every token"
    summary = (f'<div class="sum"><b>{style.escape(name)}</b> · {style.escape(cfg.family)} · '
               f"<b>{human(counts.total)}</b> parameters · {active}</div>")
    key = (f'<div class="key">T = tokens in the context · d_model = {_n(d)} · {cfg.n_layers} layers · '
           f"{cfg.n_heads} heads · vocabulary V = {_n(v)} · shapes are [out, in] for weights</div>")
    embed = [outer["embed.weight"]] + ([outer["pos_embed.weight"]] if "pos_embed.weight" in outer else [])
    positions = " + position embedding P[t]" if len(embed) > 1 else ""
    head_weights = [w for w in outer.values() if w.component == "head"]
    tied = " (tied: the head is E itself, no weights of its own)" if cfg.tie_embeddings else ""
    final_norm = [w for w in outer.values() if w.component == "norms"]
    cards = "".join(_card(cfg, counts, kind, layers, stages, rope, layer) for kind, layers in layer_groups(counts))
    return (
        _CSS + '<div class="arch">' + summary + key
        + f'<div class="res">token ids {_shape(["T"])}</div>'
        + _box("embeddings", "Embedding", embed,
               f"<ul><li>e<sub>i</sub> = E[x<sub>i</sub>]{positions}: a lookup, one row per token → h "
               f"{_shape(['T', d])}</li></ul>")
        + '<div class="arrow">↓</div><div class="cards">' + cards + '</div><div class="arrow">↓</div>'
        + _box("norms", f"Final {NORM_NAMES[cfg.norm]}", final_norm, "")
        + _box("head", "Head (unembedding)", head_weights,
               f"<ul><li>logits = norm(h)·W_headᵀ {_shape(['T', v])}{tied}</li></ul>")
        + "<h4>Parameters by component</h4>" + _summary(counts) + "</div>"
    )


def parameter_figure(counts: ParameterCounts) -> go.Figure:
    """Bars per component: all parameters (pale) and those used for one token (solid), labelled like model cards."""
    names = [c for c in COMPONENTS if getattr(counts, c).total]
    y = list(range(len(names)))
    fig = go.Figure()
    sparse = counts.active != counts.total
    for which, opacity in (("total", 0.35), ("active", 1.0)) if sparse else (("total", 1.0),):
        values = [getattr(getattr(counts, c), which) for c in names]
        fig.add_trace(go.Bar(
            x=values, y=y, orientation="h", name=which, showlegend=False,
            marker=dict(color=[COLOURS[c] for c in names], opacity=opacity), text=[human(x) for x in values],
            textposition="outside", cliponaxis=False, customdata=[[LABELS[c], _n(x)] for c, x in zip(names, values)],
            hovertemplate=f"%{{customdata[0]}}<br>{which}: %{{customdata[1]}}<extra></extra>",
        ))
    fig.update_yaxes(tickvals=y, ticktext=[LABELS[c] for c in names], autorange="reversed")
    fig.update_xaxes(title_text="parameters", rangemode="tozero", nticks=4, tickangle=0)
    title = (f"Parameters: {human(counts.total)} total (pale)<br>{human(counts.active)} active per token (solid)"
             if sparse else f"Parameters: {human(counts.total)}<br>all active for every token")
    style.layout(fig, title, height=min(style.VIEW_HEIGHT, 110 + 40 * len(names)), barmode="group", bargap=0.2)
    fig.update_layout(margin=dict(l=160, r=70, t=70, b=45))  # r: room for the count written past the longest bar
    return fig


def stages_figure(stages: Sequence[dict], rope: dict | None = None) -> go.Figure:
    """Vector norms at each stage of each layer (log scale): the residual stream grows through the layers while
    each norm brings its input back to a steady size before attention and the MLP read it."""
    x = list(range(len(stages)))
    fig = go.Figure()
    dashes = {"resid_norm_in": "solid", "resid_norm_out": "dot"}
    colours = {"resid_norm_in": "#222222", "attn_norm_out_norm": COLOURS["norms"],
               "attn_out_norm": COLOURS["attention"],
               "mlp_norm_out_norm": "#BDBDBD", "mlp_out_norm": COLOURS["dense_mlp"], "resid_norm_out": "#222222"}
    for key, label in STAGES.items():
        values = [float(s[key]) if s.get(key) is not None else None for s in stages]
        fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=LEGEND[key],
                                 line=dict(color=colours[key], dash=dashes.get(key, "solid"), width=2.5),
                                 marker=dict(size=5),
                                 hovertemplate=f"layer %{{x}}<br>{label} = %{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title_text="layer", tickvals=style.thin_ticks(len(stages), 12) if stages else None)
    fig.update_yaxes(title_text="vector norm (log)", type="log", dtick="D2")
    fig.update_xaxes(title=dict(standoff=4))
    title = "Vector norms through the layers"
    if rope:
        fast, slow = (float(a) for a in rope["angles_first_last"])
        title += f"<br><sup>RoPE at position {int(rope['position'])}: {fast:.3g} / {slow:.3g} rad</sup>"
    # short names in a legend under the axis: the plot sits in a narrow column beside the diagram
    style.layout(fig, title, height=style.VIEW_HEIGHT,
                 legend=dict(orientation="h", y=-0.2, yanchor="top", x=0, font=dict(size=style.FONT_SIZE - 2),
                             entrywidth=0.5, entrywidthmode="fraction"))
    fig.update_layout(margin=dict(l=60, r=10, t=75 if rope else 50, b=110))
    return fig
