"""Content-addressed image store: a file's name is the SHA-256 of its bytes, never a client's name."""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{64}$")
# A working copy is named for its photograph's key with this suffix (ImageStore only: over S3 a second
# object per photograph would cost a request each way, more than the decode it saves).
WORKING_SUFFIX = ".work"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    """Files under a folder: a local disk, or a shared filesystem mounted on every host."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a content key: {key!r}")
        # Two levels of fan-out keep directories small with millions of files.
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes, key: str | None = None, working: bytes | None = None) -> tuple[str, bool]:
        """Store bytes under their hash, atomically: readers see the whole file or none of it.

        `key` is their SHA-256 when the caller has it already (an upload is hashed once). `working` is
        the photograph's working copy (triage.working_copy), kept beside it for the worker. Returns the
        key and whether this call created the file (so a failed upload can undo it).
        """
        key = key or sha256_hex(data)
        target = self.path(key)
        created = not target.exists()
        if created:
            _write_atomically(target, data, durable=True)
        if working is not None:
            # A cache: not forced to disk, as a lost copy costs only a decode.
            _write_atomically(self.working_path(key), working, durable=False)
        return key, created

    def working_path(self, key: str) -> Path:
        return self.path(key).with_name(key + WORKING_SUFFIX)

    def get_working(self, key: str) -> bytes | None:
        """The working copy kept beside `key`'s file, or None."""
        try:
            return self.working_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def drop_working(self, key: str) -> None:
        self.working_path(key).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def entries(self):
        """(name, modified time) of everything stored, unfinished writes included (for the sweeper)."""
        if not self.root.exists():
            return
        for path in self.root.glob("??/??/*"):
            try:
                info = path.stat()
            except FileNotFoundError:  # an unfinished write renamed, or a file removed, since the listing
                continue
            if stat.S_ISREG(info.st_mode):
                yield path.name, info.st_mtime

    def remove(self, name: str) -> None:
        """Remove an entry found by `entries`, a content key or an unfinished write."""
        if _KEY.match(name):
            self.delete(name)
            return
        for path in self.root.glob(f"??/??/{name}"):
            path.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        """Remove a file no row refers to, and its working copy (used only to undo a store whose row
        was never committed)."""
        self.path(key).unlink(missing_ok=True)
        self.drop_working(key)


def _write_atomically(target: Path, data: bytes, durable: bool) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    except FileNotFoundError:  # the first file of its folder (mkdir on every put cost 0.26 ms of CPU)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        # The new name must be on disk too before the caller commits a row that refers to it: the
        # file's own fsync does not cover its folder's entry (POSIX; ext4 would write it with its
        # next journal commit, up to seconds later).
        _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3ImageStore:
    """The same store in an S3-compatible bucket (AWS S3, MinIO, Ceph...), for hosts without a shared
    filesystem. Credentials come from the usual AWS variables or instance roles, never from settings."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        import boto3

        parts = url.removeprefix("s3://").split("/", 1)
        self.bucket = parts[0]
        self.prefix = (parts[1].strip("/") + "/") if len(parts) > 1 and parts[1].strip("/") else ""
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None)

    def _name(self, key: str) -> str:
        if not _KEY.match(key):
            raise ValueError(f"not a content key: {key!r}")
        return self.prefix + key

    def put(self, data: bytes, key: str | None = None, working: bytes | None = None) -> tuple[str, bool]:
        key = key or sha256_hex(data)  # no working copy kept here (see WORKING_SUFFIX)
        if self.exists(key):
            return key, False
        # An S3 PUT is atomic: readers see the whole object or none of it.
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        return key, True

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def get_working(self, key: str) -> None:
        return None

    def drop_working(self, key: str) -> None:
        pass

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def entries(self):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix):], obj["LastModified"].timestamp()

    def remove(self, name: str) -> None:
        self.delete(name)


def open_store(settings) -> ImageStore | S3ImageStore:
    """The store the settings name: an s3:// URL, else the image folder."""
    if settings.image_store_url:
        return S3ImageStore(settings.image_store_url, settings.s3_endpoint_url)
    return ImageStore(settings.image_store)
