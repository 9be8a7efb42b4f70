"""`dermatriage upload DIR` (or `python -m scripts.upload DIR`): send a folder tree of photographs into
one batch of the portal, resumably.

The run walks the tree, hashes every photograph (SHA-256 of its bytes, as the server does), asks the
server which of them the batch already holds, and sends the rest in parallel requests cut to the
server's limits, retrying transient failures with backoff. The batch chosen for a folder is
remembered in a small state file, so the same command run again after an interruption (Ctrl-C, a
dropped connection, a closed laptop, a killed process) sends only what the batch is missing.

Patients and lesions: a `manifest.csv` at the top of the folder (columns path, patient, lesion,
body_site, and optionally age, sex, fitzpatrick, note; paths relative to the folder), or with
`--layout patient/lesion` the folders `<patient>/<lesion>/<photograph>`, says whose lesion each
photograph shows. Identifiers are the clinic's pseudonyms, never names. The server checks the manifest
(one set of rules for every uploader) before a batch is chosen or a photograph is sent; if anything
is wrong, every problem is listed with its row and nothing is uploaded.

Exit status: 0 when every file is in the batch (accepted, or a duplicate of one that is); 1 when any
file was rejected (by the server, or because it is not a JPEG, PNG or WEBP file) or could not be sent,
or when the manifest has problems (then nothing is sent); 2 when the run could not start (no server,
a refused token, an unknown batch); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import requests

SERVER_ENV, TOKEN_ENV = "DERMATRIAGE_SERVER", "DERMATRIAGE_TOKEN"
DEFAULT_SERVER = "http://127.0.0.1:8000"
# Written by file managers next to photographs; never worth listing. Names starting with a dot
# (.DS_Store, macOS "._" twins, .Trashes on a USB stick) are skipped too, files and folders alike.
SYSTEM_FILES = {"thumbs.db", "desktop.ini"}
TRANSIENT = {429, 500, 502, 503, 504}  # worth another try: busy, restarting, or a proxy in between
MULTIPART_OVERHEAD = 64 * 1024  # headroom under the server's request limit for form headers
NOT_A_PHOTO = "Not a JPEG, PNG or WEBP file; not sent."
MANIFEST = "manifest.csv"  # at the top of the folder
LAYOUT = "patient/lesion"


class Fatal(Exception):
    """The run cannot go on (token refused, batch gone, server unreachable); the message says why."""


class Transient(Exception):
    """A request failed in a way that may pass: connection lost, timeout, server busy."""


class ManifestProblems(Exception):
    """The folder's manifest (or its folder convention) is wrong: every problem, as the server words it."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problems")
        self.problems = problems


# --------------------------------------------------------------------------- the folder

@dataclass
class LocalFile:
    rel: str  # path from the folder, its own name first, with "/": the name the server shows
    path: Path
    size: int
    mtime_ns: int
    sha256: str = ""


@dataclass
class Outcome:
    status: str  # accepted | duplicate | rejected | failed
    how: str  # sent (in this run) | already (in the batch, or rejected, before this run) | local (never sent)
    reason: str = ""
    image_id: int | None = None
    duplicate_of: str = ""


def walk(root: Path, extensions: tuple[str, ...], excludes: list[str]) -> tuple[list[LocalFile], dict[str, str]]:
    """(photographs to send, {other file: why it is not sent}) under root, sorted by name. Names start with the folder's
    own name (`clinic-day/room 2/a.jpg`), as a browser names the files of a folder chosen or dropped,
    so the portal shows the same names whichever way a folder came, and either can resume the other.
    Symlinked folders are not followed, so a link cannot pull a whole disk into the batch."""
    photos, others = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            inside = path.relative_to(root).as_posix()
            rel = f"{root.name}/{inside}"
            if name.startswith(".") or name.lower() in SYSTEM_FILES or any(fnmatch(inside, p) for p in excludes):
                continue
            try:
                info = path.stat()
            except OSError as exc:  # a broken link, or a file removed while we walk
                others[rel] = f"Could not be read ({exc.strerror}); not sent."
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if path.suffix.lower() in extensions:
                photos.append(LocalFile(rel, path, info.st_size, info.st_mtime_ns))
            else:
                others[rel] = NOT_A_PHOTO
    photos.sort(key=lambda f: f.rel)
    return photos, dict(sorted(others.items()))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # unreadable: it is reported all the same
        return 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- what a run remembers

