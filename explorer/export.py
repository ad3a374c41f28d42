"""What leaves the explorer and comes back (pure logic, no Gradio): the versioned session file and its checks, the
per-token CSV, the self-contained HTML report, the hash of the model's weights, and the values of a shared link."""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

FORMAT = "llm-explorer-session"
VERSION = 2  # v2 fills "branches" and "interventions" (v1 held them empty) and adds "current_branch"; v1 stays readable
MAX_BRANCHES = 32  # branches a session file may hold (each is a generation to replay)
MAX_SESSION_CHARS = 400_000  # a session of 256 tokens with 20 candidates each is about 170 KB
PROB_TOLERANCE = 1e-4  # a replay's probabilities may differ by this much (floats are stored to 8 digits)
CSV_TOP = 5
STEP_FIELDS: dict[str, type | tuple[type, ...]] = {
    "index": int, "position": int, "token_id": int, "text": str, "prob": (int, float),
    "sampled_prob": (int, float), "entropy": (int, float), "top_ids": list, "top_probs": list,
    "top_sampled_probs": list, "top_kept": list, "n_kept": int, "kept_mass": (int, float),
}
SETTINGS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "greedy", "chat", "stop_at_eos")
# a shared link's query: the settings, then the view (tab, token position, layer, head) and run=1
LINK_NUMBERS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int}
LINK_FLAGS = ("chat", "greedy", "stop_at_eos", "run")
LINK_VIEW = ("tab", "token", "layer", "head")


class SessionFileError(ValueError):
    """A session file this explorer will not show; the message is a sentence for the user."""


def _round(x: float) -> float:
    """A float32 value to 8 significant digits: the stored file stays small and still exact to float32."""
    return float(f"{float(x):.8g}")


# ---- the weights' hash ----------------------------------------------------------------------------------------------

_hashes: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def weights_files(source: str) -> list[Path]:
    """The files holding a model's weights: the file itself, or a folder's .safetensors / .gguf files (a hub id
    through huggingface_hub's local cache); none for random weights."""
    if source.startswith("random:"):
        return []
    path = Path(source).expanduser()
    if not path.exists():
        from model.loading.hub import fetch  # a hub id: the snapshot it was loaded from

        path = fetch(source)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".gguf"))


def weights_sha256(source: str) -> str | None:
    """sha256 of the weights (of the files' hashes, in name order, for several files), computed once per file
    version (path, size, mtime) and kept; None for random weights. Reading 100 MB takes a few tenths of a second:
    call it off the event loop."""
    files = weights_files(source)
    if not files:
        return None
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    with _hash_lock:  # two sessions exporting at once hash the file once
        if key not in _hashes:
            digests = [_file_sha256(p) for p in files]
            _hashes[key] = digests[0] if len(digests) == 1 else hashlib.sha256(
                "".join(f"{p.name}:{d}\n" for p, d in zip(files, digests)).encode()).hexdigest()
        return _hashes[key]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---- session files --------------------------------------------------------------------------------------------------

def step_record(step: Any) -> dict[str, Any]:
    """What a model Step holds, as the file stores it (the trace stays out: a replay recomputes it)."""
    return {
        "index": step.index, "position": step.position, "token_id": step.token_id, "text": step.text,
        "prob": _round(step.prob), "sampled_prob": _round(step.sampled_prob), "entropy": _round(step.entropy),
        "top_ids": list(step.top_ids), "top_probs": [_round(p) for p in step.top_probs],
        "top_sampled_probs": [_round(p) for p in step.top_sampled_probs], "top_kept": list(step.top_kept),
        "n_kept": step.n_kept, "kept_mass": _round(step.kept_mass), "finish_reason": step.finish_reason,
    }


