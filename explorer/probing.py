"""Probing what the model computes, from traces: ablation (the next-token distribution without a head, an expert, or a
layer's attention or MLP output), two prompts compared, and activation patching between them (causal tracing, Meng et
al. 2022, "Locating and Editing Factual Associations in GPT"). The interventions are the core's (model/interventions);
a run is recomputed only from the first layer they touch, since every block before it computes what the trace holds."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Iterator, Sequence

import torch

from model import AttentionAblation, ExpertAblation, HeadAblation, Intervention, Interventions, MLPAblation
from model.cache import KVCache
from model.config import ModelConfig
from model.trace import Trace

# rows x tokens x layers a patching task computes at most: about what one chunk of a context's trace computes (32
# tokens through 30 layers, session.TRACE_CHUNK), so that other sessions' tokens go between the tasks of a sweep
TASK_TOKEN_LAYERS = 1024
ABLATE_CHUNK = 64  # positions an ablation's task runs through the blocks at a time
# a sweep is n_layers x T runs of T tokens: at 32 tokens, 960 runs (minutes on a CPU; bench/probing.py measures)
PATCH_MAX_TOKENS = 32
MAX_INTERVENTIONS = 64  # in one request: more is no experiment anyone runs by hand
KINDS = {"head": ("layer", "head"), "expert": ("layer", "expert"), "attention": ("layer",), "mlp": ("layer",)}


def _tensor(trace: Trace, x: torch.Tensor) -> torch.Tensor:
    w = trace.decoder.embed.weight
    return x.to(device=w.device, dtype=w.dtype)


@torch.inference_mode()
def run_from(trace: Trace, layer: int, h: torch.Tensor, interventions: Interventions) -> torch.Tensor:
    """Logits [B, vocab] float32 at the last position of the residual streams h [B, T, d_model] entering block
    `layer` (positions 0..T-1 of trace's context), run through blocks layer..L-1 with the interventions."""
    decoder = trace.decoder
    positions = torch.arange(h.shape[1], device=decoder.embed.weight.device)
    rope = decoder.rope(positions, decoder.embed.weight.dtype)
    h = _tensor(trace, h)
    for block in decoder.blocks[layer:]:
        h = block(h, positions, rope, None, None, interventions)
    return decoder.unembed(h[:, -1]).float().cpu()


def next_token_logprobs(trace: Trace, position: int) -> torch.Tensor:
    """log p [vocab] of the token after `position`, as the trace's run computed it."""
    return torch.log_softmax(trace.logits_at([position])[0].float(), dim=-1)


@dataclass(frozen=True)
class Ablation:
    """The next-token distribution at one position before and after some interventions."""

    position: int
    interventions: tuple[Intervention, ...]
    before: torch.Tensor  # [vocab] log p as the trace's run computed it
    after: torch.Tensor  # [vocab] log p with the interventions

    @property
    def kl(self) -> float:
        """KL(before || after) in nats: how much the interventions changed the distribution."""
        p = self.before.exp()
        return max(0.0, float((p * (self.before - self.after)).sum()))

    @property
    def top_id(self) -> int:
        """The original most likely token."""
        return int(self.before.argmax())

    @property
    def top_prob_after(self) -> float:
        return float(self.after[self.top_id].exp())

    @property
    def top_rank_after(self) -> int:
        """Its rank after the interventions, 1 = still the most likely."""
        return int((self.after > self.after[self.top_id]).sum()) + 1


def ablate(trace: Trace, position: int, items: Sequence[Intervention]) -> Ablation:
    """The distribution after `position` with the interventions added to those that made the trace; blocks before
    the first layer they touch are read from the trace."""
    *_, result = ablate_in_parts(trace, position, items, chunk=len(trace))
    return result


def ablate_in_parts(trace: Trace, position: int, items: Sequence[Intervention], chunk: int = ABLATE_CHUNK
                    ) -> Iterator[Ablation | None]:
    """ablate(), `chunk` positions at a time through the blocks from the first one the interventions touch, over a
    KV cache (as a prompt is read): each next() runs one chunk and yields None, the last yields the Ablation. A
    server runs each next() as a task of its own, so a long context's ablation never holds its model thread long."""
    if not 0 <= position < len(trace):
        raise ValueError(f"position must be 0..{len(trace) - 1}, got {position}")
    before = next_token_logprobs(trace, position)
    items = tuple(items)
    if not items:
        yield Ablation(position, items, before, before)
        return
    decoder = trace.decoder
    interventions = Interventions.of([*trace.interventions, *items], decoder.config)
    start = min(item.layer for item in items)
    cache = KVCache(decoder.config.n_layers, initial_capacity=position + 1)
    with torch.inference_mode():
        for a in range(0, position + 1, chunk):
            b = min(position + 1, a + chunk)
            h = _tensor(trace, trace.residual[start, a:b][None])  # [1, b - a, d] entering block `start`
            positions = torch.arange(a, b, device=h.device)
            rope = decoder.rope(positions, h.dtype)
            for block in decoder.blocks[start:]:
                h = block(h, positions, rope, cache, None, interventions)
            cache.advance(b - a)
            if b <= position:
                yield None
        after = torch.log_softmax(decoder.unembed(h[:, -1]).float().cpu()[0], dim=-1)
    yield Ablation(position, items, before, after)


def describe(items: Sequence[Intervention]) -> str:
    return "; ".join(map(str, items)) or "nothing ablated"


def intervention_records(items: Sequence[Intervention]) -> list[dict[str, Any]]:
    """The ablations as /generate and session files take them (parse_interventions reads them back)."""
    records = []
    for item in items:
        if isinstance(item, HeadAblation):
            records.append(dict(kind="head", layer=item.layer, head=item.head))
        elif isinstance(item, ExpertAblation):
            records.append(dict(kind="expert", layer=item.layer, expert=item.expert))
        elif isinstance(item, (AttentionAblation, MLPAblation)):
            records.append(dict(kind="attention" if isinstance(item, AttentionAblation) else "mlp", layer=item.layer))
        else:
            raise ValueError(f"{item} cannot be written to a session file")
    return records


def parse_interventions(value: Any, config: ModelConfig) -> list[Intervention]:
    """Ablations as a client sends them: a JSON text or a list of objects such as {"kind": "head", "layer": 3,
    "head": 2}, {"kind": "expert", "layer": 1, "expert": 5}, {"kind": "attention", "layer": 1} or {"kind": "mlp",
    "layer": 1}. Strict: every key and value checked; ValueError with a sentence otherwise."""
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"interventions must be a JSON list; the text does not parse ({e.msg} at character "
                             f"{e.pos})") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"interventions must be a list of objects, got {type(value).__name__}")
    if len(value) > MAX_INTERVENTIONS:
        raise ValueError(f"at most {MAX_INTERVENTIONS} interventions at once, got {len(value)}")
    items = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ValueError(f"intervention {i} must be an object like {{\"kind\": \"head\", \"layer\": 0, "
                             f"\"head\": 0}}, got {type(entry).__name__}")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ValueError(f"intervention {i}: kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r:.40}")
        wanted = KINDS[kind]
        keys = set(entry) - {"kind"}
        if keys != set(wanted):
            raise ValueError(f"intervention {i} ({kind}) takes exactly the keys {', '.join(wanted)}; got "
                             f"{', '.join(sorted(map(str, keys))) or 'none'}")
        for key in wanted:
            if isinstance(entry[key], bool) or not isinstance(entry[key], Integral):
                raise ValueError(f"intervention {i}: {key} must be a whole number, got {entry[key]!r:.40}")
        if kind == "head":
            items.append(HeadAblation(entry["layer"], entry["head"]))
        elif kind == "expert":
            items.append(ExpertAblation(entry["layer"], entry["expert"]))
        else:
            items.append((AttentionAblation if kind == "attention" else MLPAblation)(entry["layer"]))
    try:
        Interventions.of(items, config)
    except ValueError as e:
        raise ValueError(f"interventions: {e}") from None
    return items


