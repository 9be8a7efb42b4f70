"""Fault injection into real processes: a TCP proxy that can cut the database off, a decoder crash; the
photographs the fault tests upload and the record of their figures (the README's reliability table)."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from harness import imagegen
from tests.conftest import ARTIFACTS
from tests.support import free_port
from triage.schema import ImageStatus

POISON_SIDE = 333  # a decoded image of exactly 333 x 333 pixels crashes the worker (see below)

_CRASHING_DECODER = f'''
# Loaded by Python at start-up in a test's worker process only: the decoder aborts the process
# (as a segfaulting codec would) on one recognisable image, whether the worker decodes the photograph
# or reads the portal's working copy of it.
import os
import triage.imaging as imaging
import triage.working_copy as working_copy

_decode, _unpack = imaging.decode_reduced, working_copy.unpack


def _poisoned(pixels):
    if pixels[1] == ({POISON_SIDE}, {POISON_SIDE}):
        os.abort()
    return pixels


imaging.decode_reduced = lambda data, at_least=0: _poisoned(_decode(data, at_least))
working_copy.unpack = lambda blob: _poisoned(_unpack(blob))  # every way the worker gets pixels
'''


def crashing_decoder_path(tmp: Path) -> Path:
    """A folder to put first on a worker's PYTHONPATH so its decoder crashes on poison images."""
    folder = tmp / "crashing-decoder"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(_CRASHING_DECODER)
    return folder


class TcpProxy:
    """Forwards a local port to a server; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        if self._listener:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave it accepting.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def small_photos(n: int, start: int = 0) -> list[tuple[bytes, str]]:
    return [(imagegen.jpeg(start + i, 320, 240), f"img-{start + i:05d}.jpg") for i in range(n)]


def record(fault: str, injected: int, ids, statuses: dict, counts: dict) -> None:
    """Append this run's figures to test-artifacts/reliability.json (the README's reliability table)."""
    final = [statuses.get(i) for i in ids]
    row = {"fault": fault, "injected": injected, "accepted": len(ids),
           "analysed": final.count(ImageStatus.ANALYSED), "failed": final.count(ImageStatus.FAILED),
           "lost": sum(1 for s in final if s not in ImageStatus.FINAL),
           "duplicates": sum(n - 1 for n in counts.values() if n > 1)}
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "reliability.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([r for r in rows if r["fault"] != fault] + [row], indent=1))
