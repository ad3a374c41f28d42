"""The output strip: the prompt, muted, then the generated text, each token tinted by the probability it had when
it was chosen, a forced token marked; above it, once there are branches, a bar that names the current one and
switches between them. One span per generated token; in two parts, so that a streamed update sends only the newest
tokens (explorer/ui/output_strip.py)."""
from __future__ import annotations

from typing import Protocol, Sequence

from plotly.colors import sample_colorscale, unlabel_rgb

from model.tokenizer import Tokenizer

from ..branches import Branch, ForcedStep
from . import style
from .text import token_text


class StepLike(Protocol):
    token_id: int
    prob: float
    position: int


FORCED = "#B45309"  # a token the user forced, and the bar of branches

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
    ".tokout .forced{box-shadow:inset 0 -3px 0 %(forced)s}"
    ".tokout .forced::before{content:'↪';color:%(forced)s;font-size:12px;vertical-align:super}"
    ".branchbar{position:sticky;top:0;z-index:1;background:#fff;font-family:%(font)s;font-size:13px;"
    "padding:2px 0;display:flex;flex-wrap:wrap;gap:4px;align-items:center}"
    ".branchbar .where{color:%(forced)s;margin-right:6px}"
    ".branchbar .branch-go{border:1px solid #ccc;border-radius:4px;padding:0 6px;background:#f7f7f7;cursor:pointer}"
    ".branchbar .branch-go.cur{border-color:%(forced)s;background:#fdf0e6;font-weight:600;cursor:default}"
    "</style>"
) % dict(font=style.FONT, sel=style.SELECTED, lo=_TINTS[0], hi=_TINTS[-1], forced=FORCED)

_KEY = '<div class="key">p when chosen: 0<span class="bar"></span>1</div>'


def _rank(step: StepLike) -> str:
    top = getattr(step, "top_ids", None)
    if top is None:
        return "?"
    return str(list(top).index(step.token_id) + 1) if step.token_id in top else f">{len(top)}"


def _forced_words(tokenizer: Tokenizer, forced: ForcedStep) -> str:
    """'cat' (cut by the sampler): the forced token, quoted and escaped, and whether the sampler had kept it."""
    token = style.token_label(token_text(tokenizer, forced.token_id), max_len=16)
    return f"‘{token}’ ({'cut' if forced.cut else 'kept'} by the sampler)"


def branch_bar_html(tokenizer: Tokenizer, branches: Sequence[Branch], current: int, n_prompt: int) -> str:
    """Once there are branches: where the current one leaves its parent, and a button per branch (data-branch: its
    index; assets/explorer.js switches on a click; spans, which the page's styles for buttons leave alone). Empty
    while there is only the original."""
    if len(branches) < 2:
        return ""
    branch = branches[current]
    if branch.forced is None:
        where = f"The original text · {len(branches) - 1} branch{'es' if len(branches) > 2 else ''}:"
    else:
        parent = "the original" if branch.parent == 0 else f"branch {branch.parent}"
        where = (f"Branch {current} of {len(branches) - 1}: forced {_forced_words(tokenizer, branch.forced)} at "
                 f"position {n_prompt + branch.at}, leaving {parent}:")
    buttons = []
    for index, b in enumerate(branches):
        word = "" if b.forced is None else style.token_label(token_text(tokenizer, b.forced.token_id), max_len=10)
        label = "original" if b.forced is None else f"{index}: ‘{word}’ @{n_prompt + b.at}"
        classes = "branch-go cur" if index == current else "branch-go"
        buttons.append(f'<span class="{classes}" role="button" tabindex="0" data-branch="{index}">{label}</span>')
    return f'<div class="branchbar" id="branch-bar"><span class="where">{where}</span>{"".join(buttons)}</div>'


def output_parts(
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    steps_like: Sequence[StepLike],
    selected: int | None = None,
    show_prompt: bool = True,
    bar: str = "",
    settled: int | None = None,
) -> tuple[str, str]:
    """The strip's HTML in two parts. The head: the styles, `bar` (the branches' bar), the key, the prompt as plain
    muted text and the first `settled` generated tokens (all of them when None). The tail: the tokens after those, in
    a .tokout of its own ("" when there are none); the page shows the two in one box, where the text flows on from
    one to the other. Each generated token is a `<span class="tok" data-pos=...>` whose background is the probability
    it had when chosen (step.prob); a token that holds only part of a character shows ⋯ until the token that
    completes it; a forced token (ForcedStep) has the class "forced"."""
    stream = tokenizer.text_stream()
    prompt_text = "".join(stream.push(i) for i in prompt_ids)
    head = [_CSS, bar, '<div class="tokout">', _KEY]
    if show_prompt and prompt_text:
        head.append(f'<span class="prompt">{style.escape(prompt_text)}</span>')
    spans = []
    for step in steps_like:
        piece = stream.push(step.token_id)
        special = tokenizer.is_special(step.token_id)
        classes = "tok sp" if special else "tok"
        if step.position == selected:
            classes += " sel"
        forced = isinstance(step, ForcedStep)
        if forced:
            classes += " forced"
        if piece:
            shown = style.escape(piece).replace("\n", '<span class="nl">↵</span>\n')
        else:
            shown = '<span class="nl">⋯</span>'  # part of a character; the next token completes it
        p = min(max(float(step.prob), 0.0), 1.0)
        how = f"forced by you, {'cut' if step.cut else 'kept'} by the sampler · " if forced else ""
        tip = style.escape(f"{how}p = {p:.3g} · rank {_rank(step)} · id {step.token_id}")
        spans.append(f'<span class="{classes}" data-pos="{step.position}" title="{tip}" '
                     f'style="background:{_TINTS[round(p * 100)]}">{shown}</span>')
    settled = len(spans) if settled is None else max(0, min(settled, len(spans)))
    tail = f'<div class="tokout">{"".join(spans[settled:])}</div>' if settled < len(spans) else ""
    return "".join(head + spans[:settled] + ["</div>"]), tail
