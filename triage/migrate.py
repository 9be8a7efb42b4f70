"""Bring a database to the newest schema with Alembic (the only way the schema changes)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


class SchemaNotCurrent(Exception):
    """The database is not at the schema this version of the code was written for."""


def require_current(engine: Engine, database_url: str) -> None:
    """Raise SchemaNotCurrent, saying what to do, unless the database is at this version's newest
    schema. Commands other than `migrate` never change the schema themselves: an operator upgrades a
    shared database on purpose, once, not as a side effect of creating a user."""
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return
    state = ("has no schema yet" if not current else
             f"is at schema {', '.join(sorted(current))}, and this version needs {', '.join(sorted(heads))}")
    raise SchemaNotCurrent(f"The database {engine.url.render_as_string(hide_password=True)} {state}. "
                           "Run `dermatriage migrate` (scripts/run.sh does it as it starts), then try again.")
