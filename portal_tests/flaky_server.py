"""An HTTP server on 127.0.0.1 that misbehaves on demand, for testing downloads.

Each path gets a plan: a list of `Reply`s served in order, the last one repeated. A reply can
wait before responding, cut its body short, trickle it, gzip it, or send an ETag and
Last-Modified and respond with 304 to a request that presents them. The server records every
request's headers and counts the bodies it sent.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """One response. `cut_after` sends that many body bytes under the full Content-Length,
    then closes the connection. `trickle` pauses that many seconds between 1 KB pieces.
    `repeat` sends the body that many times over, without building the whole of it."""

    body: bytes = b""
    status: int = 200
    content_type: str = "text/csv; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut_after: int | None = None
    trickle: float = 0.0
    gzip: bool = False
    repeat: int = 1
    etag: str = ""
    last_modified: str = ""


class FlakyServer:
    def __init__(self) -> None:
        self.plans: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, dict[str, str], float]] = []
        self.bodies_sent: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def plan(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.plans[path] = list(replies)

    def requests_to(self, path: str) -> list[dict[str, str]]:
        return [headers for seen, headers, _ in self.requests if seen == path]

    def next_reply(self, path: str) -> Reply | None:
        with self.lock:
            replies = self.plans.get(path)
            if not replies:
                return None
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
                headers = {key.lower(): value for key, value in self.headers.items()}
                with server.lock:
                    server.requests.append((self.path, headers, time.monotonic()))
                reply = server.next_reply(self.path)
                if reply is None:
                    self.send_error(404)
                    return
                time.sleep(reply.delay)
                if self.not_modified(reply, headers):
                    self.send_response(304)
                    self.end_headers()
                    return
                # A client that gives up closes the socket, which some tests provoke.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_body(reply)

            def not_modified(self, reply: Reply, headers: dict[str, str]) -> bool:
                if reply.etag and headers.get("if-none-match") == reply.etag:
                    return True
                modified = reply.last_modified
                return bool(modified) and headers.get("if-modified-since") == modified

            def send_body(self, reply: Reply) -> None:
                body = gzip.compress(reply.body) if reply.gzip else reply.body
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body) * reply.repeat))
                if reply.gzip:
                    self.send_header("Content-Encoding", "gzip")
                if reply.etag:
                    self.send_header("ETag", reply.etag)
                if reply.last_modified:
                    self.send_header("Last-Modified", reply.last_modified)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()

                sent = body if reply.cut_after is None else body[: reply.cut_after]
                if reply.trickle:
                    for start in range(0, len(sent), 1024):
                        self.wfile.write(sent[start : start + 1024])
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                else:
                    for _ in range(reply.repeat):
                        self.wfile.write(sent)
                self.wfile.flush()
                if sent and reply.status == 200:
                    with server.lock:
                        server.bodies_sent[self.path] += 1
                if reply.cut_after is not None:
                    self.close_connection = True

            def log_message(self, format: str, *args) -> None:
                pass

        return Handler
