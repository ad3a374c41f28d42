"""Generation requests, checked against the server's limits, for the UI and the named API endpoint alike; the API
endpoints /generate, /stats, /export_session and /import_session, and the replay of a session file that the UI's
import shares. The generations themselves run in explorer/generations.py."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import gradio as gr
from gradio_client.utils import is_file_obj_with_meta

from explorer.branches import Branch, forced_step
from explorer.export import (SessionFileError, check_model, first_mismatch, read_session, session_document,
                             tokens_csv, weights_sha256)
from explorer.generations import ACTIVE, Generation
from explorer.memory import SessionMemory
from explorer.model_thread import MODEL_THREAD
from explorer.probing import describe, intervention_records, parse_interventions, patching_pair, patching_sweep
from explorer.ui.common import Limits
from model import LanguageModel
from model.sampling import GREEDY_BELOW_TEMPERATURE

MAX_SEED = 2**32 - 1
SHOWN_CHARS = 80  # of a client's value quoted in a message


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    greedy: bool  # as decoded: also true for a temperature below the sampler's floor (see note)
    chat: bool
    stop_at_eos: bool = True  # False: only the token limit, the time limit or Stop end it
    note: str | None = None  # how the request was read, when not as sent (a tiny temperature decodes greedily)

    @classmethod
    def checked(cls, prompt: Any, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
                greedy: Any, chat: Any, stop_at_eos: Any, limits: Limits) -> "GenerationRequest":
        """Validate everything a client could send, strictly typed as JSON types it (text, numbers that are not
        booleans, booleans); raise a user error with a message a user can act on."""
        check = setting_checks(limits)
        prompt, temperature, top_p = check["prompt"](prompt), check["temperature"](temperature), check["top_p"](top_p)
        top_k, max_new_tokens = check["top_k"](top_k), check["max_new_tokens"](max_new_tokens)
        seed = check["seed"](0 if seed is None else seed)
        greedy, chat, stop_at_eos = check["greedy"](greedy), check["chat"](chat), check["stop_at_eos"](stop_at_eos)
        note = None
        if not greedy and 0 < temperature < GREEDY_BELOW_TEMPERATURE:
            greedy, note = True, (f"A temperature below {GREEDY_BELOW_TEMPERATURE:g} decodes greedily (the most "
                                  "likely token at each step).")
        return cls(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, chat, stop_at_eos, note)

    def prompt_ids(self, lm: LanguageModel, limits: Limits) -> list[int]:
        if self.chat and lm.tokenizer.chat_template is None:
            raise user_error("This model has no chat template; untick 'Chat template'.")
        if len(self.prompt) > limits.max_prompt_tokens * 64:  # refuse before tokenizing megabytes
            raise user_error(f"The prompt is {len(self.prompt):,} characters; this server accepts at most "
                           f"{limits.max_prompt_tokens} tokens.")
        ids = lm.prompt_ids(self.prompt, chat=self.chat)
        if len(ids) > limits.max_prompt_tokens:
            raise user_error(f"The prompt is {len(ids)} tokens; this server accepts at most {limits.max_prompt_tokens}.")
        return ids

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def start(self, lm: LanguageModel, ids: list[int], limits: Limits, record: bool = False,
              should_stop: Callable[[], bool] = lambda: False, interventions: tuple = ()) -> Generation:
        """The generation of this request from the prompt ids, running on the model thread under the server's
        limits, edited by the interventions (ablations)."""
        settings = {**self.generate_kwargs(len(ids), limits), "interventions": tuple(interventions)}
        return Generation(lm, ids, settings, limits.time_limit_seconds, record=record, should_stop=should_stop)

    def generate_kwargs(self, n_prompt: int, limits: Limits) -> dict[str, Any]:
        """Arguments for LanguageModel.generate; new tokens also capped by the server's total context."""
        n_new = min(self.max_new_tokens, limits.max_context - n_prompt)
        return dict(max_new_tokens=max(n_new, 0), temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, seed=self.seed, greedy=self.greedy, stop_at_eos=self.stop_at_eos)