def session_document(model: Mapping[str, Any], prompt_ids: Sequence[int], settings: Mapping[str, Any],
                     steps: Sequence[Any], selection: Mapping[str, Any], branches: Sequence[Mapping[str, Any]] = (),
                     interventions: Sequence[Mapping[str, Any]] = (), current_branch: int = 0) -> dict[str, Any]:
    """The session file's content. model: name, weights_sha256, device, dtype; settings: the generation's (the
    keys of SETTINGS); steps: the original generation's; selection: tab, token (a position or None), layer, head;
    branches: BranchTree.records() (parent, at, token_id, cut, ids; the original is branch 0); interventions: the
    ablations every forward pass of the run had, as /generate takes them ({"kind": "head", "layer": 3, "head": 2});
    current_branch: the branch the views showed."""
    return {
        "format": FORMAT, "version": VERSION, "model": dict(model), "prompt_ids": list(prompt_ids),
        "settings": {k: settings[k] for k in SETTINGS}, "steps": [step_record(s) for s in steps],
        "selection": dict(selection), "branches": [dict(b) for b in branches],
        "interventions": [dict(i) for i in interventions], "current_branch": current_branch,
    }


def session_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def read_session(text: Any) -> dict[str, Any]:
    """The document of a session file's text, its structure checked (the model, the settings' values and the tokens
    are checked by the app that replays it); raises SessionFileError with a sentence."""
    if isinstance(text, str) and len(text) > MAX_SESSION_CHARS:
        raise SessionFileError(f"The file is over {MAX_SESSION_CHARS:,} characters: too large to be a session file.")
    if not isinstance(text, str) or not text.strip():
        raise SessionFileError("The session file is empty.")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SessionFileError(f"This is not a session file: it is not valid JSON ({e.msg} at line {e.lineno}, "
                               f"column {e.colno}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionFileError("This is not a session file of the LLM Explorer (its \"format\" is not "
                               f"\"{FORMAT}\").")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SessionFileError("The session file has no valid version number.")
    if version > VERSION:
        raise SessionFileError(f"The session file is of version {version}, written by a newer explorer; this one "
                               f"reads versions up to {VERSION}.")
    model = doc.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise SessionFileError("The session file does not name its model.")
    ids = doc.get("prompt_ids")
    if not isinstance(ids, list) or not ids or not all(_is_int(i) for i in ids):
        raise SessionFileError("The session file's prompt_ids must be a non-empty list of token ids.")
    settings = doc.get("settings")
    if not isinstance(settings, dict) or any(k not in settings for k in SETTINGS):
        raise SessionFileError(f"The session file's settings must hold {', '.join(SETTINGS)}.")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise SessionFileError("The session file holds no generated tokens.")
    for i, step in enumerate(steps):
        _check_step(step, i, len(ids) + i)
    for name in ("branches", "interventions"):
        if not isinstance(doc.get(name, []), list):
            raise SessionFileError(f"The session file's {name} must be a list.")
    if not all(isinstance(i, dict) for i in doc.get("interventions", [])):
        raise SessionFileError("The session file's interventions must be objects like {\"kind\": \"head\", "
                               "\"layer\": 3, \"head\": 2}.")
    branches = doc.get("branches", [])
    if len(branches) > MAX_BRANCHES:
        raise SessionFileError(f"The session file holds {len(branches)} branches; at most {MAX_BRANCHES} are replayed.")
    for i, branch in enumerate(branches):
        _check_branch(branch, i + 1)
    current = doc.get("current_branch", 0)
    if not _is_int(current) or not 0 <= current <= len(branches):
        raise SessionFileError(f"The session file's current_branch must be a branch number from 0 to {len(branches)}.")
    if not isinstance(doc.get("selection", {}), dict):
        raise SessionFileError("The session file's selection must be an object.")
    return doc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_branch(branch: Any, number: int) -> None:
    """A branch record's structure (BranchTree.records()); whether its tokens are the model's, the replay checks."""
    if not isinstance(branch, dict):
        raise SessionFileError(f"Branch {number} of the session file is not an object.")
    parent, at, token_id, ids = (branch.get(k) for k in ("parent", "at", "token_id", "ids"))
    if not _is_int(parent) or not 0 <= parent < number:
        raise SessionFileError(f"Branch {number} of the session file must leave an earlier branch (parent 0 to "
                               f"{number - 1}).")
    if not _is_int(at) or at < 0 or not _is_int(token_id) or not isinstance(branch.get("cut"), bool):
        raise SessionFileError(f"Branch {number} of the session file has no valid at, token_id or cut.")
    if not isinstance(ids, list) or not ids or not all(_is_int(i) for i in ids) or ids[0] != token_id:
        raise SessionFileError(f"Branch {number} of the session file must list its token ids, the forced one first.")


def _check_step(step: Any, i: int, position: int) -> None:
    if not isinstance(step, dict):
        raise SessionFileError(f"Token {i + 1} of the session file is not an object.")
    for name, kind in STEP_FIELDS.items():
        value = step.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SessionFileError(f"Token {i + 1} of the session file has no valid {name}.")
    if step["index"] != i or step["position"] != position:
        raise SessionFileError(f"Token {i + 1} of the session file is out of order (index {step['index']}, "
                               f"position {step['position']}; expected {i} and {position}).")
    lists = [step[k] for k in ("top_ids", "top_probs", "top_sampled_probs", "top_kept")]
    if len({len(x) for x in lists}) != 1 or not all(_is_int(t) for t in step["top_ids"]) or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) for p in step["top_probs"]):
        raise SessionFileError(f"Token {i + 1} of the session file has malformed top candidates.")


