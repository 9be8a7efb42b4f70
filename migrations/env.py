"""Alembic environment bound to the schema's metadata and the settings' database URL."""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from triage.db import make_engine
from triage.schema import Base
from triage.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    # A caller (tests, the migrate helper) may pass a URL; otherwise the settings decide.
    return config.attributes.get("database_url") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Copy-and-move drops the old table, and with foreign keys on SQLite first deletes its rows,
            # cascading into every table that refers to it (images -> analyses -> cases). So, as SQLite's
            # own procedure for such changes says: keys off (only possible outside a transaction) while
            # migrating, and checked before the commit.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        # render_as_batch: SQLite cannot ALTER most things, so changes are made by copy-and-move.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the migration left rows whose foreign keys point nowhere: {broken[:10]}")
    engine.dispose()  # the connection with keys off goes too: none is ever handed out again


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
