"""The key that signs the portal's session cookies and CSRF tokens.

There is no default key: a key in the source is a key everyone has, with which a captured cookie can
be re-signed at will. The key is `DERMATRIAGE_SECRET_KEY` when set, else the file `<data dir>/secret_key`,
which `dermatriage ensure-secret-key` (run by scripts/run.sh and by the compose deployment on first
start) fills with a random key, readable by its owner only, and which every later start reuses. A portal
in development mode started some other way makes the file itself on first start; production mode never
makes one (several hosts must share one key, so making it is a deployment step) and refuses to start
without a key, or with a short one.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

FILE_NAME = "secret_key"
MIN_PRODUCTION_LENGTH = 32


class SecretKeyError(RuntimeError):
    """No usable key; the message says what to do."""


def key_path(settings) -> Path:
    return Path(settings.data_dir) / FILE_NAME


def session_secret(settings) -> str:
    """The key the portal signs with: from the environment, else from the key file (made here on first
    start in development mode)."""
    key = settings.secret_key or _read(key_path(settings))
    if not key and not settings.production:
        key = ensure_secret_key(settings)
    if settings.production and len(key) < MIN_PRODUCTION_LENGTH:
        raise SecretKeyError(
            f"DERMATRIAGE_PRODUCTION is set but there is no DERMATRIAGE_SECRET_KEY of {MIN_PRODUCTION_LENGTH} "
            f"characters or more, and no key file {key_path(settings)}: run `dermatriage ensure-secret-key` "
            "once (the compose deployment does), or set DERMATRIAGE_SECRET_KEY.")
    return key


def ensure_secret_key(settings) -> str:
    """The key file's key, making the file with a new random key when there is none."""
    path = key_path(settings)
    key = _read(path)
    if key:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a temporary name, then linked into place: two processes starting at once
    # (gunicorn's workers) never read a half-written key, and the second one keeps the first one's.
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink()
    return _read(path)


def _read(path: Path) -> str:
    """The key in `path`, or "" when there is no such file. A file that others may read is refused:
    whoever can read the key can sign in as anyone."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return ""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretKeyError(f"{path} may be read by others than its owner; `chmod 600 {path}` and start again.")
    key = path.read_text().strip()
    if not key:
        raise SecretKeyError(f"{path} is empty; delete it to have a new key made.")
    return key