def start_continuation(lm: LanguageModel, limits: Limits, settings: dict[str, Any], ids: list[int], n_generated: int,
                       record: bool = False, should_stop: Callable[[], bool] = lambda: False,
                       interventions: tuple = ()) -> Generation | None:
    """A branch's continuation: the generation `settings` asked for (a GenerationRequest's, the seed included) from
    ids (the prompt and the branch's n_generated tokens, the forced one last), for the new tokens it has left, with
    the interventions the original ran with; None when it has none left (the forced token ends the text, or the
    token limit is reached)."""
    left = settings["max_new_tokens"] - n_generated
    if left <= 0 or (settings["stop_at_eos"] and ids[-1] in lm.tokenizer.stop_ids):
        return None
    request = GenerationRequest(**{**settings, "max_new_tokens": left})
    return request.start(lm, ids, limits, record=record, should_stop=should_stop, interventions=interventions)


def setting_checks(limits: Limits) -> dict[str, Callable[[Any], Any]]:
    """Each setting's check, by its name in /generate: the value as used, or a user error (shared links check their
    values one by one with these)."""
    return {
        "prompt": _prompt,
        "max_new_tokens": lambda v: _whole(v, "Max new tokens", 1, limits.max_new_tokens),
        "temperature": lambda v: _real(v, "Temperature", "between 0 and 10", lambda x: 0 <= x <= 10),
        "top_k": lambda v: _whole(v, "Top-k", 0, limits.max_top_k),
        "top_p": lambda v: _real(v, "Top-p", "in (0, 1]", lambda x: 0 < x <= 1),
        "seed": lambda v: _whole(v, "Seed", 0, MAX_SEED),
        **{name: (lambda v, name=name: _flag(v, name)) for name in ("greedy", "chat", "stop_at_eos")},
    }


def user_error(message: str) -> gr.Error:
    """A client's mistake, told in a sentence: Gradio shows it and, unlike an error of the app, logs no traceback."""
    return gr.Error(message, print_exception=False)


def shown(value: Any) -> str:
    """A client's value as a message may quote it: its repr, cut to SHOWN_CHARS characters (a 5 MB string sent as a
    number must not come back whole, nor fill the server's log)."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text):,} characters)"


def _described(value: Any) -> str:
    """What a client sent, by its JSON type and value: "text 'false'", "true", "a list [1, 2]"."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    kind = {str: "text", int: "the number", float: "the number", list: "a list", dict: "an object"}.get(type(value))
    return f"{kind or 'a value'} {shown(value)}"