def check_model(doc: Mapping[str, Any], name: str, weights_sha256: str | None, vocab_size: int) -> None:
    """Refuse a session of another model, or of other weights under the same name."""
    model = doc["model"]
    if model["name"] != name:
        raise SessionFileError(f"This session was made with {model['name'][:80]!r}; this server runs {name!r}.")
    theirs = model.get("weights_sha256")
    if theirs != weights_sha256:
        raise SessionFileError(f"This session was made with other weights of {name} (sha256 {str(theirs)[:12]}…; "
                               f"this server's are {str(weights_sha256)[:12]}…).")
    bad = [i for i in doc["prompt_ids"] + [s["token_id"] for s in doc["steps"]] if not 0 <= i < vocab_size]
    if bad:
        raise SessionFileError(f"The session file holds token ids outside this model's vocabulary (e.g. {bad[0]}).")


def first_mismatch(recorded: Sequence[Mapping[str, Any]], replayed: Sequence[Any]) -> str | None:
    """None when the replay gave every recorded token with the same text, probability, entropy and top candidates;
    else a sentence on the first difference."""
    if len(replayed) < len(recorded):
        return (f"The replay ended after {len(replayed)} tokens; the file holds {len(recorded)}: the file does not "
                "match what this model generates.")
    for want, got in zip(recorded, replayed):
        n = want["index"] + 1
        if want["token_id"] != got.token_id:
            return (f"Token {n} differs: the file has id {want['token_id']}, the replay gives id {got.token_id}. The "
                    "file was changed, or made by another model or machine.")
        if want["text"] != got.text:
            return f"Token {n}'s text differs from the replay's: the file was changed."
        numbers = [("probability", want["prob"], got.prob), ("entropy", want["entropy"], got.entropy)]
        numbers += [("candidate probability", p, q) for p, q in zip(want["top_probs"], got.top_probs)]
        for what, p, q in numbers:
            if not math.isclose(p, q, rel_tol=PROB_TOLERANCE, abs_tol=PROB_TOLERANCE):
                return (f"Token {n}'s {what} differs: the file has {p:.6g}, the replay gives {q:.6g}. The file was "
                        "changed, or made on another machine or number format.")
        if want["top_ids"] != list(got.top_ids[: len(want["top_ids"])]):
            return f"Token {n}'s top candidates differ from the replay's: the file was changed."
    return None


# ---- the per-token table --------------------------------------------------------------------------------------------

