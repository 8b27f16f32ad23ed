"""The openai engine: retries, backoff, 4xx errors, concurrency, keys and the cache against a small
real HTTP stub; then against a real `transformers serve` on loopback, killed mid-stage and
restarted; and the tiny loop with one stage served that way."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from synpo.engines.base import Request, Sampling, generate_sharded
from synpo.engines.hf import HFEngine
from synpo.engines.local_server import LocalServer
from synpo.engines.openai import (
    OpenAIEngine,
    RequestRejected,
    RetriesExhausted,
    chat_completions_url,
)
from synpo.errors import UserError
from synpo.io import read_jsonl
from synpo.recipe import EngineConfig
from synpo.toy import DATA, TINY_MODEL
from tests.conftest import run_iterate

torch.set_num_threads(1)


def requests_for(texts) -> list[Request]:
    return [Request(f"q{i}", [{"role": "user", "content": t}]) for i, t in enumerate(texts)]


def ok(body: dict) -> tuple[int, dict]:
    """The stub's answer: the last user message and the seed echoed back."""
    text = f"{body['messages'][-1]['content']} | seed {body.get('seed')}"
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                 "usage": {"completion_tokens": 3}}


class Stub:
    """A real HTTP server on loopback whose answers a test scripts: respond(body, count) returns
    (status, json[, headers]), "drop" (close without answering) or ("sleep", seconds)."""

    def __init__(self, respond=lambda body, count: ok(body)):
        self.respond, self.bodies, self.headers = respond, [], []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.bodies.append(body)
                    stub.headers.append(dict(self.headers))
                    count = len(stub.bodies)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    answer = stub.respond(body, count)
                    if answer != "drop" and answer[0] == "sleep":
                        time.sleep(answer[1])
                        answer = ok(body)
                finally:
                    # out of flight before the answer is sent: the client cannot start its next
                    # request before then, so in_flight never counts one that is already answered
                    with stub._lock:
                        stub.in_flight -= 1
                if answer == "drop":
                    self.close_connection = True
                    return
                status, payload, *headers = answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers[0] if headers else {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_engine(tmp_path):
    """make(respond, **engine options) -> (stub, engine); both closed after the test."""
    made = []

    def make(respond=lambda body, count: ok(body), **options):
        stub = Stub(respond)
        cfg = EngineConfig(kind="openai", base_url=stub.base_url, cache_dir=str(tmp_path / "cache"),
                           **{"retry_backoff": 0.01, **options})
        engine = OpenAIEngine(cfg, model="m")
        made.append((stub, engine))
        return stub, engine

    yield make
    for stub, engine in made:
        engine.close()
        stub.close()


def test_base_url_forms():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://x.org/openai/v1") == "https://x.org/openai/v1/chat/completions"


def test_429_and_5xx_are_retried_until_an_answer(stub_engine):
    answers = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}), (503, {"detail": "busy"}),
               (500, {}), ]
    stub, engine = stub_engine(lambda body, count: answers[count - 1] if count <= 3 else ok(body), max_retries=3)
    (out,) = engine.generate(requests_for(["hello"]), Sampling(max_new_tokens=8))
    assert out.text == "hello | seed 0" and out.finish_reasons == ["stop"] and out.num_tokens == [3]
    assert len(stub.bodies) == 4 and engine.sent == 4


def test_backoff_doubles_with_jitter_then_gives_up(stub_engine, monkeypatch):
    slept = []
    monkeypatch.setattr("synpo.engines.openai.time.sleep", slept.append)
    stub, engine = stub_engine(lambda body, count: (500, {"error": {"message": "kernel on fire"}}), max_retries=4,
                               retry_backoff=1.0)
    with pytest.raises(RetriesExhausted, match="HTTP 500: kernel on fire"):
        engine.generate(requests_for(["hello"]), Sampling())
    assert len(stub.bodies) == 5 and len(slept) == 4
    for attempt, delay in enumerate(slept):
        assert 2**attempt / 2 <= delay <= 2**attempt
    assert len(set(slept)) == 4  # jittered, not a fixed schedule

    slept.clear()
    stub, engine = stub_engine(lambda body, count: (429, {}, {"Retry-After": "7"}) if count == 1 else ok(body))
    engine.generate(requests_for(["hello"]), Sampling())
    assert slept and 7 <= slept[0] <= 60  # the server's Retry-After wins over a shorter backoff


def test_other_4xx_fail_at_once_with_status_and_message(stub_engine):
    stub, engine = stub_engine(lambda body, count: (400, {"error": {"message": "context too long"}}))
    with pytest.raises(RequestRejected, match="HTTP 400 .*context too long") as err:
        engine.generate(requests_for(["hello"]), Sampling())
    assert isinstance(err.value, UserError) and err.value.status == 400
    assert len(stub.bodies) == 1  # never retried