def lens_probs(trace: Trace, position: int, token_ids: Sequence[int]) -> torch.Tensor:
    """[L+1, k]: p of each token after `position` as the logit lens reads the residual stream after the embedding
    (row 0) and every block."""
    with torch.inference_mode():
        logits = trace.decoder.unembed(_tensor(trace, trace.residual[:, position])).float().cpu()  # [L+1, vocab]
    return torch.softmax(logits, dim=-1)[:, list(token_ids)]


@dataclass
class PatchingMap:
    """Activation patching of run A into run B (equal lengths): patched[l, t] = p(target) at B's last position when
    the residual stream leaving block l at position t is A's instead of B's; NaN where not yet computed."""

    ids_a: list[int]
    ids_b: list[int]
    target: int
    p_a: float  # p(target) of the clean runs
    p_b: float
    patched: torch.Tensor  # [L, T] float32

    @property
    def done(self) -> int:
        return int((~torch.isnan(self.patched)).sum())

    @property
    def total(self) -> int:
        return self.patched.numel()

    @property
    def normalised(self) -> bool:
        """Whether restored() divides by p_a - p_b: not when the two runs give the target about the same p."""
        return abs(self.p_a - self.p_b) >= 1e-3

    def restored(self) -> torch.Tensor:
        """[L, T]: (p_patched - p_b) / (p_a - p_b), 1 = patching there restores A's p(target) fully, 0 = no effect;
        p_patched itself where the runs hardly differ (see normalised)."""
        if not self.normalised:
            return self.patched.clone()
        return (self.patched - self.p_b) / (self.p_a - self.p_b)


