"""The branch tree (explorer/branches.py) and the session's branches: a forced token keeps the text before it, shows
its step's distribution, and switching branches restores each one exactly, caches included."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from explorer.branches import BranchTree, ForcedStep
from explorer.session import Session
from model import Step

N_PROMPT = 5
CANDIDATES = [7, 8, 9, 10]  # every step's top candidates, most likely first; the sampler keeps the first two


def step(index: int, token_id: int) -> Step:
    probs = [0.5, 0.3, 0.15, 0.05]
    return Step(index=index, position=N_PROMPT + index, token_id=token_id, text=f"<{token_id}>",
                prob=probs[CANDIDATES.index(token_id)], sampled_prob=0.6, entropy=1.2 + index,
                top_ids=list(CANDIDATES), top_probs=probs, top_sampled_probs=[0.625, 0.375, 0.0, 0.0],
                top_kept=[True, True, False, False], n_kept=2, kept_mass=0.8, finish_reason=None)


def continuation(start: int, ids: list[int]) -> list[Step]:
    """What a generation from a forced token yields: its steps numbered from 0, at the context's positions."""
    return [dataclasses.replace(step(start + i, t), index=i) for i, t in enumerate(ids)]


ORIGINAL = [7, 7, 8, 7, 7, 8]


@pytest.fixture()
def session() -> Session:
    s = Session()
    s.start(list(range(N_PROMPT)), {"seed": 0})
    for i, t in enumerate(ORIGINAL):
        s.add(step(i, t))
    s.generating = False
    return s


def test_forcing_a_cut_token_keeps_the_prefix_and_shows_the_parents_distribution(session):
    s = session
    original = list(s.steps)
    assert s.fork(N_PROMPT + 2, 10, "<10>") is True  # 10: a candidate the sampler cut
    assert s.generating and s.selected == N_PROMPT + 2
    assert s.steps[:2] == original[:2] and len(s.steps) == 3
    forced = s.steps[2]
    assert isinstance(forced, ForcedStep) and forced.token_id == 10 and forced.cut and forced.drawn_id == 8
    assert forced.position == original[2].position and forced.index == 2
    for name in ("top_ids", "top_probs", "top_sampled_probs", "top_kept", "entropy", "n_kept", "kept_mass"):
        assert getattr(forced, name) == getattr(original[2], name), name
    assert (forced.prob, forced.sampled_prob) == (0.05, 0.0)  # the forced token's own numbers in that distribution
    assert s.ids == list(range(N_PROMPT)) + [7, 7, 10]
    for st in continuation(3, [9, 7]):  # the continuation counts on from the forced token
        s.add(st)
    assert [st.index for st in s.steps] == list(range(5))
    assert [st.position for st in s.steps] == list(range(N_PROMPT, N_PROMPT + 5))
    assert s.tree.branches[0].steps == original  # the original is never lost


def test_switching_back_restores_the_original_exactly_and_clears_the_caches(session):
    s = session
    original, original_ids = list(s.steps), list(s.ids)
    s.cached(("view", len(s.ids)), lambda: "drawn for the original")
    s.fork(N_PROMPT + 1, 8, "<8>")
    for st in continuation(2, [8, 9, 7, 7]):  # as long as the original: a cache keyed by length must not carry over
        s.add(st)
    s.generating = False
    assert len(s.ids) == len(original_ids) and s.ids != original_ids
    assert s.cached(("view", len(s.ids)), lambda: "drawn for the branch") == "drawn for the branch"
    s.extras["attention"] = "the branch's"
    branch_steps = list(s.steps)

    s.switch_branch(0)
    assert s.steps == original and s.ids == original_ids
    assert s.cached(("view", len(s.ids)), lambda: "drawn again") == "drawn again"
    assert s.extras == {}
    s.switch_branch(1)
    assert s.steps == branch_steps


def test_switching_ends_a_running_generation_of_the_branch_left(session):
    s = session
    s.fork(N_PROMPT + 1, 8, "<8>")
    run = s.run
    assert not s.stopped(run)
    s.switch_branch(0)
    assert s.stopped(run) and not s.generating


def test_a_token_of_a_generation_that_a_branch_superseded_is_not_added(session):
    s = session
    s.generating = True  # the original still writing when a candidate is clicked
    original_run = s.run
    s.fork(N_PROMPT + 1, 8, "<8>")
    assert s.add(step(6, 7), original_run) is False and len(s.steps) == 2
    assert s.add(continuation(2, [9])[0], s.run) is True and len(s.steps) == 3
    assert [st.token_id for st in s.tree.branches[0].steps] == ORIGINAL


def test_a_branch_of_a_branch_and_back_along_the_tree(session):
    s = session
    s.fork(N_PROMPT + 1, 9, "<9>")
    for st in continuation(2, [7, 7, 7, 8]):
        s.add(st)
    first = list(s.steps)
    s.fork(N_PROMPT + 4, 10, "<10>")  # inside branch 1's own tokens: a branch of branch 1
    for st in continuation(5, [9]):
        s.add(st)
    tree = s.tree
    assert [(b.parent, b.at) for b in tree.branches] == [(None, 0), (0, 1), (1, 4)]
    assert s.steps[:4] == first[:4] and [st.token_id for st in s.steps] == [7, 9, 7, 7, 10, 9]
    assert [type(st) is ForcedStep for st in s.steps] == [False, True, False, False, True, False]
    # forcing again where branch 1 left the original makes a sibling of branch 1, not a child
    s.fork(N_PROMPT + 1, 10, "<10>")
    assert (tree.branches[3].parent, tree.branches[3].at) == (0, 1)
    # the token that a branch already has there switches to that branch instead of making another
    s.fork(N_PROMPT + 1, 9, "<9>")
    assert tree.current == 1 and s.steps == first and len(tree) == 4
    s.fork(N_PROMPT + 4, 10, "<10>")
    assert tree.current == 2
    s.fork(N_PROMPT + 1, 7, "<7>")  # the original's own token: back to the original
    assert tree.current == 0 and [st.token_id for st in s.steps] == ORIGINAL
    assert s.fork(N_PROMPT + 3, 7, "<7>") is False and tree.current == 0  # the token already there: nothing


