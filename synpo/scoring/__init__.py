"""Scorers: the paper's reward model role. One interface, several backends.

`score(prompts, responses) -> list[float]` rates each response to its prompt. Scores are in
the scorer's own units, and so are the recipe's gap thresholds τ (`improver.gap`, `pairs.gap`):

| scorer.kind    | what a gap is                                            | the paper's τ |
|----------------|----------------------------------------------------------|---------------|
| `toy`          | difference of checker credits in [0, 1]                  | -             |
| `reward_model` | difference of the reward model's scores (its logit)      | ArmoRM 0.02   |
| `pairwise`     | PairRM's logit(A over B) - logit(B over A), via compare  | PairRM 0.20   |
| `judge`        | difference of judge ratings, points on a 1-10 scale      | -             |
| `yes_no`       | difference of a local LM's P(Yes) / (P(Yes) + P(No))     | -             |

`valid(prompts)` says which prompts the scorer can judge at all (only the toy checker knows
invalid tasks; others accept every prompt). A scorer that only compares has
`compare(prompts, better, worse)` (used by `score_gaps`) and `rank(prompts, candidates)`
(used by `score_groups`). `close()` releases a scorer's model; the next call loads it again.
"""

from __future__ import annotations

import math
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


def make_scorer(cfg: ScorerConfig, device: str = "auto", ray_address: str | None = None) -> Scorer:
    """The recipe's scorer; `device` auto means cuda when available (models load on first use).
    A reward model or PairRM runs as copies side by side (scoring/parallel.py) when
    `cfg.data_parallel_size` or the GPUs say so; `ray_address` puts the copies on a Ray cluster."""
    if cfg.kind == "toy":
        return ToyScorer()
    if cfg.kind == "reward_model":
        from synpo.scoring.reward_model import RewardModelScorer

        return RewardModelScorer(cfg, device=device, ray_address=ray_address)
    if cfg.kind == "pairwise":
        from synpo.scoring.pairwise import PairwiseScorer

        return PairwiseScorer(cfg, device=device, ray_address=ray_address)
    if cfg.kind == "yes_no":
        from synpo.scoring.yes_no import YesNoScorer

        return YesNoScorer(cfg, device=device)
    from synpo.scoring.judge import JudgeScorer

    return JudgeScorer(cfg)


def finite_mean(values: list[float]) -> float:
    """Mean of the values that are numbers (a judge's unparseable ratings are NaN); 0 for none."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else 0.0


def score_gaps(scorer: Scorer, prompts: list[str], better: list[str], worse: list[str]) -> list[float]:
    """score(better) - score(worse) per row; a pairwise scorer compares the two directly."""
    compare = getattr(scorer, "compare", None)
    if compare is not None:
        return compare(prompts, better, worse)
    a = scorer.score(prompts, better)
    b = scorer.score(prompts, worse)
    return [x - y for x, y in zip(a, b)]


def score_groups(scorer: Scorer, prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
    """Scores of each prompt's candidates; a pairwise scorer ranks each group jointly."""
    rank = getattr(scorer, "rank", None)
    if rank is not None:
        return rank(prompts, groups)
    flat = scorer.score([p for p, g in zip(prompts, groups) for _ in g], [c for g in groups for c in g])
    out, i = [], 0
    for g in groups:
        out.append(flat[i : i + len(g)])
        i += len(g)
    return out
