"""The OpenAI-compatible engine: any server with `/v1/chat/completions` (vLLM serve, TGI,
`transformers serve`, hosted APIs).

- `engine.base_url` as the OpenAI SDK takes it (`http://host:port/v1`; a bare `http://host:port`
  gets `/v1`), `engine.model` (default: the stage's model path, which `transformers serve`
  loads by that name), the API key from the environment variable named by `engine.api_key_env`
  (sent as a bearer token; never stored, logged or part of a cache key).
- At most `engine.concurrency` requests in flight. Timeouts, connection errors (resets, bodies
  cut off mid-stream), replies that are not a chat completion (not JSON, no `choices`, no text),
  408/409/429 and 5xx are retried up to `engine.max_retries` times with exponential backoff and jitter
  (`engine.retry_backoff` seconds first, doubling, capped at 60 s, or the server's Retry-After);
  then `RetriesExhausted`. Any other 4xx raises `RequestRejected` with the status and the
  server's message at once: retrying cannot fix the request.
- Each sample is its own request (`n` is never sent: many servers ignore it): sample k of
  request i is seeded from (sampling seed, i, k) when sampling; greedy requests are sent once
  and repeated.
- Finished requests go to a persistent on-disk cache (SQLite, `engine.cache_dir`, default
  `$SYNPO_CACHE_DIR` or `~/.cache/synpo`) the moment they finish, keyed by the endpoint, the
  model, the messages, every sampling field (seed included) and the sample index, so a rerun,
  a resumed stage or a stage that failed half-way never sends a finished request again.
Texts are cut at stop strings and stripped like the hf engine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

from synpo.engines.base import Completion, Request, Sampling, cut_at_stop
from synpo.errors import UserError
from synpo.recipe import EngineConfig

RETRY_STATUS = {408, 409, 429}
MAX_BACKOFF = 60.0


class OpenAIEngineError(RuntimeError):
    """The server gave no completion for a request."""


class RequestRejected(OpenAIEngineError, UserError):
    """The server refused a request (a 4xx other than 408/409/429); retrying cannot help."""

    def __init__(self, url: str, model: str, status: int, message: str):
        self.status, self.server_message = status, message
        super().__init__(f"{url}: HTTP {status} for model {model!r}: {message} "
                         "(check engine.base_url, engine.model and engine.api_key_env)")


class RetriesExhausted(OpenAIEngineError, UserError):
    """Timeouts, connection errors, unreadable replies, 429 or 5xx went on after engine.max_retries
    retries. A UserError: the run stops with its one-line message (exit 2) and resumes when rerun."""


def default_cache_dir() -> Path:
    if os.environ.get("SYNPO_CACHE_DIR"):
        return Path(os.environ["SYNPO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synpo"


def chat_completions_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base + "/chat/completions"


def sample_seed(seed: int, index: int, sample: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}:{sample}".encode()).hexdigest()[:8], 16)


class CompletionCache:
    """Finished requests on disk. SQLite: each row is committed on its own, safe across threads,
    processes and kills (a killed writer leaves the database as of its last commit)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?)", (key, json.dumps(value)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg: EngineConfig, model: str):
        import httpx

        if not cfg.base_url:
            raise UserError("engine.base_url: required when engine.kind is openai")
        self.cfg = cfg
        self.url = chat_completions_url(cfg.base_url)
        self.model = cfg.model or str(model)
        headers, self._secret = {}, None
        if cfg.api_key_env:
            self._secret = os.environ.get(cfg.api_key_env)
            if not self._secret:
                raise UserError(f"engine.api_key_env: the environment variable {cfg.api_key_env} is not set "
                                "(export it with the API key; the recipe names the variable only)")
            headers["Authorization"] = f"Bearer {self._secret}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 10)),
                                    limits=httpx.Limits(max_connections=cfg.concurrency))
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        self.cache = CompletionCache(cache_dir / "openai.sqlite") if cfg.cache else None
        self.sent = 0  # HTTP requests sent, retries included
        self.from_cache = 0
        self._count = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEngine({self.url}, model={self.model!r})"

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        greedy = sampling.temperature == 0
        samples = 1 if greedy else sampling.n
        done: dict[tuple[int, int], dict] = {}
        todo = []
        for i, request in enumerate(requests):
            for k in range(samples):
                seed = sampling.seed if greedy else sample_seed(sampling.seed, i, k)
                body = self._body(request.messages, sampling, seed)
                key = hashlib.sha256(json.dumps({"url": self.url, "body": body, "sample": k},
                                                sort_keys=True).encode()).hexdigest()
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is None:
                    todo.append(((i, k), body, key))
                else:
                    done[i, k] = hit
        with self._count:
            self.from_cache += len(done)
        if todo:
            self._fetch_all(todo, done)
        out = []
        for i, request in enumerate(requests):
            finished = [self._finish(done[i, k], sampling.stop) for k in range(samples)]
            finished = finished * sampling.n if greedy else finished
            texts, reasons, tokens, top_logprobs = map(list, zip(*finished))
            out.append(Completion(request.id, texts, reasons, tokens,
                                  top_logprobs if any(t is not None for t in top_logprobs) else None))
        return out

    def _body(self, messages: list[dict], sampling: Sampling, seed: int) -> dict:
        body = {"model": self.model, "messages": messages, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.top_logprobs:
            body.update(logprobs=True, top_logprobs=sampling.top_logprobs)
        return {**body, **self.cfg.extra_body}

    @staticmethod
    def _finish(answer: dict, stop: list[str]) -> tuple[str, str, int, list | None]:
        text, cut = cut_at_stop(answer["text"], stop)  # also where a server ignores `stop`
        reason = "length" if answer["finish_reason"] == "length" and not cut else "stop"
        return text.strip(), reason, answer.get("completion_tokens") or 0, answer.get("top_logprobs")

    def _fetch_all(self, todo: list, done: dict) -> None:
        """Send what is not cached, `concurrency` at a time. On the first failure nothing new is
        started; requests in flight still finish (and are cached) before the error is raised."""
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(todo))) as pool:
            futures = {pool.submit(self._fetch, body, key): ik for ik, body, key in todo}
            try:
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _fetch(self, body: dict, key: str) -> dict:
        answer = self._post(body)
        if self.cache is not None:
            self.cache.put(key, answer)
        return answer

    def _post(self, body: dict) -> dict:
        import httpx

        from synpo.progress import log

        attempt = 0
        while True:
            retry_after = None
            with self._count:
                self.sent += 1
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.cfg.timeout:g} s"
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return _answer(response.json())
                    except ValueError as e:  # not JSON, or JSON that is not a chat completion
                        problem = f"unreadable response ({str(e)[:200]})"
                elif status in RETRY_STATUS or status >= 500:
                    problem = f"HTTP {status}: {self._message(response)}"
                    retry_after = _seconds(response.headers.get("retry-after"))
                else:
                    raise RequestRejected(self.url, self.model, status, self._message(response))
            if attempt >= self.cfg.max_retries:
                raise RetriesExhausted(f"{self.url}: {problem} (gave up after {attempt + 1} attempts; "
                                       "raise engine.max_retries or engine.timeout, or check the server)")
            delay = min(MAX_BACKOFF, self.cfg.retry_backoff * 2**attempt)
            delay = random.uniform(delay / 2, delay)  # jitter: concurrent retries do not arrive together
            if retry_after is not None:
                delay = min(MAX_BACKOFF, max(delay, retry_after))
            attempt += 1
            log(f"openai: {problem}; retry {attempt}/{self.cfg.max_retries} in {delay:.1f} s")
            time.sleep(delay)

    def _message(self, response) -> str:
        """The server's own error message (OpenAI's {"error": {"message"}}, FastAPI's detail, or text)."""
        try:
            data = response.json()
            error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
            message = error.get("message", error) if isinstance(error, dict) else error
            message = message if isinstance(message, str) else json.dumps(message)
        except ValueError:
            message = response.text
        message = " ".join(message.split())[:500] or response.reason_phrase
        return message.replace(self._secret, "***") if self._secret else message

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()


def _answer(data) -> dict:
    """The first choice of a chat completion; ValueError for anything else (retried: a server
    that sent a truncated, empty or foreign body usually answers properly the next time)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"a 200 without choices: {json.dumps(data)[:120]}")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise ValueError(f"choices[0].message.content is not text: {json.dumps(choices[0])[:120]}")
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    answer = {"text": text, "finish_reason": choices[0].get("finish_reason"),
              "completion_tokens": tokens if isinstance(tokens, int) else None}
    logprobs = choices[0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if content:  # OpenAI's and vLLM's format: one entry per generated token
        answer["top_logprobs"] = [[{"token": t["token"], "logprob": t["logprob"]} for t in position.get("top_logprobs")
                                   or [position]] for position in content]
    return answer


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
