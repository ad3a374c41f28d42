"""House style shared by every view: one palette, projector-sized fonts, one plotly layout, token labels."""
from __future__ import annotations

import html

import plotly.graph_objects as go
import plotly.io as pio

FONT = "Inter, system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
FONT_SIZE = 15
# the same meaning has the same colour in every view
PROMPT = "#4C78A8"  # prompt tokens
GENERATED = "#F58518"  # generated tokens
SELECTED = "#E45756"  # the selected token / head / layer
KEPT = "#54A24B"  # tokens the sampler kept
CUT = "#BAB0AC"  # tokens the sampler cut
BACKGROUND_POINTS = "#D5D5D5"  # vocabulary sample in projections
SEQUENTIAL = "Blues"  # attention, probabilities (0 = white)
DIVERGING = "RdBu"
# a view's main plot fits beside the text on a 1280x720 projector (the tab panel below the output strip)
VIEW_HEIGHT = 420


_AXIS = dict(gridcolor="#EBF0F8", linecolor="#EBF0F8", zerolinecolor="#EBF0F8", zerolinewidth=2, ticks="",
             automargin=True, title=dict(standoff=15))
_SCENE_AXIS = dict(backgroundcolor="white", gridcolor="#DFE8F3", linecolor="#EBF0F8", showbackground=True, ticks="",
                   zerolinecolor="#EBF0F8", gridwidth=2)
_COLORBAR = dict(outlinewidth=0, ticks="")
# plotly_white's look, restricted to the traces and axes these views use: the full template is 6.6 KB of JSON in
# every figure, sent with every live refresh and merged by plotly.js on every redraw
THEME = go.layout.Template(
    layout=dict(
        colorway=["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF",
                  "#FECB52"],
        font=dict(color="#2a3f5f"), hovermode="closest", hoverlabel=dict(align="left"), paper_bgcolor="white",
        plot_bgcolor="white", coloraxis=dict(colorbar=_COLORBAR), xaxis=_AXIS, yaxis=_AXIS,
        scene=dict(xaxis=_SCENE_AXIS, yaxis=_SCENE_AXIS, zaxis=_SCENE_AXIS),
        shapedefaults=dict(line=dict(color="#2a3f5f")),
        annotationdefaults=dict(arrowcolor="#2a3f5f", arrowhead=0, arrowwidth=1),
    ),
    data=dict(heatmap=[go.Heatmap(colorbar=_COLORBAR)], bar=[go.Bar(marker=dict(line=dict(color="white", width=0.5)))],
              scattergl=[go.Scattergl(marker=dict(colorbar=_COLORBAR))]),
)


# every figure starts with the house theme: plotly applies its default template unvalidated when a figure is made, where
# setting one on each figure validated and deep-copied it (a sixth of a figure's time, with the GIL held)
pio.templates["explorer"] = THEME
pio.templates.default = "explorer"


def layout(fig: go.Figure, title: str = "", height: int = 460, **kwargs) -> go.Figure:
    """Apply the house layout (the theme is every figure's default): readable fonts, explicit height, tight margins."""
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=FONT_SIZE + 3)) if title else None,
        height=height,
        font=dict(family=FONT, size=FONT_SIZE),
        margin=dict(l=60, r=20, t=50 if title else 20, b=50),
        hoverlabel=dict(font_size=FONT_SIZE),
        **kwargs,
    )
    return fig


def token_label(text: str, max_len: int = 12) -> str:
    """A token's text made visible for plotly labels and hovers: spaces as ·, newlines as ↵, tabs as →; shortened;
    escaped, since plotly reads <b>, <br>, <a> and friends in label text as markup."""
    shown = text.replace(" ", "·").replace("\n", "↵").replace("\t", "→").replace("\r", "␍")
    if not shown:
        shown = "∅"
    if len(shown) > max_len:
        shown = shown[: max_len - 1] + "…"
    return html.escape(shown, quote=False)


def thin_ticks(n: int, max_ticks: int = 40) -> list[int]:
    """Positions to label on an axis of n tokens so labels never overlap: every k-th, k chosen from n."""
    step = max(1, -(-n // max_ticks))
    return list(range(0, n, step))


def window_around(n: int, selected: int | None, width: int) -> range:
    """`width` consecutive positions of n around the selected one (the last by default), the selected a little
    right of the middle so more of what led to it shows than what followed; all of them when n <= width."""
    if n <= width:
        return range(n)
    centre = n - 1 if selected is None else min(max(selected, 0), n - 1)
    start = min(max(0, centre - (2 * width) // 3), n - width)
    return range(start, start + width)


def escape(text: str) -> str:
    """Every token or prompt text goes through here before it is put into HTML."""
    return html.escape(text, quote=True)
