"""Branching on the real embedded model: a branch's continuation, as the app generates it (explorer/ui/api.py's
start_continuation into the session), is exactly lm.generate from the prefix and the forced token with the same
settings, seed and ablations; switching back gives the original; Stop ends a branch's generation as any other."""
from __future__ import annotations

import pytest

from explorer.session import Session
from explorer.ui.api import GenerationRequest, start_continuation
from explorer.ui.common import Limits
from model.interventions import HeadAblation

PROMPT = "The best way to learn a new language is"
LIMITS = Limits()


def generate_into(s: Session, generation) -> None:
    """What the app's stream does with a generation's steps (blocks.py): each added to the current branch."""
    base = len(s.steps)
    for steps in generation.follow(1000):
        for step in steps[len(s.steps) - base:]:
            s.add(step)
    s.adopt_trace(generation.context_trace)
    s.generating = False


@pytest.mark.parametrize("greedy, ablated", [(True, False), (False, False), (True, True)])
def test_a_branch_continues_as_lm_generate_from_the_prefix_and_the_forced_token(embedded_lm, greedy, ablated):
    lm = embedded_lm
    request = GenerationRequest.checked(PROMPT, 14, 0.8, 50, 0.95, 3, greedy, False, True, LIMITS)
    ids = request.prompt_ids(lm, LIMITS)
    ablations = (HeadAblation(3, 1), HeadAblation(5, 4)) if ablated else ()
    s = Session()
    s.start(ids, request.settings(), ablations)
    generate_into(s, request.start(lm, ids, LIMITS, record=True, interventions=ablations))
    original = [st.token_id for st in s.steps]
    assert len(original) == 14

    at = 4
    step = s.steps[at]
    cut = next(t for t, kept in zip(step.top_ids, step.top_kept) if not kept)  # a token the sampler had cut
    assert s.fork(step.position, cut, lm.tokenizer.decode([cut]))
    prefix = ids + original[:at] + [cut]
    assert s.ids == prefix
    generation = start_continuation(lm, LIMITS, s.settings, s.ids, len(s.steps), record=True,
                                    should_stop=lambda: s.stopped(s.run), interventions=s.context_interventions)
    generate_into(s, generation)

    expected = list(lm.generate(prefix, max_new_tokens=14 - at - 1, temperature=0.8, top_k=50, top_p=0.95, seed=3,
                                greedy=greedy, interventions=ablations))
    branch = s.steps[at + 1:]
    assert [st.token_id for st in branch] == [e.token_id for e in expected]
    assert [st.prob for st in branch] == [e.prob for e in expected]
    assert [st.position for st in branch] == [e.position for e in expected]
    assert [st.index for st in s.steps] == list(range(14))
    assert s._full_trace is not None and s._full_trace.ids.tolist() == s.ids  # the generation's own trace adopted

    s.switch_branch(0)
    assert [st.token_id for st in s.steps] == original and s.ids == ids + original
    assert s.trace(lm).ids.tolist() == ids + original  # recomputed for the original, not the branch's


def test_stop_ends_a_branchs_generation(embedded_lm):
    lm = embedded_lm
    request = GenerationRequest.checked(PROMPT, 256, 1.0, 50, 0.95, 0, False, False, False, LIMITS)
    ids = request.prompt_ids(lm, LIMITS)
    s = Session()
    s.start(ids, request.settings())
    s.add(next(lm.generate(ids, max_new_tokens=1, temperature=1.0, top_k=50, top_p=0.95, seed=0)))
    s.generating = False
    step = s.steps[0]
    other = next(t for t in step.top_ids if t != step.token_id)
    assert s.fork(step.position, other, lm.tokenizer.decode([other]))
    run = s.run
    generation = start_continuation(lm, LIMITS, s.settings, s.ids, len(s.steps), should_stop=lambda: s.stopped(run))
    for steps in generation.follow(1000):
        if len(steps) >= 3:
            s.stop_requested = True
    assert generation.finish_reason == "stopped" and 3 <= len(generation.steps) < 250