def default_state_path(server: str, folder: Path) -> Path:
    """One state file per (server, folder), outside the folder: a clinic's photo folder may be
    read-only, and nothing of ours should end up in it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(f"{server}\n{folder}".encode()).hexdigest()[:20]
    return cache / "dermatriage" / "uploads" / f"{key}.json"


class ResumeState:
    """The batch a folder goes into, and per file its size, modification time, hash and the server's
    verdict. The server decides what is missing; the state only saves re-hashing unchanged files and
    re-sending files the server has already rejected.

    A snapshot is written at the start and end of a run; in between, each answer is appended to a
    journal beside it, so recording an answer costs the same with ten files or ten thousand."""

    def __init__(self, path: Path, server: str, folder: Path):
        self.path, self.server, self.folder = path, server, str(folder)
        self.journal = path.with_name(path.name + ".journal")
        self.batch_id: int | None = None
        self.files: dict[str, dict] = {}
        self._lock = threading.Lock()
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if saved.get("server") == server and saved.get("folder") == self.folder:
            self.batch_id, self.files = saved.get("batch_id"), saved.get("files", {})
            self._replay()

    def _replay(self) -> None:
        try:
            lines = self.journal.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                rel, entry = json.loads(line)
            except ValueError:
                break  # the last line of a killed run may be cut short
            self.files[rel] = entry

    def use_batch(self, batch_id: int) -> None:
        if batch_id != self.batch_id:  # verdicts were about another batch; hashes stay good
            for entry in self.files.values():
                entry.pop("status", None)
                entry.pop("reason", None)
        self.batch_id = batch_id

    def cached_hash(self, f: LocalFile) -> str | None:
        entry = self.files.get(f.rel)
        if entry and entry.get("size") == f.size and entry.get("mtime_ns") == f.mtime_ns:
            return entry.get("sha256")
        return None

    def remember(self, f: LocalFile, outcome: Outcome | None = None) -> None:
        with self._lock:
            entry = self.files.get(f.rel, {})
            if entry.get("sha256") != f.sha256:
                entry = {}  # another file under that name now: the old verdict was not about it
            entry.update(size=f.size, mtime_ns=f.mtime_ns, sha256=f.sha256)
            if outcome and outcome.status in ("accepted", "duplicate", "rejected"):
                entry.update(status=outcome.status, reason=outcome.reason)
            self.files[f.rel] = entry

    def record(self, done: list[LocalFile]) -> None:
        """Append these files' entries to the journal (after `remember`)."""
        with self._lock:
            lines = "".join(json.dumps([f.rel, self.files[f.rel]]) + "\n" for f in done)
            with open(self.journal, "a") as fh:
                fh.write(lines)

    def keep_only(self, files: list[LocalFile]) -> None:
        """Forget files no longer in the folder, so the state does not grow for ever."""
        names = {f.rel for f in files}
        with self._lock:
            self.files = {rel: entry for rel, entry in self.files.items() if rel in names}

    def rejected_before(self, f: LocalFile) -> str | None:
        entry = self.files.get(f.rel) or {}
        if entry.get("sha256") == f.sha256 and entry.get("status") == "rejected":
            return entry.get("reason") or "Rejected by the server."
        return None

    def save(self) -> None:
        """Atomically: a run killed while saving leaves the previous state, never half a file."""
        with self._lock:
            text = json.dumps({"server": self.server, "folder": self.folder, "batch_id": self.batch_id,
                               "files": self.files})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, self.path)
            self.journal.unlink(missing_ok=True)  # everything in it is in the snapshot now


