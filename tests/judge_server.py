"""A scripted OpenAI-compatible judge on loopback, for the judged suites' tests.

Real HTTP (`/v1/chat/completions`, ThreadingHTTPServer in a thread). The verdict is a
deterministic function of what the judge is shown, so a test can recompute what every
judgment must be: the winner of a pair is the text with the smaller sha256 (whatever the order
shown), a rating is derived from the hash of the prompt. Asked for logprobs (`logprobs: true,
top_logprobs: k`), it returns OpenAI's `choices[0].logprobs.content` for its first token, with
the AlpacaEval winner's letter at probability `alpaca_confidence(a, b)` and the other letter at
the rest. Knobs: `logprobs=False` answers like a server without logprobs, `malformed(messages)` makes a
reply unreadable, `slow(messages)` makes the server sleep past the client's timeout, and
`fail_after` answers HTTP 503 once that many requests have been answered. `received` and
`answered` count requests per distinct conversation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
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


class ScriptedJudge:
    def __init__(self, malformed=None, slow=None, fail_after: int | None = None, slow_seconds: float = 3.0,
                 logprobs: bool = True):
        self.logprobs = logprobs
        self.malformed = malformed or (lambda messages: False)
        self.slow = slow or (lambda messages: False)
        self.fail_after, self.slow_seconds = fail_after, slow_seconds
        self.received: Counter = Counter()
        self.answered: Counter = Counter()
        self._lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages = body["messages"]
                with judge._lock:
                    judge.received[key(messages)] += 1
                    refuse = judge.fail_after is not None and sum(judge.answered.values()) >= judge.fail_after
                if refuse:
                    return self._send(503, {"error": {"message": "overloaded"}})
                if judge.slow(messages):
                    time.sleep(judge.slow_seconds)
                malformed = judge.malformed(messages)
                text = "I think both are good, hard to say." if malformed else verdict(messages)
                choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if body.get("logprobs") and judge.logprobs:
                    if "## Best Model Identifier" in messages[1]["content"] and not malformed:
                        top = alpaca_top_logprobs(messages[1]["content"], body.get("top_logprobs") or 1)
                    else:
                        top = [{"token": text.split()[0], "logprob": -0.1}]
                    choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
                try:
                    self._send(200, {"choices": [choice], "usage": {"completion_tokens": len(text.split())}})
                except (BrokenPipeError, ConnectionResetError):
                    return
                with judge._lock:
                    judge.answered[key(messages)] += 1

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
        self._server.shutdown()
        self._server.server_close()