def tokens_csv(steps: Sequence[Any], decode: Callable[[int], str]) -> str:
    """One row per generated token: position, id, text, p, entropy (nats), then the top-5 candidates' id, text and
    p. Texts are the model's own (a leading space, a newline), quoted as CSV quotes them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["position", "id", "text", "p", "entropy"] +
                    [f"top{k}_{c}" for k in range(1, CSV_TOP + 1) for c in ("id", "text", "p")])
    for step in steps:
        top = [(i, decode(i), f"{p:.6g}") for i, p in zip(step.top_ids[:CSV_TOP], step.top_probs[:CSV_TOP])]
        writer.writerow([step.position, step.token_id, step.text, f"{step.prob:.6g}", f"{step.entropy:.6g}"] +
                        [v for row in top for v in row])
    return out.getvalue()


# ---- the offline report ---------------------------------------------------------------------------------------------

REPORT_CSS = (
    "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}"
    "h1{font-size:1.5rem;margin:0 0 4px}h2{font-size:1.2rem;margin:28px 0 8px;border-bottom:1px solid #ddd}"
    ".meta{color:#555;font-size:.9rem}.panel{margin:10px 0}.figure{margin:10px 0;border:1px solid #eee}"
    "section.text{border:1px solid #e5e7eb;border-radius:6px;padding:6px 12px}"
)
# draws every figure from its JSON once plotly.js has loaded; a figure's toolbar exports PNG and SVG
# (assets/figure_export.js, embedded before plotly.js)
REPORT_JS = """
document.querySelectorAll("script.figure-json").forEach((script) => {
  const fig = JSON.parse(script.textContent);
  const div = document.getElementById(script.dataset.target);
  Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
});
"""


def _script_text(text: str) -> str:
    """Text safe inside a <script> element: no "</" can close it early (JSON stays the same JSON)."""
    return text.replace("</", "<\\/")


def report_html(title: str, meta: str, text_html: str, panels: Sequence[tuple[str, Sequence[Any]]],
                plotly_js: str, figure_export_js: str) -> str:
    """One HTML file that needs no server and no network: plotly.js embedded once, then the text and, per tab, its
    panels in order: an HTML string (a view's, already escaped) or a figure (anything with plotly's to_json()). title
    and meta are plain text (escaped here)."""
    body, scripts, n = [], [], 0
    for tab, items in panels:
        body.append(f"<h2>{html.escape(tab)}</h2>")
        for item in items:
            if not hasattr(item, "to_json"):
                body.append(f'<div class="panel">{item}</div>')
                continue
            n += 1
            figure = item.to_json()
            body.append(f'<div class="figure" id="figure-{n}"></div>')
            scripts.append(f'<script type="application/json" class="figure-json" data-target="figure-{n}">'
                           f"{_script_text(figure)}</script>")
    return "".join([
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{REPORT_CSS}</style>",
        f"<script>{_script_text(figure_export_js)}</script>",
        f"<script>{_script_text(plotly_js)}</script></head><body>",
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)}</p>",
        f"<section class=\"text\">{text_html}</section>", *body, *scripts,
        f"<script>{REPORT_JS}</script></body></html>",
    ])


# ---- shared links ---------------------------------------------------------------------------------------------------

def parse_link(query: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A link's query as typed values (numbers, booleans, text) for the app's own checks, and a sentence for each
    value that is not even of its type. Unknown keys are ignored; the view's values stay text (the app knows the
    model's sizes)."""
    values: dict[str, Any] = {}
    problems = []
    if "prompt" in query:
        values["prompt"] = query["prompt"]
    for name, kind in LINK_NUMBERS.items():
        if name in query:
            try:
                number = float(query[name])
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or (kind is int and not number.is_integer()):
                problems.append(f"{name}={query[name][:40]!r} is not a {'whole ' if kind is int else ''}number.")
                continue
            values[name] = int(number) if kind is int else number
    for name in LINK_FLAGS:
        if name in query:
            if query[name] not in ("0", "1", "true", "false"):
                problems.append(f"{name}={query[name][:40]!r} is not 1 or 0.")
                continue
            values[name] = query[name] in ("1", "true")
    for name in LINK_VIEW:
        if name in query:
            values[name] = query[name]
    return values, problems
