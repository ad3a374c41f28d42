"""Generation requests, checked against the server's limits, for the UI and the named API endpoint alike; the API
endpoints /generate and /stats. The generations themselves run in explorer/generations.py."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from explorer.generations import ACTIVE, Generation
from explorer.ui.common import Limits
from model import LanguageModel

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    greedy: bool
    chat: bool
    stop_at_eos: bool = True  # False: only the token limit, the time limit or Stop end it

    @classmethod
    def checked(cls, prompt: Any, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
                greedy: Any, chat: Any, stop_at_eos: Any, limits: Limits) -> "GenerationRequest":
        """Validate everything a client could send; raise gr.Error with a message a user can act on."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error("The prompt is empty: type some text first.")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise gr.Error("The prompt is not valid Unicode (it holds lone surrogates); send UTF-8 text.") from None
        number = lambda v, name: _number(v, name)
        temperature, top_p = number(temperature, "temperature"), number(top_p, "top-p")
        if temperature < 0 or temperature > 10:
            raise gr.Error(f"Temperature must be between 0 and 10, got {temperature}.")
        if not 0 < top_p <= 1:
            raise gr.Error(f"Top-p must be in (0, 1], got {top_p}.")
        top_k = _integer(top_k, "top-k", 0, limits.max_top_k)
        max_new_tokens = _integer(max_new_tokens, "max new tokens", 1, limits.max_new_tokens)
        seed = _integer(0 if seed is None else seed, "seed", 0, MAX_SEED)
        return cls(prompt, max_new_tokens, temperature, top_k, top_p, seed, bool(greedy), bool(chat), bool(stop_at_eos))

    def prompt_ids(self, lm: LanguageModel, limits: Limits) -> list[int]:
        if self.chat and lm.tokenizer.chat_template is None:
            raise gr.Error("This model has no chat template; untick 'Chat template'.")
        if len(self.prompt) > limits.max_prompt_tokens * 64:  # refuse before tokenizing megabytes
            raise gr.Error(f"The prompt is {len(self.prompt):,} characters; this server accepts at most "
                           f"{limits.max_prompt_tokens} tokens.")
        ids = lm.prompt_ids(self.prompt, chat=self.chat)
        if len(ids) > limits.max_prompt_tokens:
            raise gr.Error(f"The prompt is {len(ids)} tokens; this server accepts at most {limits.max_prompt_tokens}.")
        return ids

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def start(self, lm: LanguageModel, ids: list[int], limits: Limits, record: bool = False,
              should_stop: Callable[[], bool] = lambda: False) -> Generation:
        """The generation of this request from the prompt ids, running on the model thread under the server's
        limits."""
        return Generation(lm, ids, self.generate_kwargs(len(ids), limits), limits.time_limit_seconds, record=record,
                          should_stop=should_stop)

    def generate_kwargs(self, n_prompt: int, limits: Limits) -> dict[str, Any]:
        """Arguments for LanguageModel.generate; new tokens also capped by the server's total context."""
        n_new = min(self.max_new_tokens, limits.max_context - n_prompt)
        return dict(max_new_tokens=max(n_new, 0), temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, seed=self.seed, greedy=self.greedy, stop_at_eos=self.stop_at_eos)


def _number(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(x):
        raise gr.Error(f"{name} must be a finite number, got {value!r}.")
    return x


def _integer(value: Any, name: str, low: int, high: int) -> int:
    x = _number(value, name)
    if x != int(x) or not low <= x <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(x)


def api_generate(lm: LanguageModel, limits: Limits) -> Callable[..., Iterator[dict]]:
    def generate(prompt: str, max_new_tokens: int = 32, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 0.95, seed: int = 0, greedy: bool = False, chat: bool = False,
                 stop_at_eos: bool = True) -> Iterator[dict]:
        """Generate from a prompt; streams the text so far and, per token, its id, text, probability, entropy
        and the top-5 alternatives. finish_reason is null until the last result, which says why it ended:
        "stop" (an end-of-text token; never with stop_at_eos=False), "length" (max new tokens or the server's
        context) or "time" (the server's time limit)."""
        request = GenerationRequest.checked(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, chat,
                                            stop_at_eos, limits)
        ids = request.prompt_ids(lm, limits)
        generation = request.start(lm, ids, limits)
        text, tokens = "", []
        for steps in generation.follow(limits.text_hz):
            for step in steps[len(tokens):]:
                text += step.text
                tokens.append(dict(id=step.token_id, text=step.text, prob=step.prob, entropy=step.entropy,
                                   top=[dict(id=i, text=lm.tokenizer.decode([i]), prob=p)
                                        for i, p in zip(step.top_ids[:5], step.top_probs[:5])]))
            if steps or generation.finish_reason is not None:
                yield dict(text=text, prompt_tokens=len(ids), tokens=tokens, finish_reason=generation.finish_reason)

    return generate


def api_stats() -> Callable[[], dict]:
    def stats() -> dict:
        """Server load: generations running now, those ended so far by finish reason ("stop", "length", "time",
        "stopped" for Stop, a closed tab or a cancelled request, "error"), and the tokens they generated."""
        return ACTIVE.stats()

    return stats
