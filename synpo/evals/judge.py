"""The LLM judge of the judged suites: an OpenAI-compatible endpoint asked at temperature 0.

`Judge.ask(conversations, max_tokens)` sends chat requests through synpo's OpenAI engine
(synpo.engines.openai: retries with backoff on timeouts / 429 / 5xx, and a persistent SQLite
cache of finished requests keyed by endpoint, model, messages and every sampling field). A
judge prompt holds the instruction and both outputs in the order shown, so that key is the
(judge, prompt, both outputs, order) key of a judgment: a rerun, or an evaluation resumed after
a crash, finds every finished judgment in the cache and sends only the others. The cache is
`eval.judge.cache_dir` (default $SYNPO_CACHE_DIR or ~/.cache/synpo), outside the run
directory, so a new run of the same model never pays for the same judgment either.

Up to `eval.judge.concurrency` requests are in flight, each sent on its own so one request's
failure does not take its neighbours down. A request that still fails after its retries (or
that the server rejects with a 400-class error about the request itself) becomes a Reply
without text, counted as failed in the suite's metrics; a reply the suite cannot read is
counted as unparseable. When more than `eval.max_failed_judgments` of the requests failed,
no new request is started and the suite stops with an error: running the same command again
sends only what is not cached. The same cap holds for failed and unparseable judgments
together once all replies are in: more than that fraction without a verdict stops the suite.
A 401 / 403 / 404 (wrong key, URL or model) stops at once.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from synpo.engines.base import Request, Sampling, generate_sharded
from synpo.errors import UserError
from synpo.evals.inputs import SuiteInputs
from synpo.progress import log, progress
from synpo.recipe import EngineConfig, EvalConfig

FATAL_STATUS = {401, 403, 404}  # the endpoint, key or model is wrong: every request would fail


@dataclass
class Reply:
    id: str
    text: str | None  # None: the request failed
    error: str | None = None
    top_logprobs: list | None = None  # per generated token, when asked for and the server returned them


class Judge:
    """An LLM judge behind an OpenAI-compatible endpoint (temperature 0)."""

    def __init__(self, cfg: EngineConfig, *, seed: int = 0, max_failed: float = 0.0):
        from synpo.engines.openai import OpenAIEngine

        if cfg.kind != "openai" or not cfg.model:
            raise UserError("eval.judge: needs kind openai, base_url and model (an OpenAI-compatible endpoint)")
        self.cfg, self.seed, self.max_failed = cfg, seed, max_failed
        self.name = cfg.model
        self.engine = OpenAIEngine(cfg, model=cfg.model)

    def ask(self, conversations: list[tuple[str, list[dict]]], max_tokens: int, desc: str = "judge",
            top_logprobs: int = 0) -> list[Reply]:
        """One reply per (id, messages), in order; failed requests give Reply(text=None, error=...).
        `top_logprobs`: ask for the k most likely tokens at each position (AlpacaEval's weighting)."""
        from synpo.engines.openai import OpenAIEngineError, RequestRejected

        sampling = Sampling(temperature=0.0, max_new_tokens=max_tokens, seed=self.seed, top_logprobs=top_logprobs)
        requests = [Request(i, messages) for i, messages in conversations]
        allowed = math.floor(self.max_failed * len(requests))
        replies: dict[int, Reply] = {}
        failed = 0

        def one(request: Request) -> Reply:
            try:
                completion = self.engine.generate([request], sampling)[0]
                return Reply(request.id, completion.text,
                             top_logprobs=completion.top_logprobs[0] if completion.top_logprobs else None)
            except RequestRejected as e:
                if e.status in FATAL_STATUS:
                    raise
                return Reply(request.id, None, f"{type(e).__name__}: {e}"[:500])
            except OpenAIEngineError as e:
                return Reply(request.id, None, f"{type(e).__name__}: {e}"[:500])

        pending = list(enumerate(requests))[::-1]
        with progress(desc, total=len(requests), unit="req") as bar, \
                ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            running = {}
            while pending or running:
                while pending and len(running) < self.cfg.concurrency and failed <= allowed:
                    index, request = pending.pop()
                    running[pool.submit(one, request)] = index
                if not running:
                    break  # too many failures: start nothing new
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    reply = replies[running.pop(future)] = future.result()
                    failed += reply.text is None
                    bar.advance(1)
        if failed > allowed:
            example = next(r.error for r in replies.values() if r.text is None)
            raise UserError(f"{desc}: {failed} of {len(requests)} judge requests failed ({example}); stopped. "
                            "Finished judgments are cached: run the same command again to retry the rest, or "
                            "raise eval.max_failed_judgments to report with failures counted")
        return [replies[i] for i in range(len(requests))]

    def close(self) -> None:
        self.engine.close()


class Tally:
    """Counts of a suite's judge requests: finished, failed after retries, unparseable."""

    def __init__(self):
        self.judgments = self.requests = self.failed = self.unparseable = 0
        self.errors: Counter = Counter()

    def add(self, reply: Reply, verdict, requests: int = 1) -> str:
        """Record one judgment; returns its status: ok, unparseable or failed."""
        self.judgments += 1
        self.requests += requests
        if reply.text is None:
            self.failed += 1
            self.errors[(reply.error or "error").split(":")[0]] += 1
            return "failed"
        if verdict is None:
            self.unparseable += 1
            return "unparseable"
        return "ok"

    def metrics(self) -> dict:
        return {"judge_judgments": self.judgments, "judge_requests": self.requests,
                "judge_ok": self.judgments - self.failed - self.unparseable,
                "judge_unparseable": self.unparseable, "judge_failed": self.failed,
                "judge_errors": dict(self.errors)}

    def check(self, max_fraction: float, suite: str) -> None:  # over several ask() calls (arena_hard)
        """Stop the suite when more than `max_fraction` of its judgments have no verdict, failed
        requests and unparseable replies alike: a metric over the readable rest would be quoted
        as if it covered the whole suite."""
        missing = self.failed + self.unparseable
        if self.judgments and missing / self.judgments > max_fraction:
            kinds = ", ".join(f"{k} x{v}" for k, v in self.errors.most_common())
            parts = [f"{self.failed} failed after retries ({kinds})"] if self.failed else []
            parts += [f"{self.unparseable} unparseable"] if self.unparseable else []
            fix = ("finished judgments are cached, run the same command again to retry the failed ones; "
                   if self.failed else "")
            fix += "an unparseable reply is cached too: use a judge that answers in the suite's format; " \
                if self.unparseable else ""
            raise UserError(f"{suite}: {missing} of {self.judgments} judgments have no verdict "
                            f"({', '.join(parts)}), over eval.max_failed_judgments={max_fraction:g}; {fix}"
                            "or raise eval.max_failed_judgments to report with them counted")
        if missing:
            log(f"[yellow]{suite}: {self.failed} judge request(s) failed after retries and {self.unparseable} "
                "repl(ies) were unparseable; counted in the metrics and left out of the scores")


def suite_max_tokens(cfg: EvalConfig, official: int) -> int:
    """The judge's output budget: the suite's official value, capped by eval.judge_max_tokens."""
    return min(official, cfg.judge_max_tokens) if cfg.judge_max_tokens else official


def generate_answers(engine, requests: list[Request], inputs: SuiteInputs, shard_dir: Path, desc: str,
                     temperature: float | None = None) -> list[str]:
    """The evaluated model's answers (eval.sampling, or its settings at `temperature`), sharded so a
    killed stage resumes."""
    s = inputs.eval.sampling
    sampling = Sampling(temperature=s.temperature if temperature is None else temperature, top_p=s.top_p,
                        max_new_tokens=s.max_new_tokens, seed=inputs.seed)
    completions = generate_sharded(engine, requests, sampling, shard_dir, shard_size=inputs.engine.shard_size,
                                   desc=desc)
    return [c.text.strip() for c in completions]
