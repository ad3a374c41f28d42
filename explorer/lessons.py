"""Guided lessons: data files in assets/lessons/*.json, each a run to regenerate (prompt, chat, sampler settings) and a
few steps that move the app's one selection (tab, layer, head, token, a tab's option) and say a sentence. Loading and
checking only; the panel that plays them is explorer/ui/lessons.py."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

LESSONS_DIR = Path(__file__).resolve().parents[1] / "assets" / "lessons"
TABS = ("Tokens", "Embeddings", "Attention", "Next token", "Logit lens", "Experts", "Architecture")
ARCHITECTURES = ("loaded", "kimi-k2")  # what the Architecture tab draws: the loaded model or Kimi-K2's config
ARCH_VIEWS = ("Blocks", "RoPE")  # the Architecture tab's views: the block diagram, or rotary position embedding
RUN_DEFAULTS = dict(chat=False, max_new_tokens=16, greedy=True, temperature=0.8, top_k=50, top_p=0.95, seed=0,
                    stop_at_eos=True)
STEP_KEYS = {"text", "tab", "layer", "head", "token", "hide_sink", "architecture", "arch_view"}
LESSON_KEYS = {"title", "module", "model", "run", "steps", "claims"}
# kinds of checkable claim (tests/integration/test_lesson_claims.py checks each against the model) and their fields
CLAIMS = {
    "token": {"position", "text"},  # the run's token at position is this piece
    "surprisal": {"position", "nats"},  # -log p of the token at position, to 0.05 nats
    "head_score": {"score", "layer", "head", "min", "best"},  # a head's score (see the claims test), the model's best?
    "lens_top1_from": {"position", "layer", "token"},  # the logit lens first ranks token top-1 at this row
    "nearest": {"position", "tokens"},  # these tokens are among the 10 nearest rows of E
    "sampled": {"position", "rank", "kept"},  # the sampled token was the rank-th most likely, of `kept` kept
    "norm_growth": {"position", "min_ratio", "max_norm_out"},  # residual growth through the model; norms' outputs
    "rope_angle": {"position", "fastest", "slowest"},  # radians turned by the fastest and slowest pair
    "parameters": {"architecture", "total", "active"},  # parameters in total and active per token, to 1%
    "component": {"architecture", "component", "total", "active"},  # the same for one component, as rounded
    "kv_cache": {"architecture", "numbers"},  # numbers cached per token per layer
    "rope": {"architecture", "theta", "pairs", "trained", "own"},  # the rotary embedding as the RoPE view reads it
}


class LessonError(ValueError):
    """A lesson file that cannot be played, said in a sentence naming the file."""


@dataclass(frozen=True)
class View:
    """Where a step leaves the app: every field set (a step names only what it changes)."""

    tab: str = "Tokens"
    layer: int = 0
    head: int | str = "mean"
    token: int | None = None  # a position of the run; None: the last token
    hide_sink: bool = False
    architecture: str = "loaded"
    arch_view: str = "Blocks"


@dataclass(frozen=True)
class Step:
    text: str
    changes: dict[str, Any]  # the fields of View this step sets

    def mentions(self) -> dict[str, int]:
        """The layer, head and token the sentence names ("layer 18, head 6", "position 12"), where it names one
        of each, to compare with the step."""
        found = {}
        for key, words in (("layer", "layer"), ("head", "head"), ("token", "token|position")):
            numbers = {int(n) for n in re.findall(rf"\b(?:{words}) (\d+)\b", self.text, flags=re.IGNORECASE)}
            if len(numbers) == 1:
                found[key] = numbers.pop()
        return found


@dataclass(frozen=True)
class Lesson:
    name: str  # the file's stem, e.g. "09-induction-heads"
    title: str
    module: str  # the course module it belongs to
    model: str  # the model whose behaviour the texts describe (LanguageModel.name)
    run: dict[str, Any]  # prompt, chat, max_new_tokens, greedy, temperature, top_k, top_p, seed, stop_at_eos
    steps: tuple[Step, ...]
    claims: tuple[dict[str, Any], ...]

    @property
    def label(self) -> str:
        """The menu's entry: the lesson's number and title."""
        number = self.name.split("-", 1)[0]
        return f"{int(number)}. {self.title}" if number.isdigit() else self.title

    def views(self) -> list[View]:
        """Where each step leaves the app: the changes of every step so far, so Previous lands where Next did."""
        views, view = [], View()
        for step in self.steps:
            view = replace(view, **step.changes)
            views.append(view)
        return views

    def positions(self) -> list[int]:
        """Every token position the steps and claims name."""
        named = [v.token for v in self.views() if v.token is not None]
        return named + [c["position"] for c in self.claims if "position" in c]


def _fail(name: str, message: str) -> LessonError:
    return LessonError(f"Lesson {name}: {message}")


def _whole(value: Any, name: str, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(name, f"{what} must be a whole number ≥ {low}, got {value!r}")
    return value


def _run(data: Any, name: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise _fail(name, "the run needs a prompt (text)")
    unknown = set(data) - set(RUN_DEFAULTS) - {"prompt"}
    if unknown:
        raise _fail(name, f"unknown run settings {sorted(unknown)}")
    run = {"prompt": data["prompt"], **RUN_DEFAULTS, **data}
    for key in ("chat", "greedy", "stop_at_eos"):
        if not isinstance(run[key], bool):
            raise _fail(name, f"run setting {key} must be true or false")
    _whole(run["max_new_tokens"], name, "max_new_tokens", 1)
    _whole(run["top_k"], name, "top_k")
    _whole(run["seed"], name, "seed")
    for key in ("temperature", "top_p"):
        if isinstance(run[key], bool) or not isinstance(run[key], (int, float)):
            raise _fail(name, f"run setting {key} must be a number")
    if not run["greedy"] and "seed" not in data:
        raise _fail(name, "a sampled run must name its seed, so that it regenerates the same tokens")
    return run


def _step(data: Any, name: str, index: int) -> Step:
    where = f"step {index + 1}"
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise _fail(name, f"{where} needs a text")
    unknown = set(data) - STEP_KEYS
    if unknown:
        raise _fail(name, f"{where} has unknown keys {sorted(unknown)}")
    changes = {k: v for k, v in data.items() if k != "text"}
    if "tab" in changes and changes["tab"] not in TABS:
        raise _fail(name, f"{where}: no tab {changes['tab']!r} (tabs: {', '.join(TABS)})")
    if "layer" in changes:
        _whole(changes["layer"], name, f"{where}'s layer")
    if "head" in changes and changes["head"] != "mean":
        _whole(changes["head"], name, f"{where}'s head (or \"mean\")")
    if changes.get("token") is not None:
        _whole(changes["token"], name, f"{where}'s token")
    if "hide_sink" in changes and not isinstance(changes["hide_sink"], bool):
        raise _fail(name, f"{where}'s hide_sink must be true or false")
    if "architecture" in changes and changes["architecture"] not in ARCHITECTURES:
        raise _fail(name, f"{where}'s architecture must be one of {ARCHITECTURES}")
    if "arch_view" in changes and changes["arch_view"] not in ARCH_VIEWS:
        raise _fail(name, f"{where}'s arch_view must be one of {ARCH_VIEWS}")
    return Step(data["text"].strip(), changes)


def _claim(data: Any, name: str) -> dict[str, Any]:
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in CLAIMS:
        raise _fail(name, f"a claim's kind must be one of {sorted(CLAIMS)}, got {kind!r}")
    if set(data) - {"kind"} != CLAIMS[kind]:
        raise _fail(name, f"a {kind} claim has the fields {sorted(CLAIMS[kind])}, got {sorted(set(data) - {'kind'})}")
    if "position" in data:
        _whole(data["position"], name, f"a {kind} claim's position")
    return dict(data)


def parse_lesson(data: Any, name: str) -> Lesson:
    """A lesson from a file's JSON; LessonError names what is wrong."""
    if not isinstance(data, dict):
        raise _fail(name, "the file must hold a JSON object")
    missing, unknown = {"title", "module", "model", "run", "steps"} - set(data), set(data) - LESSON_KEYS
    if missing or unknown:
        raise _fail(name, f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    for key in ("title", "module", "model"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(name, f"{key} must be text")
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise _fail(name, "a lesson needs at least one step")
    steps = tuple(_step(s, name, i) for i, s in enumerate(data["steps"]))
    if "tab" not in steps[0].changes:
        raise _fail(name, "the first step must name its tab")
    claims = tuple(_claim(c, name) for c in data.get("claims", []))
    return Lesson(name, data["title"].strip(), data["module"].strip(), data["model"].strip(), _run(data["run"], name),
                  steps, claims)


def load_lesson(path: Path) -> Lesson:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path.stem, f"cannot read {path.name}: {e}") from None
    return parse_lesson(data, path.stem)


def load_lessons(folder: Path = LESSONS_DIR) -> list[Lesson]:
    """Every lesson of the folder, in the order of their file names."""
    return [load_lesson(path) for path in sorted(folder.glob("*.json"))]


def check_against(lesson: Lesson, n_layers: int, n_heads: int, tabs: list[str], n_tokens: int) -> None:
    """LessonError unless every step fits this model and run: tabs it has, layers and heads in range, token positions
    inside a run of at most n_tokens, and each sentence naming the layer, head and token its step moves to."""
    for index, (step, view) in enumerate(zip(lesson.steps, lesson.views())):
        where = f"step {index + 1}"
        if view.tab not in tabs:
            raise _fail(lesson.name, f"{where} opens the {view.tab} tab, which this model has not")
        if view.layer >= n_layers:
            raise _fail(lesson.name, f"{where}: layer {view.layer} of a model with {n_layers} layers (0–{n_layers - 1})")
        if view.head != "mean" and view.head >= n_heads:
            raise _fail(lesson.name, f"{where}: head {view.head} of a model with {n_heads} heads (0–{n_heads - 1})")
        for key, number in step.mentions().items():
            if getattr(view, key) != number:
                raise _fail(lesson.name, f"{where}'s text names {key} {number} but the step shows "
                                         f"{key} {getattr(view, key)}")
    for position in lesson.positions():
        if position >= n_tokens:
            raise _fail(lesson.name, f"position {position} is past the end of its run ({n_tokens} tokens)")
