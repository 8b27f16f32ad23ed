"""An LLM judge as the scorer: an OpenAI-compatible endpoint rates each response 1-10.

The prompt is `prompts/judge_score.jinja` (MT-bench's single-answer grading prompt, the
`single-v1` entry of FastChat's judge_prompts.jsonl) or the file `scorer.template` names;
it is filled with `prompt` and `response` and sent as the user turn after MT-bench's system
turn, greedy. The judge writes a short explanation and then `Rating: [[N]]`; the score is read
as MT-Bench reads it (synpo.evals.verdicts.parse_rating: FastChat's first `[[N]]`, else `[N]`,
within 1-10).

A reply without a rating (parse_rating's None) scores NaN, every scorer's "no score", and is
counted (logged per call, total in `unparseable`): a NaN gap never exceeds a threshold, so such
a row is dropped, never kept on a guess. Units are judge points (1-10): `improver.gap` /
`pairs.gap` are in points.

The API key is read from the environment variable named by `scorer.judge.api_key_env`.
"""

from __future__ import annotations

import math
from pathlib import Path

from synpo.errors import UserError
from synpo.evals.verdicts import RATING_SCALE, parse_rating
from synpo.recipe import ScorerConfig

SYSTEM = "You are a helpful assistant."


def render_judge_prompt(template: str, prompt: str, response: str) -> str:
    if Path(template).is_file():
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        return env.from_string(Path(template).read_text(encoding="utf-8")).render(prompt=prompt,
                                                                                 response=response).strip()
    from synpo.templates import render

    return render(template.removesuffix(".jinja"), prompt=prompt, response=response)


class JudgeScorer:
    name = "judge"

    def __init__(self, cfg: ScorerConfig, engine=None):
        if cfg.judge is None or cfg.judge.kind != "openai":
            raise UserError("scorer.judge: an OpenAI-compatible endpoint is required "
                            "(kind: openai, base_url, model, api_key_env)")
        if not cfg.judge.model:
            raise UserError("scorer.judge.model: name the judging model (e.g. gpt-4-1106-preview)")
        self.cfg = cfg
        self.engine = engine  # made on first use and dropped by close(), like a reward model's weights
        self.unparseable = 0
        self.replies: list[str] = []

    def valid(self, prompts):
        return [True] * len(prompts)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from synpo.engines.base import Request, Sampling
        from synpo.progress import log

        requests = [Request(f"judge-{i:07d}", [{"role": "system", "content": SYSTEM},
                                               {"role": "user", "content": render_judge_prompt(
                                                   self.cfg.template, p, r)}])
                    for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
        if not requests:
            return []
        if self.engine is None:
            from synpo.engines.openai import OpenAIEngine

            self.engine = OpenAIEngine(self.cfg.judge, model=self.cfg.judge.model)
        completions = self.engine.generate(requests, Sampling(temperature=0.0, max_new_tokens=512))
        self.replies = [c.text for c in completions]
        ratings = [parse_rating(text) for text in self.replies]
        scores = [math.nan if rating is None else rating for rating in ratings]
        bad = sum(math.isnan(s) for s in scores)
        self.unparseable += bad
        if bad:
            log(f"[yellow]judge[/yellow]: {bad} of {len(scores)} replies had no rating in "
                f"{RATING_SCALE[0]:g}-{RATING_SCALE[1]:g}; "
                "those rows score NaN and are dropped")
        return scores

    def close(self):
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
        self.engine = None
