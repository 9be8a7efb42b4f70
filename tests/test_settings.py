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


def test_production_refuses_the_default_secret(monkeypatch):
    monkeypatch.setenv("DERMATRIAGE_PRODUCTION", "1")
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        Settings().check_production()
    monkeypatch.setenv("DERMATRIAGE_SECRET_KEY", "x" * 40)
    Settings().check_production()


def test_readme_table_is_the_generated_one(capsys):
    from scripts.cli import cmd_config_table

    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in env_table() if f"`{name}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"
    cmd_config_table(None)
    assert capsys.readouterr().out.strip() in readme, "run: python -m scripts.update_readme_table"
