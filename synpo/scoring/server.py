"""What a scoring worker process serves (synpo.scoring.parallel starts it by name): one scorer, on its
own device. A module of its own because it builds the scorer through make_scorer, whose scorers
import synpo.scoring.parallel."""

from __future__ import annotations

from synpo.recipe import ScorerConfig


class ScorerServer:
    """What a worker serves: one scorer (data_parallel_size 1) on its own device."""

    def __init__(self, cfg: dict, device: str):
        from synpo.scoring import make_scorer

        self.scorer = make_scorer(ScorerConfig(**{**cfg, "data_parallel_size": 1}), device=device)

    def score_batches(self, batches: list[list[list[int]]]) -> list[list[float]]:
        self.scorer._load()
        return [self.scorer._score_batch(batch) for batch in batches]

    def compare(self, prompts, better, worse) -> list[float]:
        return self.scorer.compare(prompts, better, worse)

    def rank(self, prompts, candidates) -> list[list[float]]:
        return self.scorer.rank(prompts, candidates)

    def close(self) -> None:
        self.scorer.close()
