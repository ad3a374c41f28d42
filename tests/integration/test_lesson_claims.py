"""Every lesson's claims (assets/lessons/*.json, "claims") checked against the embedded model on the lesson's own run,
regenerated as the app does: a lesson whose text became false (other weights, a changed view) fails here."""
from __future__ import annotations

import math

import pytest
import torch

from explorer.analysis import nearest_tokens, sequence_logprobs, stage_values
from explorer.lessons import Lesson, load_lessons
from explorer.ui.architecture_tab import KIMI_CONFIG, read_config
from explorer.views.logit_lens import logit_lens
from explorer.views.rope import default_factor, rope_numbers, scaling_label
from explorer.views.text import token_text
from model import LanguageModel, Trace
from model.params import parameter_counts

LESSONS = load_lessons()
CLAIMS = [(lesson, claim) for lesson in LESSONS for claim in lesson.claims]


def run_ids(lm: LanguageModel, lesson: Lesson) -> tuple[list[int], list]:
    """The lesson's run as the app generates it: (prompt + generated ids, the steps)."""
    run = lesson.run
    prompt = lm.prompt_ids(run["prompt"], chat=run["chat"])
    steps = list(lm.generate(prompt, max_new_tokens=run["max_new_tokens"], temperature=run["temperature"],
                             top_k=run["top_k"], top_p=run["top_p"], seed=run["seed"], greedy=run["greedy"],
                             stop_at_eos=run["stop_at_eos"]))
    return prompt + [s.token_id for s in steps], steps


@pytest.fixture(scope="module")
def traced(embedded_lm):
    """lesson -> (the trace of its run, its steps), each run generated once."""
    runs = {}

    def get(lesson: Lesson) -> tuple[Trace, list]:
        if lesson.name not in runs:
            ids, steps = run_ids(embedded_lm, lesson)
            runs[lesson.name] = embedded_lm.trace(ids), steps
        return runs[lesson.name]

    return get


def head_scores(trace: Trace, score: str) -> torch.Tensor:
    """[layers, heads]: the mean attention from each query to its target key. induction: the token after the previous
    occurrence of the query's token (queries with one); previous_token: the token before (from position 2, as
    position 1's previous token is the first); first_token: position 0 (the attention sink)."""
    ids = trace.ids.tolist()
    queries, keys = [], []
    for i in range(1, len(ids)):
        if score == "induction":
            before = [j for j in range(i) if ids[j] == ids[i]]
            if before:
                queries.append(i), keys.append(before[-1] + 1)
        elif score == "previous_token" and i >= 2:
            queries.append(i), keys.append(i - 1)
        elif score == "first_token":
            queries.append(i), keys.append(0)
    q, k = torch.tensor(queries), torch.tensor(keys)
    return torch.stack([trace.attention(layer)[:, q, k].mean(-1) for layer in range(trace.n_layers)])


def check_head_score(lm, trace, steps, claim) -> None:
    scores = head_scores(trace, claim["score"])
    value = float(scores[claim["layer"], claim["head"]])
    assert value >= claim["min"], f"{claim['score']} score {value:.3f} < {claim['min']}"
    if claim["best"]:
        best = divmod(int(scores.argmax()), scores.shape[1])
        assert best == (claim["layer"], claim["head"]), f"the best {claim['score']} head is now {best}"


def check_token(lm, trace, steps, claim) -> None:
    assert token_text(lm.tokenizer, int(trace.ids[claim["position"]])) == claim["text"]


def check_lens_top1_from(lm, trace, steps, claim) -> None:
    lens = logit_lens(trace, [claim["position"]])
    tops = [token_text(lm.tokenizer, int(i)) for i in lens.top_ids[:, 0]]  # row 0: the embedding, row L: block L
    first = tops.index(claim["token"]) if claim["token"] in tops else None
    assert first == claim["layer"], f"{claim['token']!r} first top-1 at row {first}: {tops}"


def check_nearest(lm, trace, steps, claim) -> None:
    E = lm.decoder.embed.weight
    token = int(trace.ids[claim["position"]])
    ids, _ = nearest_tokens(E, E[token], 10, exclude=[token])
    near = [token_text(lm.tokenizer, i) for i in ids]
    assert set(claim["tokens"]) <= set(near), near


def check_surprisal(lm, trace, steps, claim) -> None:
    position = claim["position"]
    nats = -sequence_logprobs(trace, start=position, stop=position + 1)[0]
    assert abs(nats - claim["nats"]) <= 0.05, nats


