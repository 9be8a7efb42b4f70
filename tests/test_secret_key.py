"""No default secret key (issue 19): one is made at random on first start, kept owner-only under the data
directory and reused; production mode never makes one and refuses to start without one."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, child_env, cookie_serializer, session_cookie_values, sign_in_over_http
from triage.secret_key import SecretKeyError, ensure_secret_key, key_path, session_secret
from triage.settings import Settings

# The key every install shared before issue 19; a cookie signed with it must open nothing now.
OLD_PUBLIC_KEY = "dev-only-change-" + "me"


def test_no_key_is_in_the_source():
    assert Settings.model_fields["secret_key"].default == ""
    sources = [p for folder in ("triage", "web", "worker", "scripts", "migrations") for p in (ROOT / folder).rglob("*")
               if p.suffix in (".py", ".sh", ".html", ".js")]
    sources += [ROOT / "docker-compose.yml", ROOT / ".env.example", ROOT / "Dockerfile"]
    assert not [p for p in sources if OLD_PUBLIC_KEY in p.read_text(errors="replace")]


def test_the_key_file_is_made_once_owner_only_and_reused(tmp_path):
    settings = Settings(data_dir=tmp_path / "var")
    key = ensure_secret_key(settings)
    path = key_path(settings)
    assert path == tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) >= 64
    before = path.stat().st_mtime_ns
    assert ensure_secret_key(settings) == key == session_secret(settings)
    assert path.stat().st_mtime_ns == before  # reused, not rewritten
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    # Another deployment (another data dir) gets another key.
    assert ensure_secret_key(Settings(data_dir=tmp_path / "other")) != key


def _make_key(data_dir: str) -> str:
    return ensure_secret_key(Settings(data_dir=Path(data_dir)))


def test_processes_starting_at_once_agree_on_one_key(tmp_path):
    # gunicorn's workers each build the app: whichever makes the file first, all sign with its key.
    with ProcessPoolExecutor(4) as pool:
        keys = set(pool.map(_make_key, [str(tmp_path / "var")] * 8))
    assert keys == {key_path(Settings(data_dir=tmp_path / "var")).read_text().strip()}


def test_a_key_file_others_can_read_or_an_empty_one_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path)
    ensure_secret_key(settings)
    key_path(settings).chmod(0o640)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        session_secret(settings)
    key_path(settings).write_text("")
    key_path(settings).chmod(0o600)
    with pytest.raises(SecretKeyError, match="empty"):
        session_secret(settings)


def test_production_never_makes_a_key_and_refuses_a_missing_or_short_one(tmp_path):
    production = Settings(data_dir=tmp_path, production=True)
    with pytest.raises(RuntimeError, match="DERMATRIAGE_SECRET_KEY"):
        session_secret(production)
    assert not key_path(production).exists()
    with pytest.raises(RuntimeError, match="32 characters"):
        session_secret(Settings(data_dir=tmp_path, production=True, secret_key="short"))
    assert session_secret(Settings(data_dir=tmp_path, production=True, secret_key="k" * 40)) == "k" * 40
    made = ensure_secret_key(production)  # what `dermatriage ensure-secret-key` does at deployment
    assert session_secret(production) == made


def test_the_command_makes_the_file_and_never_prints_the_key(tmp_path):
    env = child_env(Settings(data_dir=tmp_path / "var"))
    runs = [subprocess.run([sys.executable, "-m", "scripts.cli", "ensure-secret-key"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60) for _ in range(2)]
    key = (tmp_path / "var" / "secret_key").read_text().strip()
    assert [r.returncode for r in runs] == [0, 0]
    assert all(str(tmp_path / "var" / "secret_key") in r.stdout and key not in r.stdout + r.stderr for r in runs)


def test_the_portal_signs_with_its_own_key_and_a_cookie_signed_with_the_old_public_one_opens_nothing(
        make_stack, sqlite_url):
    stack = make_stack(sqlite_url)  # no key set: the portal makes one under the stack's data dir
    url = stack.start_web().url  # gunicorn, two workers: both read the same key
    key = key_path(stack.settings).read_text().strip()
    cookie = sign_in_over_http(url).cookies["dermatriage_session"]
    payload = session_cookie_values(key, cookie)
    assert payload["_user_id"] and not session_cookie_values(OLD_PUBLIC_KEY, cookie)

    def account(signed: str) -> int:
        return requests.get(url + "/account", cookies={"dermatriage_session": signed}, allow_redirects=False,
                            timeout=30).status_code

    # The captured session re-signed with a fresh timestamp: only with the portal's own key does it open.
    assert account(cookie_serializer(OLD_PUBLIC_KEY).dumps(payload)) == 302
    assert account(cookie_serializer(key).dumps(payload)) == 200


def test_every_entry_point_starts_without_a_key(tmp_path):
    """The worker, the command line and the migrations need no key, and the web makes its own."""
    env = child_env(Settings(data_dir=tmp_path / "var"))
    env.pop("DERMATRIAGE_SECRET_KEY", None)
    for code in ("import worker.app",
                 "from scripts.cli import main; main(['migrate'])",
                 "from web.app import create_app; create_app()"):
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, (code, run.stderr[-2000:])
    assert stat.S_IMODE(os.stat(tmp_path / "var" / "secret_key").st_mode) == 0o600