def test_the_branches_are_recorded_as_ids(session):
    s = session
    s.fork(N_PROMPT + 2, 10, "<10>")
    for st in continuation(3, [9, 7]):
        s.add(st)
    records = s.tree.records()
    assert records == [dict(parent=0, at=2, token_id=10, cut=True, ids=[10, 9, 7])]
    assert json.loads(json.dumps(records)) == records


@pytest.mark.parametrize("position, token_id", [(N_PROMPT + 9, 7), (N_PROMPT - 1, 7), (N_PROMPT + 1, 99)])
def test_a_token_that_is_not_a_candidate_here_is_refused_and_changes_nothing(session, position, token_id):
    s = session
    before, run = list(s.steps), s.run
    with pytest.raises(ValueError):
        s.fork(position, token_id, "?")
    assert s.steps == before and s.run == run and len(s.tree) == 1


def test_a_tree_starts_with_the_original_alone():
    tree = BranchTree()
    assert len(tree) == 1 and tree.current == 0 and tree.steps == [] and tree.records() == []
    with pytest.raises(ValueError):
        tree.switch(1)


def test_the_text_marks_the_forced_token_and_the_bar_names_the_branch(embedded_lm, session):
    from explorer.views import style
    from explorer.views.output import branch_bar_html, output_parts

    tok, s = embedded_lm.tokenizer, session
    assert branch_bar_html(tok, s.tree.branches, 0, s.n_prompt) == ""  # the original alone: no bar
    s.fork(N_PROMPT + 2, 10, "<10>")
    for st in continuation(3, [9, 7]):
        s.add(st)
    bar = branch_bar_html(tok, s.tree.branches, s.tree.current, s.n_prompt)
    html = output_parts(tok, s.prompt_ids, s.steps, bar=bar)[0]
    forced = [int(p) for p in re.findall(r'class="tok[^"]* forced" data-pos="(\d+)"', html)]
    assert forced == [N_PROMPT + 2] and html.count("forced by you, cut by the sampler") == 1
    word = style.token_label(tok.decode([10]), max_len=16)
    assert "<" in tok.decode([10]) and word.startswith("&lt;")  # escaped
    assert f"forced ‘{word}’ (cut by the sampler) at position {N_PROMPT + 2}, leaving the original" in bar
    assert bar.count('class="branch-go') == 2
    assert 'class="branch-go cur" role="button" tabindex="0" data-branch="1"' in bar
    s.switch_branch(0)
    original = output_parts(tok, s.prompt_ids, s.steps)[0]
    assert "forced" not in original.split("</style>")[1]


def test_the_forced_step_shows_its_steps_distribution_with_the_forced_and_the_drawn_token_marked(embedded_lm, session):
    from explorer.views.next_token import next_token_figure, sampler_summary_html
    from explorer.views import style

    tok, s = embedded_lm.tokenizer, session
    s.fork(N_PROMPT + 2, 10, "<10>")
    fig = next_token_figure(s.steps[2], tok)
    bars = [t for t in fig.data if t.type == "bar"]
    assert all(t.meta == "candidate" for t in bars)
    rows = {y: list(c) for t in bars for y, c in zip(t.y, t.customdata)}
    assert [rows[y][2] for y in sorted(rows)] == CANDIDATES and {c[3] for c in rows.values()} == {N_PROMPT + 2}
    notes = {a.y: a.text for a in fig.layout.annotations}
    assert "forced" in notes[CANDIDATES.index(10)] and "drawn" in notes[CANDIDATES.index(8)]
    assert "forced (a cut token)" in fig.layout.title.text
    outlined = [y for t in bars for y, w in zip(t.y, t.marker.line.width) if w]
    assert outlined == [CANDIDATES.index(10)]
    summary = sampler_summary_html(s.steps[2], 0.8, 2, 1.0, False, tok)
    assert "Forced" in summary and "had cut it" in summary and style.token_label(tok.decode([8]), 24) in summary


def test_export_waits_for_the_end_of_a_generation_and_takes_branches_and_ablations(session):
    """A version-2 session file holds the branches and the ablations (tests/integration/test_session_branches.py
    replays them): export refuses only a running generation or an empty session."""
    from explorer.session import Session
    from explorer.ui.share import export_refusal
    from model import HeadAblation

    s = session
    assert export_refusal(s) is None
    s.fork(N_PROMPT + 2, 10, "<10>")
    assert "wait until the generation ends" in export_refusal(s)  # the branch's continuation is running
    s.generating = False
    assert export_refusal(s) is None
    s.context_interventions = (HeadAblation(0, 0),)
    assert export_refusal(s) is None
    assert "generate some text first" in export_refusal(Session())



def test_a_render_keeps_the_steps_it_took_while_tokens_are_added():
    """A render on another thread takes the session's steps and goes over them several times (the Next-token
    timeline: its values, then its ticks) while the stream adds tokens: what it took must not grow under it (an
    IndexError reached the screen as an error toast in the lesson test)."""
    s = Session()
    s.start(list(range(N_PROMPT)), {"seed": 0})
    s.add(step(0, 7))
    taken = s.steps
    s.add(step(1, 8))
    assert len(taken) == 1 and len(s.steps) == 2 and taken[0] is s.steps[0]