def check_sampled(lm, trace, steps, claim) -> None:
    step = next(s for s in steps if s.position == claim["position"])
    assert (step.top_ids.index(step.token_id) + 1, step.n_kept) == (claim["rank"], claim["kept"])


def check_norm_growth(lm, trace, steps, claim) -> None:
    layers = stage_values(trace, claim["position"])["layers"]
    ratio = layers[-1]["resid_norm_out"] / layers[0]["resid_norm_in"]
    assert ratio >= claim["min_ratio"], ratio
    norm_out = max(max(v["attn_norm_out_norm"], v["mlp_norm_out_norm"]) for v in layers)
    assert norm_out <= claim["max_norm_out"], norm_out


def check_rope_angle(lm, trace, steps, claim) -> None:
    fast, slow = stage_values(trace, claim["position"])["rope"]["angles_first_last"]
    assert math.isclose(fast, claim["fastest"], rel_tol=0.01) and math.isclose(slow, claim["slowest"], rel_tol=0.01)


def check_parameters(lm, trace, steps, claim) -> None:
    cfg = read_config(str(KIMI_CONFIG)) if claim["architecture"] == "kimi-k2" else lm.config
    counts = parameter_counts(cfg)
    for key in ("total", "active"):
        value = getattr(counts, key)
        assert math.isclose(value, claim[key], rel_tol=0.01), f"{key} {value:,} vs {claim[key]:,}"


def check_component(lm, trace, steps, claim) -> None:
    cfg = read_config(str(KIMI_CONFIG)) if claim["architecture"] == "kimi-k2" else lm.config
    count = parameter_counts(cfg).by_component()[claim["component"]]
    for key in ("total", "active"):  # as the chart writes them, to 3 significant digits
        assert float(f"{getattr(count, key):.3g}") == claim[key], (key, getattr(count, key))


def check_kv_cache(lm, trace, steps, claim) -> None:
    cfg = read_config(str(KIMI_CONFIG)) if claim["architecture"] == "kimi-k2" else lm.config
    numbers = cfg.mla.kv_lora_rank + cfg.mla.qk_rope_dim if cfg.mla else 2 * cfg.n_kv_heads * cfg.d_head
    assert numbers == claim["numbers"]


def check_rope(lm, trace, steps, claim) -> None:
    cfg = read_config(str(KIMI_CONFIG)) if claim["architecture"] == "kimi-k2" else lm.config
    numbers = rope_numbers(cfg, default_factor(cfg))
    assert (numbers.ropes["own"].theta, numbers.d_rot // 2, numbers.trained, scaling_label(numbers.ropes["own"])) == (
        claim["theta"], claim["pairs"], claim["trained"], claim["own"])


CHECKS = {"head_score": check_head_score, "token": check_token, "surprisal": check_surprisal,
          "lens_top1_from": check_lens_top1_from, "nearest": check_nearest, "sampled": check_sampled,
          "norm_growth": check_norm_growth, "rope_angle": check_rope_angle, "parameters": check_parameters,
          "component": check_component,
          "kv_cache": check_kv_cache, "rope": check_rope}


def test_every_claim_kind_has_a_check():
    from explorer.lessons import CLAIMS as KINDS
    assert set(KINDS) == set(CHECKS)


@pytest.mark.parametrize("lesson, claim", CLAIMS, ids=[f"{lesson.name}-{claim['kind']}-{i}"
                                                       for i, (lesson, claim) in enumerate(CLAIMS)])
def test_claim_holds(embedded_lm, traced, lesson, claim):
    trace, steps = traced(lesson)
    CHECKS[claim["kind"]](embedded_lm, trace, steps, claim)


def test_every_position_lies_inside_the_generated_run(traced):
    for lesson in LESSONS:
        trace, _ = traced(lesson)
        assert max(lesson.positions(), default=0) < len(trace), lesson.name


def test_the_induction_head_is_the_best_on_random_tokens_too(embedded_lm):
    """Not only on the lesson's words: on a repeated sequence of random tokens, which no text could have taught."""
    claimed = {(c["layer"], c["head"]) for _, c in CLAIMS if c["kind"] == "head_score" and c["score"] == "induction"}
    assert claimed
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1000, 20000, (40,), generator=generator).tolist()
    scores = head_scores(embedded_lm.trace(tokens + tokens), "induction")
    assert divmod(int(scores.argmax()), scores.shape[1]) in claimed