def _prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise user_error(f"The prompt must be text, got {_described(value)}.")
    if not value.strip():
        raise user_error("The prompt is empty: type some text first.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise user_error("The prompt is not valid Unicode (it holds lone surrogates); send UTF-8 text.") from None
    return value


def _flag(value: Any, name: str) -> bool:
    """A boolean, strictly: the text "false" or the number 0 is refused, not read as Python's truth."""
    if not isinstance(value, bool):
        raise user_error(f"{name} must be true or false, got {_described(value)}.")
    return value


def _real(value: Any, name: str, wanted: str, within: Callable[[float], bool]) -> float:
    """A number (an int or a float, never a boolean or text) that is finite and `within`; Python compares a huge int
    with a float exactly, so no int is ever too large to check."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise user_error(f"{name} must be a number, got {_described(value)}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise user_error(f"{name} must be a finite number, got {shown(value)}.")
    if not within(value):
        raise user_error(f"{name} must be {wanted}, got {shown(value)}.")
    return float(value)


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """A whole number from low to high: an int, or a float with no fraction (sliders send 32.0), never a boolean."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise user_error(f"{name} must be a whole number from {low} to {high}, got {_described(value)}.")
    return value


def check_event_inputs(app: gr.Blocks) -> None:
    """Replaces Gradio's first check of the values an event receives, before Gradio touches them. Gradio answers too
    few values with an error that lists every value received (a prompt among them) and logs a traceback; this says
    only how many were expected (extra values are ignored, as Gradio does). And no event of this app takes a file,
    so a file reference (Gradio's FileData, which Gradio would otherwise try to copy from the path it names) is
    refused too. Neither is logged."""
    def validate_inputs(block_fn: Any, inputs: list[Any]) -> None:
        if len(inputs) < len(block_fn.inputs):
            raise user_error(f"This endpoint takes {len(block_fn.inputs)} values; {len(inputs)} were sent.")
        if any(_holds_file(value) for value in inputs):
            raise user_error("This app takes no files.")

    app.validate_inputs = validate_inputs


def _holds_file(value: Any) -> bool:
    """Whether a value, nested lists and objects included, holds a FileData (walked without recursion, so that no
    nesting depth a JSON parser lets through can overflow the stack)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if is_file_obj_with_meta(item):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def api_generate(lm: LanguageModel, limits: Limits) -> Callable[..., Iterator[dict]]:
    def generate(prompt: str, max_new_tokens: int = 32, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 0.95, seed: int = 0, greedy: bool = False, chat: bool = False,
                 stop_at_eos: bool = True, interventions: str = "") -> Iterator[dict]:
        """Generate from a prompt; streams the text so far and, per token, its id, text, probability, entropy
        and the top-5 alternatives. finish_reason is null until the last result, which says why it ended:
        "stop" (an end-of-text token; never with stop_at_eos=False), "length" (max new tokens or the server's
        context) or "time" (the server's time limit). note is null, or a sentence on how the request was read when
        not as sent: a temperature below 1e-4 decodes greedily. interventions: ablations the whole generation runs
        with, as JSON (a list, or its text): [{"kind": "head", "layer": 3, "head": 2}, {"kind": "expert", "layer":
        1, "expert": 5}, {"kind": "attention", "layer": 1}, {"kind": "mlp", "layer": 1}]; "ablated" says, in
        words, what was."""
        request = GenerationRequest.checked(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, chat,
                                            stop_at_eos, limits)
        items = checked_interventions(interventions, lm)
        ids = request.prompt_ids(lm, limits)
        generation = request.start(lm, ids, limits, interventions=items)
        text, tokens = "", []
        for steps in generation.follow(limits.text_hz):
            for step in steps[len(tokens):]:
                text += step.text
                tokens.append(dict(id=step.token_id, text=step.text, prob=step.prob, entropy=step.entropy,
                                   top=[dict(id=i, text=lm.tokenizer.decode([i]), prob=p)
                                        for i, p in zip(step.top_ids[:5], step.top_probs[:5])]))
            if steps or generation.finish_reason is not None:
                yield dict(text=text, prompt_tokens=len(ids), tokens=tokens, finish_reason=generation.finish_reason,
                           note=request.note, ablated=describe(items) if items else None)

    return generate


def checked_interventions(value: Any, lm: LanguageModel) -> list:
    """/generate's interventions (a JSON text or list), or a user error saying what is wrong."""
    if not isinstance(value, (str, list)) and value is not None:
        raise user_error(f"interventions must be a JSON list (or its text), got {_described(value)}.")
    if isinstance(value, str) and len(value) > 20_000:
        raise user_error(f"interventions is {len(value):,} characters of JSON; a list of ablations is far shorter.")
    try:
        return parse_interventions(value, lm.config)
    except ValueError as e:
        raise user_error(str(e)[:300]) from None


def api_patching(lm: LanguageModel) -> Callable[..., dict]:
    def patching(prompt_a: str, prompt_b: str, target: str = "") -> dict:
        """Activation patching (causal tracing, Meng et al. 2022) from prompt A into prompt B, two prompts of the
        same number of tokens: p_patched[layer][position] is p(target) at B's last position when the residual
        stream leaving that block at that position is A's instead of B's. restored is (p_patched - p_b) / (p_a -
        p_b) (1: A's probability comes back, 0: no effect), or p_patched itself where |p_a - p_b| < 0.001
        (normalised says which). target: one token's text (" Paris", with its leading space), or empty for A's
        most likely next token. Runs n_layers x tokens forward passes, in small tasks between other users' tokens."""
        for name, value in (("prompt_a", prompt_a), ("prompt_b", prompt_b), ("target", target)):
            if not isinstance(value, str):
                raise user_error(f"{name} must be text, got {_described(value)}.")
            if len(value) > 4_000:
                raise user_error(f"{name} is {len(value):,} characters; patching takes short prompts.")
        try:
            ids_a, ids_b, target_id = patching_pair(lm.tokenizer, prompt_a, prompt_b, target)
        except ValueError as e:
            raise user_error(str(e)) from None
        trace_a, trace_b = MODEL_THREAD.run(lm.trace, ids_a), MODEL_THREAD.run(lm.trace, ids_b)
        sweep = patching_sweep(trace_a, trace_b, target_id)
        while (result := MODEL_THREAD.run(next, sweep, None)) is not None:
            done = result
        text = lm.tokenizer.decode
        return dict(tokens_a=[text([i]) for i in ids_a], tokens_b=[text([i]) for i in ids_b],
                    target=dict(id=done.target, text=text([done.target])), p_a=done.p_a, p_b=done.p_b,
                    normalised=done.normalised, p_patched=done.patched.tolist(), restored=done.restored().tolist())

    return patching


def api_stats(memory: SessionMemory) -> Callable[[], dict]:
    def stats() -> dict:
        """Server load: generations running now, those ended so far by finish reason ("stop", "length", "time",
        "stopped" for Stop, a closed tab or a cancelled request, "error"), and the tokens they generated; the bytes
        that sessions' traces hold against their cap, traces dropped for it and sessions expired for silence."""
        return {**ACTIVE.stats(), **memory.stats()}

    return stats


def model_record(lm: LanguageModel) -> dict[str, Any]:
    """Who made a session: the model's name and its weights' sha256 (hashed once, off the event loop: handlers run
    on worker threads), and where it ran."""
    return dict(name=lm.name, weights_sha256=weights_sha256(lm.source), device=lm.device.type,
                dtype=str(lm.dtype).removeprefix("torch."))


@dataclass
class Replay:
    """A session file being replayed: its document, the request it records, the ablations its run had, and the
    generation that redoes the original; its branches are redone after it (branches())."""

    document: dict[str, Any]
    request: GenerationRequest
    generation: Generation
    interventions: tuple = ()

    def mismatch(self) -> str | None:
        """Once the generation has ended: None when every token of the file came again, else a sentence."""
        return first_mismatch(self.document["steps"], self.generation.steps)

    def branches(self, lm: LanguageModel, limits: Limits, should_stop: Callable[[], bool] = lambda: False
                 ) -> Iterator[tuple[int, list[Branch] | str]]:
        """After the original replayed: each of the file's branches generated again from its parent's prefix and its
        forced token, with the run's settings, seed and ablations, as the app generated it (start_continuation).
        Yields (branches done, the tree's branches after the original); the last yield's second item is a sentence
        instead when a branch's token is not the replay's or its forced token is not a candidate there."""
        tree: list[Branch] = [Branch(parent=None, at=0, steps=list(self.generation.steps))]
        ids = self.document["prompt_ids"]
        records = self.document.get("branches", [])
        for number, record in enumerate(records, start=1):
            yield number - 1, tree[1:]
            parent, at = tree[record["parent"]], record["at"]
            if at >= len(parent.steps):
                yield number - 1, (f"Branch {number} leaves branch {record['parent']} at token {at + 1}, which has "
                                   f"{len(parent.steps)} tokens: the file was changed.")
                return
            try:
                forced = forced_step(parent.steps[at], record["token_id"], lm.tokenizer.decode([record["token_id"]]))
            except ValueError:
                yield number - 1, (f"Branch {number}'s forced token is not a candidate of token {at + 1}: the file was "
                                   "changed.")
                return
            if forced.cut != record["cut"]:
                yield number - 1, f"Branch {number}'s forced token is marked as {'not ' * forced.cut}kept: changed."
                return
            steps = parent.steps[:at] + [forced]
            wanted = record["ids"][1:]
            if wanted:
                context = ids + [st.token_id for st in steps]
                request = dataclasses.replace(self.request, max_new_tokens=len(wanted))
                generation = request.start(lm, context, limits, should_stop=should_stop,
                                           interventions=self.interventions)
                for _ in generation.follow(limits.text_hz):
                    pass
                got = [st.token_id for st in generation.steps]
                if got != wanted:
                    k = next((i for i, (a, b) in enumerate(zip(wanted, got)) if a != b), min(len(got), len(wanted)))
                    yield number - 1, (f"Branch {number}'s token {at + k + 2} differs from the replay's: the file was "
                                       "changed, or made by another model or machine.")
                    return
                steps += [dataclasses.replace(st, index=at + 1 + i) for i, st in enumerate(generation.steps)]
            tree.append(Branch(parent=record["parent"], at=at, steps=steps))
        yield len(records), tree[1:]


def start_replay(lm: LanguageModel, limits: Limits, text: Any, record: bool = False,
                 should_stop: Callable[[], bool] = lambda: False) -> Replay:
    """Check a session file's text (its structure, model, settings and prompt) and start generating its tokens again
    with its settings; a user error says why a file is refused."""
    try:
        doc = read_session(text)
        check_model(doc, lm.name, weights_sha256(lm.source), lm.config.vocab_size)
    except SessionFileError as e:
        raise user_error(str(e)) from None
    settings = doc["settings"]
    try:
        interventions = tuple(parse_interventions(doc.get("interventions", []), lm.config))
    except ValueError as e:
        raise user_error(f"The session file's interventions are refused: {e}") from None
    try:
        request = GenerationRequest.checked(*(settings[k] for k in ("prompt", "max_new_tokens", "temperature", "top_k",
                                                                    "top_p", "seed", "greedy", "chat", "stop_at_eos")),
                                            limits=limits)
    except gr.Error as e:
        raise user_error(f"The session file's settings are refused: {e.message}") from None
    ids = request.prompt_ids(lm, limits)
    if ids != doc["prompt_ids"]:
        raise user_error("The session file's prompt ids are not what this model's tokenizer makes of its prompt: the "
                         "file was changed, or made with another tokenizer.")
    n_steps = len(doc["steps"])
    longest = max([n_steps] + [b["at"] + len(b["ids"]) for b in doc.get("branches", [])])
    if longest > request.max_new_tokens:
        raise user_error(f"The session file holds {longest} tokens but asked for at most {request.max_new_tokens}: "
                         "the file was changed.")
    # as many tokens as the file holds (a stopped run too): each token depends only on those before it
    generation = dataclasses.replace(request, max_new_tokens=n_steps).start(lm, ids, limits, record=record,
                                                                           should_stop=should_stop,
                                                                           interventions=interventions)
    return Replay(doc, request, generation, interventions)


def api_export_session(lm: LanguageModel, limits: Limits) -> Callable[..., dict]:
    def export_session(prompt: str, max_new_tokens: int = 32, temperature: float = 0.8, top_k: int = 50,
                       top_p: float = 0.95, seed: int = 0, greedy: bool = False, chat: bool = False,
                       stop_at_eos: bool = True, interventions: str = "") -> dict:
        """Generate as /generate does (interventions too) and return the run as a session file ("session": the object
        to save as JSON, which /import_session and the app's import replay) and as a table ("csv": a row per
        generated token: position, id, text, p, entropy, top-5 candidates)."""
        request = GenerationRequest.checked(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, chat,
                                            stop_at_eos, limits)
        items = checked_interventions(interventions, lm)
        ids = request.prompt_ids(lm, limits)
        generation = request.start(lm, ids, limits, interventions=items)
        for _ in generation.follow(limits.text_hz):
            pass
        steps = generation.steps
        document = session_document(model_record(lm), ids, request.settings(), steps, {},
                                    interventions=intervention_records(items))
        return dict(session=document, csv=tokens_csv(steps, lambda i: lm.tokenizer.decode([i])))

    return export_session


def api_import_session(lm: LanguageModel, limits: Limits) -> Callable[[str], dict]:
    def import_session(session: str) -> dict:
        """Replay a session file (its JSON text, at most 400,000 characters): generate its tokens again with its
        settings and check each one. Returns the text and the number of tokens checked; a file of another model or
        weights, a changed file or one that does not replay exactly is refused with a sentence saying why."""
        replay = start_replay(lm, limits, session)
        for _ in replay.generation.follow(limits.text_hz):
            pass
        if (problem := replay.mismatch()) is not None:
            raise user_error(problem)
        *_, (_, branches) = replay.branches(lm, limits)
        if isinstance(branches, str):
            raise user_error(branches)
        steps = replay.generation.steps
        return dict(text="".join(s.text for s in steps), tokens=len(steps), checked=True,
                    branches=["".join(st.text for st in b.steps) for b in branches],
                    interventions=describe(replay.interventions) if replay.interventions else "")

    return import_session
