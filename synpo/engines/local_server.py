"""A loopback OpenAI-compatible server (`transformers serve`) for the `openai` engine's tests,
the generation benchmark and CPU experiments.

`transformers serve` (transformers[serving]) loads whichever local model directory a request
names in its `model` field, so one server serves every stage's model by path. Good to know:
it ignores `n` and `logprobs`, and samples only when a request carries
`generation_config: '{"do_sample": true}'` (engine.extra_body); temperature alone does not.

Clients reach it through a small relay in this process, which counts the chat requests the server
answered. The count must not depend on what a transformers release writes to its log (5.25 stopped
writing a line per request), and the relay is also what a crash closes: `kill()` stops the server
and drops every open connection, as a dead server would.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Headers that describe one hop, not the message: the relay answers each request on a connection
# it then closes (HTTP/1.0), so it never forwards these.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection",
                "te", "trailer", "upgrade"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Relay(ThreadingHTTPServer):
    """Forwards every request to the server on `upstream_port`; counts answered chat requests."""

    daemon_threads = True

    def __init__(self, port: int, upstream_port: int, on_answer):
        self.upstream_port, self.on_answer = upstream_port, on_answer
        self.open_sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _RelayHandler)

    def process_request_thread(self, request, client_address):
        with self.lock:
            self.open_sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open_sockets.discard(request)

    def drop_connections(self) -> None:
        """Reset every open client connection, mid-answer or not: what a killed server does."""
        with self.lock:
            sockets = list(self.open_sockets)
        for s in sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                s.shutdown(socket.SHUT_RDWR)


class _RelayHandler(BaseHTTPRequestHandler):
    server: _Relay

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=3600)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            if self.command == "POST" and self.path.rstrip("/").endswith("/chat/completions"):
                self.server.on_answer()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_HEADERS and key.lower() not in ("server", "date"):
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            while chunk := response.read1(65536):  # streamed answers pass through as they come
                self.wfile.write(chunk)
                self.wfile.flush()
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # the server died: the client sees the connection drop
        finally:
            upstream.close()


class LocalServer:
    """`with LocalServer() as server:` ... `server.base_url`; `kill()` / `start()` to crash and restart it."""

    def __init__(self, port: int | None = None, log_path: str | Path | None = None, threads: int = 1):
        self.port = port or free_port()
        self._scratch = tempfile.TemporaryDirectory(prefix="synpo-serve-")
        self.log_path = Path(log_path or Path(self._scratch.name) / "server.log")
        self.threads = threads
        self._proc: subprocess.Popen | None = None
        self._relay: _Relay | None = None
        self._answered = 0
        self._count_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 180) -> LocalServer:
        import httpx

        from synpo.processes import popen_kept

        hub_cache = Path(self._scratch.name) / "hub"  # must exist; nothing is ever downloaded into it
        hub_cache.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache),
               "OMP_NUM_THREADS": str(self.threads)}
        upstream_port = free_port()
        cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
               "serve", "--host", "127.0.0.1", "--port", str(upstream_port), "--device", "cpu"]
        with open(self.log_path, "ab") as log:
            self._proc = popen_kept(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited (code {self._proc.returncode}); log: {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{upstream_port}/v1/models", timeout=2).status_code == 200:
                    self._relay = _Relay(self.port, upstream_port, self._count_answer)
                    threading.Thread(target=self._relay.serve_forever, args=(0.05,), daemon=True).start()
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"transformers serve not ready after {timeout:g} s; log: {self.log_path}")

    def _count_answer(self) -> None:
        with self._count_lock:
            self._answered += 1

    def requests_answered(self) -> int:
        """Chat-completion requests the server has answered over this object's life, restarts included."""
        with self._count_lock:
            return self._answered

    def _close_relay(self) -> None:
        if self._relay is not None:
            self._relay.shutdown()
            self._relay.server_close()  # the port refuses connections from here on
            self._relay.drop_connections()
            self._relay = None

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to open connections."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_relay()

    def stop(self) -> None:
        from synpo.processes import stop

        self._close_relay()
        if self._proc:
            stop(self._proc)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._scratch.cleanup()