def check_pair(ids_a: Sequence[int], ids_b: Sequence[int]) -> None:
    if len(ids_a) != len(ids_b):
        raise ValueError(f"Patching needs two prompts of the same length in tokens, position by position: A has "
                         f"{len(ids_a)} tokens and B {len(ids_b)}. Change a word until both split into as many tokens "
                         "(Compare shows how each splits).")


@torch.inference_mode()
def patched_logprobs(trace_a: Trace, trace_b: Trace, layer: int, positions: Sequence[int]) -> torch.Tensor:
    """log p [len(positions), vocab] at B's last position, one run per position: the residual stream leaving block
    `layer` at that position is A's. The blocks up to `layer` computed B's run unchanged, so each run starts from
    B's residual there (the core's Patch does the same from the first block; tests/unit/test_probing.py compares)."""
    check_pair(trace_a.ids, trace_b.ids)
    rows = torch.as_tensor(list(positions))
    h = trace_b.residual[layer + 1][None].repeat(len(rows), 1, 1)  # [P, T, d]
    h[torch.arange(len(rows)), rows] = trace_a.residual[layer + 1, rows]
    interventions = Interventions.of(trace_b.interventions, trace_b.decoder.config)
    return torch.log_softmax(run_from(trace_b, layer + 1, h, interventions), dim=-1)


def patching_sweep(trace_a: Trace, trace_b: Trace, target: int | None = None,
                   task_size: int = TASK_TOKEN_LAYERS) -> Iterator[PatchingMap]:
    """Every layer and position of activation patching from A into B, a task per next(): each yields the map so far
    (a few positions of one layer more; the last yield is complete). target: a token id (default: A's most likely
    next token). A server runs each next() as a task of its own on its model thread."""
    check_pair(trace_a.ids, trace_b.ids)
    n, n_layers = len(trace_a), trace_a.n_layers
    last_a, last_b = next_token_logprobs(trace_a, n - 1), next_token_logprobs(trace_b, n - 1)
    target = int(last_a.argmax()) if target is None else int(target)
    result = PatchingMap(trace_a.ids.tolist(), trace_b.ids.tolist(), target, float(last_a[target].exp()),
                         float(last_b[target].exp()), torch.full((n_layers, n), math.nan))
    for layer in range(n_layers):
        later = max(1, n_layers - layer - 1)  # blocks each run goes through (the unembedding alone after the last)
        rows = max(1, task_size // (n * later))
        for start in range(0, n, rows):
            positions = list(range(start, min(start + rows, n)))
            result.patched[layer, positions] = patched_logprobs(trace_a, trace_b, layer, positions)[:, target].exp()
            yield result


def single_token(tokenizer: Any, text: str) -> int:
    """The token id of a target typed as text: it must be exactly one token (a leading space is part of a word's
    token in byte-level BPE, so " Paris" and "Paris" differ)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"The target must be one token; {text!r:.40} is {len(ids)} tokens. Words inside a sentence "
                         "usually begin with a space (\" Paris\").")
    return ids[0]


def patching_pair(tokenizer: Any, prompt_a: str, prompt_b: str, target: str = "",
                  max_tokens: int = PATCH_MAX_TOKENS) -> tuple[list[int], list[int], int | None]:
    """The token ids of two prompts to patch between, and the target's id (None: A's most likely next token);
    ValueError with a sentence for prompts that cannot be patched position by position."""
    ids_a, ids_b = tokenizer.encode(prompt_a), tokenizer.encode(prompt_b)
    for name, ids in (("A", ids_a), ("B", ids_b)):
        if not ids:
            raise ValueError(f"Prompt {name} is empty: type some text first.")
        if len(ids) > max_tokens:
            raise ValueError(f"Prompt {name} is {len(ids)} tokens; patching runs the model once per layer and "
                             f"position (n_layers x T runs of T tokens), so this server patches prompts of at most "
                             f"{max_tokens}.")
    check_pair(ids_a, ids_b)
    return ids_a, ids_b, single_token(tokenizer, target) if target else None