def test_timeouts_and_dropped_connections_are_retried(stub_engine):
    # the slow answer comes 3 s after the 1.5 s timeout; a prompt answer takes milliseconds, even under load
    script = {1: ("sleep", 4.5), 2: "drop"}
    stub, engine = stub_engine(lambda body, count: script.get(count) or ok(body), timeout=1.5, max_retries=3)
    (out,) = engine.generate(requests_for(["hello"]), Sampling())
    assert out.text == "hello | seed 0" and len(stub.bodies) == 3


def test_concurrency_is_limited(stub_engine):
    first_three = threading.Event()

    def respond(body, count):  # the first requests wait until three are in flight together
        if count >= 3:
            first_three.set()
        first_three.wait(30)
        return ok(body)

    stub, engine = stub_engine(respond, concurrency=3)
    out = engine.generate(requests_for([f"p{i}" for i in range(12)]), Sampling())
    assert [c.text for c in out] == [f"p{i} | seed 0" for i in range(12)]
    assert stub.max_in_flight == 3


def test_api_key_comes_from_the_named_variable_and_is_never_stored(stub_engine, tmp_path, monkeypatch):
    secret = "sk-test-5e4c7e7"
    monkeypatch.setenv("SYNPO_TEST_API_KEY", secret)
    stub, engine = stub_engine(api_key_env="SYNPO_TEST_API_KEY")
    engine.generate(requests_for(["hello"]), Sampling())
    assert stub.headers[0]["Authorization"] == f"Bearer {secret}"
    assert secret not in repr(engine)
    assert all(secret.encode() not in p.read_bytes() for p in (tmp_path / "cache").iterdir())

    echo = lambda body, count: (401, {"error": {"message": f"Incorrect API key provided: {secret}"}})
    stub, engine = stub_engine(echo, api_key_env="SYNPO_TEST_API_KEY")
    with pytest.raises(RequestRejected) as err:
        engine.generate(requests_for(["hello"]), Sampling())
    assert secret not in str(err.value) and "HTTP 401" in str(err.value)

    monkeypatch.delenv("SYNPO_TEST_API_KEY")
    with pytest.raises(UserError, match="SYNPO_TEST_API_KEY is not set"):
        stub_engine(api_key_env="SYNPO_TEST_API_KEY")


def test_n_samples_are_separate_requests_with_distinct_seeds(stub_engine):
    stub, engine = stub_engine()
    out = engine.generate(requests_for(["a", "b"]), Sampling(temperature=1.0, n=3, seed=4))
    assert len(stub.bodies) == 6 and all("n" not in b for b in stub.bodies)
    assert len({b["seed"] for b in stub.bodies}) == 6
    assert all(len(c.texts) == 3 and len(set(c.texts)) == 3 for c in out)
    greedy = engine.generate(requests_for(["a", "b"]), Sampling(n=3))
    assert len(stub.bodies) == 8  # greedy: one request per prompt, the answer repeated
    assert all(c.texts == [c.texts[0]] * 3 for c in greedy)


def test_cache_keeps_what_finished_before_a_failure_and_a_rerun_sends_only_the_rest(stub_engine):
    poison = lambda body, count: (400, {"error": {"message": "no"}}) if body["messages"][-1]["content"] == "p5" \
        else ok(body)
    texts = [f"p{i}" for i in range(10)]
    stub, engine = stub_engine(poison, concurrency=1)
    with pytest.raises(RequestRejected):
        engine.generate(requests_for(texts), Sampling(temperature=0.7, seed=1))
    cached = len(engine.cache)
    assert cached >= 5  # p0..p4 finished before p5 failed

    engine.close()
    stub.respond, stub.bodies = (lambda body, count: ok(body)), []  # the server heals
    engine = OpenAIEngine(engine.cfg, model="m")  # a rerun: a new engine on the same cache
    out = engine.generate(requests_for(texts), Sampling(temperature=0.7, seed=1))
    assert len(stub.bodies) == 10 - cached and "p5" in {b["messages"][-1]["content"] for b in stub.bodies}
    assert [c.text.split(" |")[0] for c in out] == texts
    again = engine.generate(requests_for(texts), Sampling(temperature=0.7, seed=1))
    assert again == out and len(stub.bodies) == 10 - cached  # nothing sent twice
    engine.generate(requests_for(texts[:2]), Sampling(temperature=0.7, seed=2))
    assert len(stub.bodies) == 12 - cached  # another seed is another request
    engine.close()


# ---- against a real server: transformers serve on loopback --------------------------------


@pytest.fixture(scope="module")
def server():
    with LocalServer() as s:
        yield s


@pytest.fixture
def live_server(server):
    """The module's server, started again if an earlier test left it killed."""
    if not server.running:
        server.start()
    return server


def benchmark(n: int) -> list[Request]:
    return [Request(r["id"], [{"role": "user", "content": r["prompt"]}])
            for r in read_jsonl(DATA / "benchmark.jsonl")[:n]]


