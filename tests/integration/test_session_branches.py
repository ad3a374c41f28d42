"""Session files with branches and ablations, on the real embedded model: a run generated with an ablation, a branch
forced at a cut token and a branch of that branch, exported as the app writes it (explorer/ui/share.py) and
replayed (explorer/ui/api.py's start_replay and Replay.branches): every branch comes back token for token with the
same ablation, the branch shown is the file's; a changed branch token or forced token is refused with a sentence."""
from __future__ import annotations

import copy
import json

import pytest

from explorer.export import session_document, session_json
from explorer.probing import intervention_records
from explorer.session import Session
from explorer.ui.api import GenerationRequest, api_import_session, start_continuation, start_replay
from explorer.ui.common import Limits
from model.interventions import HeadAblation
from tests.integration.test_branching import generate_into

PROMPT = "The best way to learn a new language is"
LIMITS = Limits()
MODEL = dict(name="SmolLM2-135M-Instruct", weights_sha256=None, device="cpu", dtype="float32")


def fork_and_continue(lm, s: Session, at: int, rank: int) -> None:
    """Force the rank-th candidate of the current branch's generated token `at` and generate on, as the app does."""
    step = s.steps[at]
    token = next(t for t in step.top_ids[rank:] if t != step.token_id)
    assert s.fork(step.position, token, lm.tokenizer.decode([token]))
    generation = start_continuation(lm, LIMITS, s.settings, s.ids, len(s.steps), should_stop=lambda: s.stopped(s.run),
                                    interventions=s.context_interventions)
    if generation is not None:
        generate_into(s, generation)


@pytest.fixture(scope="module")
def session(embedded_lm):
    lm = embedded_lm
    request = GenerationRequest.checked(PROMPT, 12, 0.8, 50, 0.95, 5, False, False, False, LIMITS)
    ids = request.prompt_ids(lm, LIMITS)
    ablations = (HeadAblation(2, 3),)
    s = Session()
    s.start(ids, request.settings(), ablations)
    generate_into(s, request.start(lm, ids, LIMITS, interventions=ablations))
    fork_and_continue(lm, s, 3, 8)  # branch 1 leaves the original at its 4th token
    fork_and_continue(lm, s, 7, 2)  # branch 2 leaves branch 1 at its 8th token
    assert len(s.tree) == 3 and s.tree.current == 2 and s.tree.branches[2].parent == 1
    return s


def exported(s: Session) -> dict:
    """The session file as Share.write_files writes it (model: this test's; the hash is not what it checks)."""
    return session_document(MODEL, s.prompt_ids, s.settings, s.tree.branches[0].steps, {}, s.tree.records(),
                            intervention_records(s.context_interventions), s.tree.current)


def replayed(lm, document: dict):
    replay = start_replay(lm, LIMITS, session_json(document))
    for _ in replay.generation.follow(1000):
        pass
    assert replay.mismatch() is None
    *_, (done, branches) = replay.branches(lm, LIMITS)
    return replay, branches


def test_branches_and_the_ablation_replay_token_for_token(embedded_lm, session, monkeypatch):
    monkeypatch.setattr("explorer.ui.api.weights_sha256", lambda source: None)
    document = json.loads(session_json(exported(session)))
    assert document["interventions"] == [{"kind": "head", "layer": 2, "head": 3}]
    assert [b["parent"] for b in document["branches"]] == [0, 1] and document["current_branch"] == 2
    replay, branches = replayed(embedded_lm, document)
    assert replay.interventions == (HeadAblation(2, 3),)
    assert [st.token_id for st in replay.generation.steps] == [st.token_id for st in session.tree.branches[0].steps]
    assert len(branches) == 2
    for got, want in zip(branches, session.tree.branches[1:]):
        assert (got.parent, got.at) == (want.parent, want.at)
        assert [st.token_id for st in got.steps] == [st.token_id for st in want.steps]
        assert [st.prob for st in got.steps] == pytest.approx([st.prob for st in want.steps], abs=1e-5)
        assert [st.index for st in got.steps] == list(range(len(want.steps)))
        assert got.forced.cut == want.forced.cut
    # the API's import says what it replayed
    answer = api_import_session(embedded_lm, LIMITS)(session_json(document))
    assert answer["checked"] and len(answer["branches"]) == 2 and answer["interventions"] == "head 3 of layer 2 ablated"
    assert answer["branches"][1] == "".join(st.text for st in session.tree.branches[2].steps)


def test_a_replay_without_the_ablation_is_another_text(embedded_lm, session, monkeypatch):
    """The ablation is what makes the file replay: without it the original already differs (so the test above
    cannot pass by ignoring interventions)."""
    monkeypatch.setattr("explorer.ui.api.weights_sha256", lambda source: None)
    document = json.loads(session_json(exported(session)))
    document["interventions"] = []
    replay = start_replay(embedded_lm, LIMITS, json.dumps(document))
    for _ in replay.generation.follow(1000):
        pass
    assert replay.mismatch() is not None


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["branches"][1]["ids"].__setitem__(2, d["branches"][1]["ids"][2] + 1),
     "Branch 2's token 10 differs from the replay's"),
    (lambda d: d["branches"][0].update(token_id=17, ids=[17] + d["branches"][0]["ids"][1:]),
     "Branch 1's forced token is not a candidate of token 4"),
    (lambda d: d["branches"][0].update(at=40), "holds 49 tokens but asked for at most 12"),
])
def test_a_changed_branch_is_refused_with_a_sentence(embedded_lm, session, monkeypatch, edit, message):
    monkeypatch.setattr("explorer.ui.api.weights_sha256", lambda source: None)
    document = copy.deepcopy(json.loads(session_json(exported(session))))
    edit(document)
    with pytest.raises(Exception, match=message):
        api_import_session(embedded_lm, LIMITS)(json.dumps(document))