# --------------------------------------------------------------------------- the server

class Portal:
    """The portal's JSON API with an API token. One HTTP session per thread (requests' sessions are
    not thread-safe), each keeping its connection alive between requests."""

    def __init__(self, server: str, token: str, attempts: int = 6, timeout: float = 300):
        self.server, self.token = server.rstrip("/"), token
        self.attempts, self.timeout = attempts, timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            session.headers.update({"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                                    "User-Agent": "dermatriage-upload"})
            self._local.session = session
        return self._local.session

    def once(self, method: str, path: str, **kwargs) -> requests.Response:
        """One attempt. Transient failures raise Transient; a refused token or a missing batch Fatal."""
        try:
            response = self._session().request(method, self.server + path, timeout=(10, self.timeout), **kwargs)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in TRANSIENT:
            raise Transient(f"HTTP {response.status_code}: {_error_text(response)}")
        if response.status_code in (401, 403):
            raise Fatal(f"The server refused the API token (HTTP {response.status_code}: {_error_text(response)}). "
                        f"Create one under Account in the portal, or with `dermatriage create-token`.")
        return response

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        """`once`, retried with backoff while the failure is transient."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self.once(method, path, **kwargs)
            except Transient as exc:
                if attempt == self.attempts:
                    raise Fatal(f"{self.server}{path} kept failing: {exc}") from None
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def limits(self) -> dict:
        return _json_or_fatal(self.call("GET", "/api/uploads/limits"))

    def batch(self, batch_id: int) -> dict:
        response = self.call("GET", f"/api/batches/{batch_id}?images=0")
        if response.status_code == 404:
            raise Fatal(f"Batch {batch_id} does not exist on {self.server}.")
        return _json_or_fatal(response)

    def create_batch(self, name: str, site: int | None = None) -> dict:
        """A new empty batch; at `site` when given (the server requires it of a user with several sites)."""
        body = {"name": name} if site is None else {"name": name, "site": site}
        return _json_or_fatal(self.call("POST", "/api/batches", json=body))

    def present(self, batch_id: int, hashes: list[str], chunk: int) -> dict[str, dict]:
        """{sha256: {"image_id", "name"}} for the hashes the batch already holds."""
        found: dict[str, dict] = {}
        for start in range(0, len(hashes), chunk):
            response = self.call("POST", f"/api/batches/{batch_id}/missing", json={"sha256": hashes[start:start + chunk]})
            found.update(_json_or_fatal(response)["present"]["sha256"])
        return found

    def report_skipped(self, batch_id: int, files: list[dict], chunk: int) -> None:
        """Tell the batch which files of the folder were left out and why, so whoever opens it sees them."""
        for start in range(0, len(files), chunk):
            _json_or_fatal(self.call("POST", f"/api/batches/{batch_id}/skipped", json={"files": files[start:start + chunk]}))

    def check_manifest(self, paths: list[str], text: str | None, layout: str | None, site: int | None = None,
                       batch: int | None = None) -> dict:
        """The server's reading of the manifest (against the lesions recorded at `site`, when given):
        {path in the folder: fields}; raises ManifestProblems."""
        body = {"files": paths, "manifest": text, "layout": layout}
        if batch is not None:  # added to an existing batch: checked at that batch's site
            body["batch"] = batch
        elif site is not None:
            body["site"] = site
        response = self.call("POST", "/api/uploads/manifest", json=body)
        if response.status_code == 422:
            raise ManifestProblems([p["text"] for p in response.json()["problems"]])
        return _json_or_fatal(response)["files"]

    def send(self, batch_id: int, files: list[tuple[LocalFile, bytes]],
             fields: dict[str, dict] | None = None) -> requests.Response:
        parts = [("files", (f.rel, data, "application/octet-stream")) for f, data in files]
        rows = [{"path": f.rel, **fields[f.rel]} for f, _ in files if fields and f.rel in fields]
        if rows:  # each file's patient, lesion and context, by its name as sent
            parts.append(("manifest", (None, json.dumps(rows))))
        return self.once("POST", f"/api/batches/{batch_id}/images", files=parts)


def backoff(attempt: int) -> float:
    """Seconds before try `attempt + 1`: doubling from half a second up to 30, with jitter so that
    several uploaders that failed together do not come back together."""
    return min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error") or response.reason)
    except (ValueError, AttributeError):  # not JSON, or not the portal's {"error": ...}
        return response.reason or "no reason given"


def _json_or_fatal(response: requests.Response) -> dict:
    if not response.ok:
        raise Fatal(f"{response.request.method} {response.url}: HTTP {response.status_code}: {_error_text(response)}")
    return response.json()


# --------------------------------------------------------------------------- progress

class Progress:
    """One line on standard error: redrawn in place on a terminal, a line every few seconds in a log."""

    def __init__(self, total_files: int, total_bytes: int, enabled: bool = True):
        self.total_files, self.total_bytes = total_files, total_bytes
        self.done_files = self.done_bytes = 0
        self.counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "failed": 0}
        self.retries = 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self._shown = 0.0
        self._lock = threading.Lock()

    def add(self, outcomes: list[Outcome], nbytes: int) -> None:
        with self._lock:
            self.done_files += len(outcomes)
            self.done_bytes += nbytes
            for outcome in outcomes:
                self.counts[outcome.status] += 1
            self._show()

    def retried(self) -> None:
        with self._lock:
            self.retries += 1
            self._show()

    def finish(self) -> None:
        with self._lock:
            self._show(final=True)

    def _show(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._shown < (0.1 if self.tty else 5.0)):
            return
        self._shown = now
        share = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        bar = "#" * int(share * 30)
        rate = self.done_files / max(now - self.started, 1e-6)
        line = (f"[{bar:<30}] {share:4.0%}  {self.done_files}/{self.total_files} files  "
                f"{self.done_bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB  {rate:.0f} files/s  "
                + ", ".join(f"{n} {k}" for k, n in self.counts.items())
                + (f", {self.retries} retries" if self.retries else ""))
        sys.stderr.write(("\r" + line + "\033[K" + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------- the run

@dataclass
class Run:
    args: argparse.Namespace
    portal: Portal
    state: ResumeState
    limits: dict
    batch_id: int = 0
    fields: dict[str, dict] = field(default_factory=dict)  # by file name as sent: what the manifest says
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    sent_files: int = 0
    sent_bytes: int = 0
    requests: int = 0
    cpu_seconds: float = 0.0  # of this process while sending (the benchmark reports it)
    progress: Progress | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    fatal: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(self, f: LocalFile, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes[f.rel] = outcome
        self.state.remember(f, outcome)


def hash_all(run: Run, photos: list[LocalFile]) -> None:
    """SHA-256 of every photograph; unchanged files (same size and time) reuse the last run's."""
    todo = []
    for f in photos:
        f.sha256 = run.state.cached_hash(f) or ""
        if not f.sha256:
            todo.append(f)
    if todo and not run.args.quiet:
        print(f"hashing {len(todo)} files...", file=sys.stderr, flush=True)
    # hashlib lets go of the interpreter lock on large buffers, so threads hash side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for f, digest in zip(todo, pool.map(lambda f: sha256_of(f.path), todo)):
            f.sha256 = digest
    run.state.keep_only(photos)
    for f in photos:
        run.state.remember(f)


def plan(run: Run, photos: list[LocalFile]) -> tuple[list[LocalFile], list[tuple[LocalFile, LocalFile]]]:
    """Decide, without sending anything, every file that need not be sent; return the files to send
    and the local copies (same bytes as an earlier file in the folder), which follow their original."""
    first: dict[str, LocalFile] = {}
    copies = []
    for f in photos:
        if f.sha256 in first:
            copies.append((f, first[f.sha256]))
        else:
            first[f.sha256] = f
    originals = list(first.values())
    present = run.portal.present(run.batch_id, [f.sha256 for f in originals], run.limits["max_lookup"])
    to_send = []
    for f in originals:
        earlier = present.get(f.sha256)
        rejected = None if run.args.retry_rejected else run.state.rejected_before(f)
        if earlier and earlier["name"] == f.rel:
            run.settle(f, Outcome("accepted", "already", image_id=earlier["image_id"]))
        elif earlier:
            run.settle(f, Outcome("duplicate", "already", "The same file is already in this batch.",
                                  earlier["image_id"], earlier["name"]))
        elif rejected:
            run.settle(f, Outcome("rejected", "already", rejected))
        elif f.size > run.limits["max_file_bytes"]:
            limit_mb = run.limits["max_file_bytes"] / (1024 * 1024)
            run.settle(f, Outcome("rejected", "local", f"Larger than the server's limit of {limit_mb:.0f} MB; not sent."))
        else:
            to_send.append(f)
    return to_send, copies


def cut_into_requests(files: list[LocalFile], most_files: int, most_bytes: int) -> list[list[LocalFile]]:
    """Consecutive groups within both limits; a file too big for any request still goes alone (the
    server then answers for it)."""
    groups: list[list[LocalFile]] = []
    current: list[LocalFile] = []
    size = 0
    for f in files:
        cost = f.size + 512 + len(f.rel.encode())  # the file and its part headers
        if current and (len(current) >= most_files or size + cost > most_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(f)
        size += cost
    if current:
        groups.append(current)
    return groups


def send_group(run: Run, group: list[LocalFile]) -> None:
    """Send one request's files, retrying transient failures. Before a retry, ask what the batch
    now holds: the failed attempt may have reached the server after all."""
    attempt = 0
    while group and not run.stop.is_set():
        contents, group = _read(run, group)
        if not group:
            return
        with run._lock:  # every try counts: a try whose answer is lost has still been sent
            run.requests += 1
            run.sent_files += len(group)
            run.sent_bytes += sum(f.size for f in group)
        try:
            response = run.portal.send(run.batch_id, contents, run.fields)
        except Transient as exc:
            attempt += 1
            if attempt >= run.args.attempts:
                return _settle_group(run, group, Outcome("failed", "local", f"Could not be sent: {exc}"))
            run.progress.retried()
            if run.stop.wait(backoff(attempt)):
                return
            group = _still_missing(run, group)
            continue
        if response.status_code == 413 and len(group) > 1:  # a proxy's limit lower than the server's
            half = len(group) // 2
            send_group(run, group[:half])
            group = group[half:]
            continue
        if not response.ok:
            reason = _error_text(response)
            status = "rejected" if response.status_code == 413 else "failed"
            return _settle_group(run, group, Outcome(status, "sent", f"HTTP {response.status_code}: {reason}"))
        try:
            results = response.json()["files"]
        except (ValueError, KeyError, TypeError):  # e.g. a proxy's page: not the portal answering
            return _settle_group(run, group, Outcome("failed", "sent", "The server's answer was not understood."))
        for f, result in zip(group, results):
            run.settle(f, Outcome(result["status"], "sent", result.get("reason", ""), result.get("image_id")))
        _checkpoint(run, group)
        return


def _read(run: Run, group: list[LocalFile]) -> tuple[list[tuple[LocalFile, bytes]], list[LocalFile]]:
    """Each file's bytes, read now (not all at the start, so memory holds only requests in flight).
    A file that has gone or changed since it was hashed fails alone: its hash no longer says what is sent."""
    contents = []
    for f in group:
        try:
            data = f.path.read_bytes()
        except OSError as exc:
            run.settle(f, Outcome("failed", "local", f"Could not be read: {exc.strerror}."))
            _checkpoint(run, [f])
            continue
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            run.settle(f, Outcome("failed", "local", "Changed while the upload ran; run the upload again."))
            _checkpoint(run, [f])
            continue
        contents.append((f, data))
    return contents, [f for f, _ in contents]


def _still_missing(run: Run, group: list[LocalFile]) -> list[LocalFile]:
    try:
        present = run.portal.present(run.batch_id, [f.sha256 for f in group], run.limits["max_lookup"])
    except Fatal:
        return group  # the server is still unwell: try the whole group again
    arrived = [f for f in group if f.sha256 in present]
    for f in arrived:
        earlier = present[f.sha256]
        run.settle(f, Outcome("accepted", "sent", image_id=earlier["image_id"]) if earlier["name"] == f.rel else
                   Outcome("duplicate", "sent", "The same file is already in this batch.", earlier["image_id"],
                           earlier["name"]))
    if arrived:
        _checkpoint(run, arrived)
    return [f for f in group if f.sha256 not in present]


def _settle_group(run: Run, group: list[LocalFile], outcome: Outcome) -> None:
    for f in group:
        run.settle(f, Outcome(outcome.status, outcome.how, outcome.reason))
    _checkpoint(run, group)


def _checkpoint(run: Run, done: list[LocalFile]) -> None:
    run.state.record(done)
    run.progress.add([run.outcomes[f.rel] for f in done], sum(f.size for f in done))


def send_all(run: Run, groups: list[list[LocalFile]]) -> None:
    """Groups go out `--parallel` at a time. On Ctrl-C or a fatal error nothing new starts, and
    requests already in flight finish, so their answers are recorded for the next run."""
    pool = ThreadPoolExecutor(max_workers=run.args.parallel)
    try:
        for future in as_completed([pool.submit(_guarded, run, group) for group in groups]):
            future.result()
            if run.fatal:
                break
    finally:
        run.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _guarded(run: Run, group: list[LocalFile]) -> None:
    if run.stop.is_set():
        return
    try:
        send_group(run, group)
    except Fatal as exc:
        run.fatal = str(exc)
        run.stop.set()


def follow_copies(run: Run, copies: list[tuple[LocalFile, LocalFile]], others: dict[str, str]) -> None:
    """Local copies take their original's fate; other files are listed as not sent."""
    for copy, original in copies:
        done = run.outcomes.get(original.rel)
        if done is None:
            continue  # the run stopped before the original was sent
        if done.status in ("accepted", "duplicate"):
            run.settle(copy, Outcome("duplicate", "local", "The same file is already in this batch.",
                                     done.image_id, done.duplicate_of or original.rel))
        else:
            run.settle(copy, Outcome(done.status, "local", f"Same file as {original.rel}: {done.reason}"))
    for rel, reason in others.items():
        run.outcomes[rel] = Outcome("rejected", "local", reason)


# --------------------------------------------------------------------------- summary

def summary(run: Run, elapsed: float) -> str:
    counts = _counts(run)
    already = sum(1 for o in run.outcomes.values() if o.status == "accepted" and o.how == "already")
    lines = [f"Batch #{run.batch_id}: {run.portal.server}/batches/{run.batch_id}",
             f"  {counts['accepted']} accepted ({counts['accepted'] - already} in this run, {already} already in the batch)",
             f"  {counts['duplicate']} duplicate", f"  {counts['rejected']} rejected", f"  {counts['failed']} failed"]
    for status in ("duplicate", "rejected", "failed"):
        listed = [(rel, o) for rel, o in sorted(run.outcomes.items()) if o.status == status]
        if listed:
            lines.append(f"{status.capitalize()}:")
            for rel, o in listed[:50]:
                same = f"same file as {o.duplicate_of or f'image #{o.image_id}'}"
                lines.append(f"  {rel}: " + (same if status == "duplicate" else o.reason))
            if len(listed) > 50:
                lines.append(f"  ... and {len(listed) - 50} more (--report FILE lists every file)")
    rate = run.sent_files / elapsed if elapsed > 0 else 0.0
    lines.append(f"Sent {run.sent_files} files ({run.sent_bytes / 1e6:.1f} MB) in {run.requests} requests, "
                 f"{elapsed:.1f} s ({rate:.0f} files/s).")
    return "\n".join(lines)


def _counts(run: Run) -> dict[str, int]:
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "failed": 0}
    for outcome in run.outcomes.values():
        counts[outcome.status] += 1
    return counts


def report(run: Run, started: float, upload_started: float, finished: float) -> dict:
    return {"server": run.portal.server, "folder": run.state.folder, "batch_id": run.batch_id,
            "batch_url": f"{run.portal.server}/batches/{run.batch_id}", "counts": _counts(run),
            "sent_files": run.sent_files, "sent_bytes": run.sent_bytes, "requests": run.requests,
            "retries": run.progress.retries if run.progress else 0, "cpu_seconds_sending": run.cpu_seconds,
            "started_at": started, "upload_started_at": upload_started, "finished_at": finished,
            "files": [{"path": rel, "status": o.status, "how": o.how, "reason": o.reason or None,
                       "image_id": o.image_id, "duplicate_of": o.duplicate_of or None}
                      for rel, o in sorted(run.outcomes.items())]}


# --------------------------------------------------------------------------- entry point

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dermatriage upload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the folder to upload (sub-folders included)")
    parser.add_argument("--server", default=os.environ.get(SERVER_ENV, DEFAULT_SERVER),
                        help=f"portal address (default: ${SERVER_ENV} or {DEFAULT_SERVER})")
    parser.add_argument("--token-file", type=Path,
                        help=f"file holding the API token (default: ${TOKEN_ENV}); "
                             "create a token under Account in the portal or with `dermatriage create-token`")
    parser.add_argument("--token", help="the API token itself (visible to other users in the process list; "
                                        f"prefer ${TOKEN_ENV} or --token-file)")
    parser.add_argument("--batch", type=int, help="add to this batch (default: the batch this folder went into "
                                                  "before, else a new one)")
    parser.add_argument("--new-batch", action="store_true", help="start a new batch even if the folder went into one")
    parser.add_argument("--name", help="name of a new batch (default: the folder's name)")
    parser.add_argument("--site", type=int, help="the site (its number) of a new batch; needed when your user "
                                                 "belongs to several sites, else your only site")
    parser.add_argument("--parallel", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--files-per-request", type=int, default=20, help="most files in one request (default 20; "
                                                                          "the server's limit caps it)")
    parser.add_argument("--request-mb", type=float, default=32, help="most megabytes in one request (default 32)")
    parser.add_argument("--attempts", type=int, default=6, help="tries per request before its files count as "
                                                                "failed (default 6, backing off up to 30 s)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="skip files whose relative path matches this glob (repeatable), e.g. '*.txt'")
    parser.add_argument("--retry-rejected", action="store_true", help="send again files the server rejected before")
    parser.add_argument("--layout", choices=[LAYOUT], help=f"the folders are <patient>/<lesion>/<photograph> (instead "
                                                           f"of a {MANIFEST}); identifiers are pseudonyms, never names")
    parser.add_argument("--state", type=Path, help="resume state file (default: one per server and folder "
                                                   "under ~/.cache/dermatriage/uploads)")
    parser.add_argument("--report", type=Path, help="write every file's outcome as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.new_batch and args.batch:
        parser.error("--batch and --new-batch exclude each other")
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if min(args.parallel, args.files_per_request, args.attempts) < 1 or args.request_mb <= 0:
        parser.error("--parallel, --files-per-request, --attempts and --request-mb must be positive")
    return args


def read_token(args: argparse.Namespace) -> str:
    if args.token:
        return args.token.strip()
    if args.token_file:
        try:
            return args.token_file.read_text().strip()
        except OSError as exc:
            raise Fatal(f"Cannot read the token file {args.token_file}: {exc.strerror}.") from None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise Fatal(f"No API token: set ${TOKEN_ENV}, or pass --token-file. Create one under Account in the "
                    "portal, or with `dermatriage create-token --username <you>`.")
    return token


def choose_batch(run: Run) -> None:
    args, state = run.args, run.state
    if args.batch:
        run.batch_id = args.batch
        run.portal.batch(args.batch)  # fails clearly if there is no such batch
    elif state.batch_id and not args.new_batch:
        run.batch_id = state.batch_id
        run.portal.batch(state.batch_id)
    else:
        run.batch_id = run.portal.create_batch(args.name or args.folder.resolve().name, args.site)["batch_id"]
    state.use_batch(run.batch_id)
    state.save()  # from here on, an interrupted run comes back to this batch


def read_manifest(run: Run, folder: Path, photos: list[LocalFile], others: dict[str, str]) -> dict[str, dict]:
    """{file name as sent: fields} from the folder's manifest.csv or its folder convention, as the server
    reads them, before anything else happens; {} when the folder has neither. The manifest itself is
    not a photograph left out: it is taken out of the other files."""
    path = folder / MANIFEST
    text = None
    if path.is_file():
        others.pop(f"{folder.name}/{MANIFEST}", None)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no column name
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestProblems([f"{MANIFEST} cannot be read as UTF-8 text ({exc})."]) from None
    if text is None and not run.args.layout:
        return {}
    inside = {f.rel.split("/", 1)[1]: f.rel for f in photos}  # the paths the manifest names
    fields = run.portal.check_manifest(sorted(inside), text, run.args.layout, run.args.site, run.args.batch)
    return {inside[p]: f for p, f in fields.items()}


def upload(args: argparse.Namespace) -> int:
    started = time.time()
    folder = args.folder.resolve()
    server = args.server.rstrip("/")
    portal = Portal(server, read_token(args), attempts=args.attempts)
    limits = portal.limits()
    state = ResumeState(args.state or default_state_path(server, folder), server, folder)
    run = Run(args, portal, state, limits)
    photos, others = walk(folder, tuple(limits["extensions"]), args.exclude)
    run.fields = read_manifest(run, folder, photos, others)
    hash_all(run, photos)
    choose_batch(run)
    to_send, copies = plan(run, photos)
    groups = cut_into_requests(to_send, min(args.files_per_request, limits["max_files_per_request"]),
                               min(int(args.request_mb * 1024 * 1024), limits["max_request_bytes"]) - MULTIPART_OVERHEAD)
    if not args.quiet:
        print(f"{len(photos)} photographs and {len(others)} other files in {folder}; batch #{run.batch_id}; "
              f"{len(to_send)} to send", file=sys.stderr, flush=True)
    run.progress = Progress(len(to_send), sum(f.size for f in to_send), enabled=bool(to_send) and not args.quiet)
    upload_started, cpu_started = time.time(), time.process_time()
    try:
        send_all(run, groups)
    finally:
        state.save()
    run.progress.finish()
    finished, run.cpu_seconds = time.time(), time.process_time() - cpu_started
    if run.fatal:
        raise Fatal(run.fatal)
    follow_copies(run, copies, others)
    state.save()
    if others:
        portal.report_skipped(run.batch_id, [{"name": rel, "size": _size(folder.parent / rel), "reason": reason}
                                             for rel, reason in others.items()], limits["max_lookup"])
    print(summary(run, finished - upload_started))
    if args.report:
        args.report.write_text(json.dumps(report(run, started, upload_started, finished), indent=1))
    counts = _counts(run)
    return 1 if counts["rejected"] or counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return upload(args)
    except Fatal as exc:
        print(f"dermatriage upload: {exc}", file=sys.stderr)
        return 2
    except ManifestProblems as exc:
        source = f"the {LAYOUT} folders" if args.layout else MANIFEST
        print(f"dermatriage upload: {source}: {len(exc.problems)} problem(s); nothing was uploaded.", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to send what is missing", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
