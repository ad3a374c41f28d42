"""What the tabs share: the model, and a placeholder figure for when there is nothing to show yet."""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, fields
from typing import Mapping

import plotly.graph_objects as go

from explorer.views import style
from model import LanguageModel


@dataclass(frozen=True)
class Limits:
    """Server-side caps that the UI and the API both obey; each settable as EXPLORER_<NAME> in the environment."""

    max_prompt_tokens: int = 1024
    max_new_tokens: int = 256
    max_context: int = 1280  # prompt + generated tokens
    max_top_k: int = 1000
    # generations running at once: the model thread advances them together, one batched forward pass per step
    # (explorer/batching.py, at most 16 rows a pass: 32 take two); more wait in the queue. A class of 30 writes at once
    # (bench.serving, 32 sessions: p95 first token 7.2 s with 16 running and the rest queued, 3.8 s with 32)
    max_concurrent: int = 32
    max_queue: int = 32  # requests waiting beyond that are refused with "queue is full"
    time_limit_seconds: float = 120.0  # a generation stops (keeping its text) after this long
    refresh_seconds: float = 0.8  # heavy plots refresh at most this often while tokens stream
    text_hz: float = 10.0  # the streamed text updates at most this often (smooth to read, half the work of 20)
    trace_memory_mib: int = 1024  # sessions' traces in all (~70 KB a token for SmolLM2); over it the oldest idle go
    session_ttl_seconds: float = 1800.0  # a session that serves no event for this long is cleared

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Limits":
        values = {}
        for f in fields(cls):
            raw = environ.get(f"EXPLORER_{f.name.upper()}")
            if raw is not None:
                try:
                    values[f.name] = type(getattr(cls, f.name))(raw)
                except ValueError:
                    raise SystemExit(f"EXPLORER_{f.name.upper()}={raw!r} is not a valid {f.type}") from None
        return cls(**values)


def placeholder(message: str, height: int = 360) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=18, color="#777"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style.layout(fig, height=height)


EMPTY_HINT = "Type a prompt and press Generate"
PRESENTATION_SCALE = 1.3


def presentation_fonts(value, on: bool):
    """A figure's type set for a projector (on) or a screen (off): absolute sizes, so a cached figure can go back and
    forth; anything else passes unchanged."""
    if isinstance(value, go.Figure):
        scale = PRESENTATION_SCALE if on else 1.0
        value.update_layout(font_size=round(style.FONT_SIZE * scale), hoverlabel_font_size=round(style.FONT_SIZE * scale))
        if value.layout.title.text:
            value.update_layout(title_font_size=round((style.FONT_SIZE + 3) * scale))
    return value


def model_summary(lm: LanguageModel) -> str:
    """The model in words a student can read (name, size, layers, heads, vocabulary); the engineering details (family,
    KV heads, widths, device, number format, fast paths) in a second, smaller line."""
    cfg = lm.config
    attention = f"{cfg.n_heads} latent-attention heads" if cfg.mla is not None else f"{cfg.n_heads} heads"
    moe = (f" · {cfg.moe.n_routed_experts} experts ({cfg.moe.n_experts_per_tok} per token)"
           if cfg.moe is not None else "")
    main = (f"<b>{style.escape(lm.name)}</b> · {lm.n_params / 1e6:,.0f}M parameters · {cfg.n_layers} layers × "
            f"{attention}{moe} · vocabulary {cfg.vocab_size:,}")
    kv = f"{cfg.mla.kv_lora_rank}-number latent KV" if cfg.mla is not None else f"{cfg.n_kv_heads} KV heads"
    dtype = str(lm.dtype).removeprefix("torch.")
    details = [f"{cfg.family} family", kv, f"width {cfg.d_model}", f"runs on {lm.device.type} in {dtype}",
               *lm.fast_paths]  # e.g. decoding from the file's Q4_1/Q8_0 blocks
    details_text = " · ".join(details)
    return (f'<div class="summary">{main}</div>'
            f'<div class="details" title="{html.escape(details_text)}">{html.escape(details_text, quote=False)}</div>')
