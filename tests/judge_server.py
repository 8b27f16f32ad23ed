"""A scripted OpenAI-compatible judge on loopback, for the judged suites' tests.

Real HTTP (`/v1/chat/completions`, ThreadingHTTPServer in a thread). The verdict is a
deterministic function of what the judge is shown, so a test can recompute what every
judgment must be: the winner of a pair is the text with the smaller sha256 (whatever the order
shown), a rating is derived from the hash of the prompt. Asked for logprobs (`logprobs: true,
top_logprobs: k`), it returns OpenAI's `choices[0].logprobs.content` for its first token, with
the AlpacaEval winner's letter at probability `alpaca_confidence(a, b)` and the other letter at
the rest; `logprobs=False` answers like a server without logprobs. Knobs: `malformed(messages)`
makes a verdict unreadable, `slow(messages)` makes the server hold the request until the test
ends (past any client timeout), `fault(messages, attempt)` produces a transport or protocol fault
(see FAULTS), and `fail_after` answers HTTP 503 once that many requests have been answered.
`received`, `answered` (per distinct conversation) and `faults` (per kind) are counted under a
lock, so the counts do not depend on how threads interleave.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTINUE = "continue your judgment and finish by outputting a final verdict label"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key(messages: list[dict]) -> str:
    return sha(json.dumps(messages, sort_keys=True))


def alpaca_outputs(user: str) -> tuple[str, str]:
    a, b = re.findall(r'"output": """(.*?)"""', user, re.S)
    return a, b


def alpaca_confidence(a: str, b: str) -> float:
    """The scripted judge's probability of its AlpacaEval verdict (0.5 - 0.99, the same in either order)."""
    return 0.5 + 0.49 * int(sha(min(a, b) + max(a, b))[:2], 16) / 255


def alpaca_top_logprobs(user: str, k: int) -> list[dict]:
    a, b = alpaca_outputs(user)
    p = alpaca_confidence(a, b)
    first, second = ("m", "M") if sha(a) < sha(b) else ("M", "m")
    top = [{"token": first, "logprob": math.log(p)}, {"token": second, "logprob": math.log(1 - p)},
           {"token": "Both", "logprob": -9.0}, {"token": "Output", "logprob": -11.0}]
    return top[:k]


def arena_answers(user: str) -> tuple[str, str]:
    a = user.split("<|The Start of Assistant A's Answer|>\n")[1].split("\n<|The End of Assistant A's Answer|>")[0]
    b = user.split("<|The Start of Assistant B's Answer|>\n")[1].split("\n<|The End of Assistant B's Answer|>")[0]
    return a, b


def arena_label(a: str, b: str) -> str:
    """The smaller hash wins; strongly when the winner's hash starts with a digit < 5."""
    winner = sha(a) < sha(b)
    strong = (sha(a) if winner else sha(b))[0] in "01234"
    return ("A" if winner else "B") + (">>" if strong else ">") + ("B" if winner else "A")


def mt_rating(user: str) -> int:
    return 1 + int(sha(user)[:4], 16) % 10


def arena_needs_continue(user: str) -> bool:
    """Replies without a label for these games, so the suite must ask the judge to continue."""
    return sha(user)[-1] in "012"


def verdict(messages: list[dict]) -> str:
    """The scripted judge's reply to a conversation."""
    if len(messages) < 2:  # not a judge prompt (synpo's test question before a run starts)
        return "OK"
    user = messages[1]["content"]
    if messages[-1]["content"] == CONTINUE:
        return "My final verdict is: [[" + arena_label(*arena_answers(user)) + "]]"
    if "## Best Model Identifier" in user:
        a, b = alpaca_outputs(user)
        return "m" if sha(a) < sha(b) else "M"
    if "<|User Prompt|>" in user:
        if arena_needs_continue(user):
            return "Both answers have merits; let me compare them in more depth."
        return f"My own answer first. ... My final verdict is: [[{arena_label(*arena_answers(user))}]]"
    return f"The answer is fine. Rating: [[{mt_rating(user)}]]"


FAULTS = ("not_json", "cut", "reset", "slow", "empty_choices", "no_content", "503", "401")


class ScriptedJudge:
    """`fault(messages, attempt)` returns None (answer) or one of FAULTS for that attempt (1, 2, ...
    per conversation): a 200 whose body is not JSON, a body cut off mid-stream, a connection reset,
    no answer until the test ends (past any client timeout), a 200 with empty `choices`, a 200
    whose message has no content, HTTP 503, or HTTP 401 echoing the key (as OpenAI's API does).
    `slow(messages)` is the "slow" fault on every attempt.
    Counting and the decision to answer happen under one lock: `answered` never exceeds `fail_after`."""

    def __init__(self, malformed=None, slow=None, fail_after: int | None = None, fault=None,
                 logprobs: bool = True):
        self.logprobs = logprobs
        self.malformed = malformed or (lambda messages: False)
        slow = slow or (lambda messages: False)
        self.fault = fault or (lambda messages, attempt: "slow" if slow(messages) else None)
        self.fail_after = fail_after
        self.received: Counter = Counter()
        self.answered: Counter = Counter()
        self.faults: Counter = Counter()
        self._lock = threading.Lock()
        self._released = threading.Event()  # set at exit: "slow" requests end with the test
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload, cut: bool = False) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends a TCP RST instead of a FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages = body["messages"]
                with judge._lock:
                    judge.received[key(messages)] += 1
                    fault = judge.fault(messages, judge.received[key(messages)])
                    if fault is None and judge.fail_after is not None and \
                            sum(judge.answered.values()) >= judge.fail_after:
                        fault = "503"
                    if fault is None:
                        judge.answered[key(messages)] += 1
                    else:
                        judge.faults[fault] += 1
                malformed = judge.malformed(messages)
                text = "I think both are good, hard to say." if malformed else verdict(messages)
                choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if body.get("logprobs") and judge.logprobs:
                    if "## Best Model Identifier" in messages[1]["content"] and not malformed:
                        top = alpaca_top_logprobs(messages[1]["content"], body.get("top_logprobs") or 1)
                    else:
                        top = [{"token": text.split()[0], "logprob": -0.1}]
                    choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
                reply = {"choices": [choice], "usage": {"completion_tokens": len(text.split())}}
                try:
                    if fault == "503":
                        self._send(503, {"error": {"message": "overloaded"}})
                    elif fault == "401":
                        key_sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
                        self._send(401, {"error": {"message": f"Incorrect API key provided: {key_sent}"}})
                    elif fault == "not_json":
                        self._send(200, b"<html><body>502 Bad Gateway</body></html>")
                    elif fault == "cut":
                        self._send(200, reply, cut=True)
                    elif fault == "reset":
                        self._reset()
                    elif fault == "slow":
                        judge._released.wait(60)
                        self.close_connection = True
                    elif fault == "empty_choices":
                        self._send(200, {"choices": [], "usage": {"completion_tokens": 0}})
                    elif fault == "no_content":
                        self._send(200, {"choices": [{"message": {"role": "assistant"}, "finish_reason": "stop"}]})
                    else:
                        self._send(200, reply)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