@pytest.fixture(scope="module")
def hf_greedy():
    requests = benchmark(96)
    return {c.id: c for c in HFEngine(str(TINY_MODEL), dtype="float32").generate(requests, Sampling(max_new_tokens=24))}


def served(server, tmp_path, **options) -> OpenAIEngine:
    cfg = EngineConfig(kind="openai", base_url=server.base_url, cache_dir=str(tmp_path / "cache"), **options)
    return OpenAIEngine(cfg, model=str(TINY_MODEL))


def test_greedy_through_transformers_serve_equals_the_hf_engine(live_server, tmp_path, hf_greedy):
    engine = served(live_server, tmp_path, concurrency=4)
    requests = benchmark(16)
    before = live_server.requests_answered()
    out = engine.generate(requests, Sampling(max_new_tokens=24))
    assert out == [hf_greedy[r.id] for r in requests]  # texts, finish reasons, token counts
    assert live_server.requests_answered() - before == 16
    assert engine.generate(requests, Sampling(max_new_tokens=24)) == out
    assert live_server.requests_answered() - before == 16  # the second time from the cache


def test_sampling_through_transformers_serve(live_server, tmp_path):
    engine = served(live_server, tmp_path, extra_body={"generation_config": json.dumps({"do_sample": True})})
    out = engine.generate(benchmark(8), Sampling(temperature=1.5, n=3, seed=3, max_new_tokens=24))
    assert all(len(c.texts) == 3 for c in out) and any(len(set(c.texts)) > 1 for c in out)


def run_stage(engine, requests, shard_dir, errors: list):
    try:
        return generate_sharded(engine, requests, Sampling(max_new_tokens=24), shard_dir, shard_size=16)
    except Exception as e:  # noqa: BLE001
        errors.append(e)


def kill_when_cached(server, engine, count: int) -> int:
    deadline = time.time() + 120
    while len(engine.cache) < count and time.time() < deadline:
        time.sleep(0.01)
    server.kill()
    return len(engine.cache)


@pytest.mark.slow
def test_server_killed_mid_stage_then_a_rerun_sends_only_unfinished_requests(live_server, tmp_path, hf_greedy):
    requests = benchmark(96)
    engine = served(live_server, tmp_path, concurrency=2, max_retries=1, retry_backoff=0.05)
    errors = []
    stage = threading.Thread(target=run_stage, args=(engine, requests, tmp_path / "shards", errors))
    stage.start()
    at_kill = kill_when_cached(live_server, engine, 24)
    stage.join()
    assert len(errors) == 1 and isinstance(errors[0], RetriesExhausted)
    finished = len(engine.cache)
    assert 24 <= at_kill <= finished < 96, "the kill should land mid-stage"
    engine.close()

    live_server.start()  # restarted on the same port
    before = live_server.requests_answered()
    rerun = served(live_server, tmp_path, concurrency=2)
    out = generate_sharded(rerun, requests, Sampling(max_new_tokens=24), tmp_path / "shards", shard_size=16)
    assert live_server.requests_answered() - before == 96 - finished  # only the unfinished ones
    assert rerun.sent == 96 - finished
    assert out == [hf_greedy[r.id] for r in requests]


@pytest.mark.slow
def test_server_restarted_while_the_engine_retries_and_the_stage_completes(live_server, tmp_path, hf_greedy):
    requests = benchmark(96)
    engine = served(live_server, tmp_path, concurrency=2, max_retries=10, retry_backoff=0.25)
    errors, results = [], []
    stage = threading.Thread(target=lambda: results.append(
        run_stage(engine, requests, tmp_path / "shards", errors)))
    stage.start()
    at_kill = kill_when_cached(live_server, engine, 24)
    before = live_server.requests_answered()
    live_server.start()
    stage.join()
    assert not errors and at_kill < 96
    assert results[0] == [hf_greedy[r.id] for r in requests]
    assert live_server.requests_answered() - before <= 96 - at_kill + 2  # + the (at most 2) in flight at the kill


@pytest.mark.slow
def test_tiny_loop_with_responses_served_by_transformers_serve(live_server, tmp_path):
    run_dir = tmp_path / "run"
    before = live_server.requests_answered()
    proc = run_iterate(run_dir, "responses.engine.kind=openai", f"responses.engine.base_url={live_server.base_url}",
                       f"responses.engine.cache_dir={tmp_path / 'cache'}", "responses.engine.concurrency=4",
                       "responses.engine.shard_size=32",
                       """responses.engine.extra_body={generation_config: '{"do_sample": true}'}""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    responses = read_jsonl(run_dir / "round_01" / "responses.jsonl")
    prompts = read_jsonl(run_dir / "round_01" / "prompts.jsonl")
    assert [r["id"] for r in responses] == [p["id"] for p in prompts] and responses
    assert live_server.requests_answered() - before == len(prompts)  # round 1: π_0 answers each prompt once
    assert (run_dir / "round_01" / "eval" / "toy" / "metrics.json").exists()
