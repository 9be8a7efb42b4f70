"""One typed settings object: defaults that need nothing set, environment overrides, README table."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import ROOT
from triage.settings import Settings, env_table


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("DERMATRIAGE_") or key in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(key)


def test_embedded_defaults_need_nothing_set():
    s = Settings()
    assert s.database_url == "sqlite:///var/dermatriage.db"
    assert s.image_store == Path("var/images")
    assert s.model_path == Path("var/models/demo_resnet152.keras")
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://db/x")
    monkeypatch.setenv("DERMATRIAGE_DATA_DIR", "/srv/dt")
    monkeypatch.setenv("DERMATRIAGE_BATCH_MAX_SIZE", "16")
    s = Settings()
    assert s.database_url == "postgresql+psycopg://db/x"
    assert s.image_store == Path("/srv/dt/images") and s.batch_max_size == 16


def test_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv("DERMATRIAGE_BATCH_MAX_SIZE", "many")
    with pytest.raises(ValueError):
        Settings()


def test_there_is_no_default_secret_and_production_refuses_a_missing_one(monkeypatch, tmp_path):
    from triage.secret_key import session_secret

    monkeypatch.setenv("DERMATRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DERMATRIAGE_PRODUCTION", "1")
    assert Settings().secret_key == ""  # every entry point still builds its settings; only the web signs
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        session_secret(Settings())
    monkeypatch.setenv("DERMATRIAGE_SECRET_KEY", "x" * 40)
    assert session_secret(Settings()) == "x" * 40


def test_metrics_listen_on_this_machine_only_by_default():
    assert Settings().worker_metrics_host == "127.0.0.1"


def test_readme_table_is_the_generated_one(capsys):
    from scripts.cli import cmd_config_table

    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in env_table() if f"`{name}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"
    cmd_config_table(None)
    assert capsys.readouterr().out.strip() in readme, "run: python -m scripts.update_readme_table"
