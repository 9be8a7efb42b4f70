"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread of the test process."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support import free_port, wait_until


@dataclass
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    content: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.content)


class Receiver:
    """Records every POST and answers with `statuses` in turn, then 200; with `hang`, it reads each
    request and never answers (until it is stopped), as a receiver that has stalled."""

    def __init__(self, statuses: tuple[int, ...] = (), hang: bool = False):
        self.port = free_port()
        self.statuses, self.hang = list(statuses), hang
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dermatriage"

    def start(self) -> "Receiver":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        return wait_until(lambda: len(self.received) >= count and list(self.received), timeout, 0.1,
                          f"{count} webhook requests (got {len(self.received)})")

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                content = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(time.monotonic(), self.path, dict(self.headers), content))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.hang:
                    receiver._released.wait(120)
                    self.close_connection = True
                    return
                answer = b'{"ok": true}' if status < 300 else b'{"error": "test receiver refuses"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler
