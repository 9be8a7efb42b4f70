"""Content-addressed image store: a file's name is the SHA-256 of its bytes, never a client's name."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a content key: {key!r}")
        # Two levels of fan-out keep directories small with millions of files.
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store bytes under their hash, atomically: readers see the whole file or none of it.

        Returns the key and whether this call created the file (so a failed upload can undo it).
        """
        key = sha256_hex(data)
        target = self.path(key)
        if target.exists():
            return key, False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return key, True

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def files(self):
        """(key or temporary name, path) for everything under the store, including unfinished writes."""
        if not self.root.exists():
            return
        for path in self.root.glob("??/??/*"):
            if path.is_file():
                yield path.name, path

    def delete(self, key: str) -> None:
        """Remove a file no row refers to (used only to undo a store whose row was never committed)."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
