"""The output strip: the prompt, muted, then the generated text, each token tinted by the probability it had when
it was chosen. Re-rendered on every new token, so it stays small: one span per generated token."""
from __future__ import annotations

from typing import Protocol, Sequence

from plotly.colors import sample_colorscale, unlabel_rgb

from model.tokenizer import Tokenizer

from . import style


class StepLike(Protocol):
    token_id: int
    prob: float
    position: int


# light to strong, stopping before the darkest blues so dark text stays readable on every tint
_TINTS: list[str] = ["#%02x%02x%02x" % tuple(round(v) for v in unlabel_rgb(c))
                     for c in sample_colorscale(style.SEQUENTIAL, [0.03 + 0.47 * i / 100 for i in range(101)])]

_CSS = (
    "<style>"
    ".tokout{font-family:%(font)s;font-size:17px;line-height:1.6;white-space:pre-wrap;word-break:break-word}"
    ".tokout .prompt{color:#8A8A8A}"
    ".tokout .tok{border-radius:3px;cursor:pointer}"
    ".tokout .sp{border:1px dashed #888;font-size:13px;color:#555}"
    ".tokout .nl{color:#9AA}"
    ".tokout .sel{outline:2px solid %(sel)s;outline-offset:0}"
    ".tokout .key{font-size:11px;color:#777;white-space:normal;margin-bottom:2px}"
    ".tokout .bar{display:inline-block;width:80px;height:9px;vertical-align:middle;margin:0 4px;"
    "background:linear-gradient(to right,%(lo)s,%(hi)s)}"
    "</style>"
) % dict(font=style.FONT, sel=style.SELECTED, lo=_TINTS[0], hi=_TINTS[-1])

_KEY = '<div class="key">p when chosen: 0<span class="bar"></span>1</div>'


def _rank(step: StepLike) -> str:
    top = getattr(step, "top_ids", None)
    if top is None:
        return "?"
    return str(list(top).index(step.token_id) + 1) if step.token_id in top else f">{len(top)}"


def output_html(
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    steps_like: Sequence[StepLike],
    selected: int | None = None,
    show_prompt: bool = True,
) -> str:
    """The prompt as plain muted text, then one `<span class="tok" data-pos=...>` per generated token whose
    background is the probability it had when chosen (step.prob); a token that holds only part of a character
    shows ⋯ until the token that completes it."""
    stream = tokenizer.text_stream()
    prompt_text = "".join(stream.push(i) for i in prompt_ids)
    out = [_CSS, '<div class="tokout">', _KEY]
    if show_prompt and prompt_text:
        out.append(f'<span class="prompt">{style.escape(prompt_text)}</span>')
    for step in steps_like:
        piece = stream.push(step.token_id)
        special = tokenizer.is_special(step.token_id)
        classes = "tok sp" if special else "tok"
        if step.position == selected:
            classes += " sel"
        if piece:
            shown = style.escape(piece).replace("\n", '<span class="nl">↵</span>\n')
        else:
            shown = '<span class="nl">⋯</span>'  # part of a character; the next token completes it
        p = min(max(float(step.prob), 0.0), 1.0)
        tip = style.escape(f"p = {p:.3g} · rank {_rank(step)} · id {step.token_id}")
        out.append(f'<span class="{classes}" data-pos="{step.position}" title="{tip}" '
                   f'style="background:{_TINTS[round(p * 100)]}">{shown}</span>')
    out.append("</div>")
    return "".join(out)
