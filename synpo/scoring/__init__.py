"""Scorers: the paper's reward model role. One interface, several backends.

`score(prompts, responses) -> list[float]` rates each response to its prompt; scores are in
the scorer's own units (toy checker: [0, 1]; a reward model: its logits), and the recipe's
gap thresholds τ are in those units. `valid(prompts)` says which prompts the scorer can
judge at all (only the toy checker knows invalid tasks; others accept every prompt).
"""

from __future__ import annotations

from typing import Protocol

from synpo.recipe import ScorerConfig


class Scorer(Protocol):
    name: str

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...

    def valid(self, prompts: list[str]) -> list[bool]: ...

    def close(self) -> None: ...


class ToyScorer:
    """The toy world's programmatic checker."""

    name = "toy"

    def score(self, prompts, responses):
        from synpo.toy.world import score

        return [score(p, r) for p, r in zip(prompts, responses, strict=True)]

    def valid(self, prompts):
        from synpo.toy.world import is_valid_prompt

        return [is_valid_prompt(p) for p in prompts]

    def close(self):
        pass


def make_scorer(cfg: ScorerConfig, device: str = "cpu") -> Scorer:
    if cfg.kind == "toy":
        return ToyScorer()
    if cfg.kind == "reward_model":
        from synpo.scoring.reward_model import RewardModelScorer

        return RewardModelScorer(cfg, device=device)
    if cfg.kind == "pairwise":
        from synpo.scoring.pairwise import PairwiseScorer

        return PairwiseScorer(cfg, device=device)
    from synpo.scoring.judge import JudgeScorer

    return JudgeScorer(cfg)


def score_gaps(scorer: Scorer, prompts: list[str], better: list[str], worse: list[str]) -> list[float]:
    """score(better) - score(worse) per row; a pairwise scorer compares the two directly."""
    compare = getattr(scorer, "compare", None)
    if compare is not None:
        return compare(prompts, better, worse)
    a = scorer.score(prompts, better)
    b = scorer.score(prompts, worse)
    return [x - y for x, y in zip(a, b)]
