"""Branching: a generated token replaced by another candidate of its step, and the text generated on from there. The
branches of one generation form a tree whose root is the original; the views show the current branch's steps."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from model import Step


@dataclass(frozen=True)
class ForcedStep(Step):
    """A step whose token the user chose: the distribution is the one the sampler drew `drawn_id` from, with the
    forced token's probabilities; cut says whether the sampler had cut it (it could never have drawn it)."""

    drawn_id: int = -1
    cut: bool = False


def forced_step(step: Step, token_id: int, text: str) -> ForcedStep:
    """`step` with token_id chosen instead of the token drawn: one of its top candidates, kept or cut."""
    if token_id not in step.top_ids:
        raise ValueError(f"token {token_id} is not one of the candidates of the token at position {step.position}")
    i = step.top_ids.index(token_id)
    same = {f.name: getattr(step, f.name) for f in fields(Step)}
    drawn = step.drawn_id if isinstance(step, ForcedStep) else step.token_id
    return ForcedStep(**{**same, "token_id": token_id, "text": text, "prob": step.top_probs[i],
                         "sampled_prob": step.top_sampled_probs[i], "finish_reason": None, "trace": None},
                      drawn_id=drawn, cut=not step.top_kept[i])


@dataclass
class Branch:
    """parent: the branch it leaves (its index in the tree; None for the original); at: the index of the generated
    token where it leaves it (the forced one); steps: all its generated tokens, the parent's first `at` included."""

    parent: int | None
    at: int
    steps: list[Step]

    @property
    def forced(self) -> ForcedStep | None:
        step = self.steps[self.at] if self.parent is not None else None
        return step if isinstance(step, ForcedStep) else None

    def record(self) -> dict[str, Any]:
        """What a session file needs to redo it (JSON types): the generation's settings and prompt do the rest."""
        forced = self.forced
        return dict(parent=self.parent, at=self.at, token_id=forced.token_id if forced else None,
                    cut=forced.cut if forced else False, ids=[s.token_id for s in self.steps[self.at:]])


class BranchTree:
    """The original generation (branch 0) and every branch forced from it or from another branch; `current` is the
    one whose steps the views show."""

    def __init__(self) -> None:
        self.branches: list[Branch] = [Branch(parent=None, at=0, steps=[])]
        self.current = 0

    @property
    def steps(self) -> list[Step]:
        return self.branches[self.current].steps

    @steps.setter
    def steps(self, steps: list[Step]) -> None:
        self.branches[self.current].steps = steps

    def __len__(self) -> int:
        return len(self.branches)

    def fork(self, at: int, token_id: int, text: str) -> bool:
        """Force token_id at the current branch's generated token `at`. The branch that has it there becomes current:
        one that exists (False), or a new one, holding the prefix and the forced token (True: its continuation is
        yet to generate). Choosing the token that is already there changes nothing (False)."""
        steps = self.steps
        if not 0 <= at < len(steps):
            raise ValueError(f"there is no generated token {at} (this text has {len(steps)})")
        if steps[at].token_id == token_id:
            return False
        wanted = [s.token_id for s in steps[:at]] + [token_id]
        for index, branch in enumerate(self.branches):
            if branch.at <= at < len(branch.steps) and [s.token_id for s in branch.steps[:at + 1]] == wanted:
                self.current = index
                return False
        forced = forced_step(steps[at], token_id, text)
        self.branches.append(Branch(parent=self._owner(at), at=at, steps=steps[:at] + [forced]))
        self.current = len(self.branches) - 1
        return True

    def _owner(self, at: int) -> int:
        """The branch whose own token (after its forced one) the current branch's token `at` is: a new branch there
        leaves it."""
        index = self.current
        while (branch := self.branches[index]).parent is not None and at <= branch.at:
            index = branch.parent
        return index

    def switch(self, index: int) -> None:
        if not 0 <= index < len(self.branches):
            raise ValueError(f"there is no branch {index} (there are {len(self.branches)})")
        self.current = index

    def records(self) -> list[dict[str, Any]]:
        """Every branch but the original, in order (a branch's parent always comes before it)."""
        return [branch.record() for branch in self.branches[1:]]
