"""`dermatriage` command: operator tasks that need no running web server."""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from triage.settings import get_settings


def cmd_env(_args) -> None:
    """Shell exports of the resolved settings the run script needs."""
    s = get_settings()
    values = {"REDIS_URL": s.redis_url, "DERMATRIAGE_WEB_HOST": s.web_host, "DERMATRIAGE_WEB_PORT": s.web_port,
              "DERMATRIAGE_QUEUE": s.queue_name, "DERMATRIAGE_FLOWER_PORT": s.flower_port,
              "DERMATRIAGE_FLOWER_USER": s.flower_user, "DERMATRIAGE_FLOWER_PASSWORD": s.flower_password}
    for key, value in values.items():
        print(f"export {key}={shlex.quote(str(value))}")


def cmd_config_table(_args) -> None:
    """The README's configuration table, generated from the settings themselves."""
    from triage.settings import env_table

    print("| variable | default | meaning |\n|---|---|---|")
    for name, default, meaning in env_table():
        print(f"| `{name}` | {('`' + default + '`') if default else '(derived)'} | {meaning} |")


def cmd_migrate(_args) -> None:
    from triage.migrate import upgrade

    upgrade(get_settings().database_url)
    print("database is at the newest schema")


def cmd_ensure_model(_args) -> None:
    """Build the untrained demo model when the configured model file does not exist."""
    s = get_settings()
    if s.model_path.exists():
        print(f"model: {s.model_path}")
        return
    print(f"no model at {s.model_path}; building the untrained demo model (random weights)...", flush=True)
    from model.demo import build_demo_model

    card = build_demo_model(s.model_path)
    print(f"model: {s.model_path} ({card.model_version}, UNTRAINED)")


def cmd_reconcile(_args) -> None:
    from worker.tasks import reconcile

    print(json.dumps(reconcile()))


def cmd_status(_args) -> None:
    from sqlalchemy import func, select

    from triage.db import Database
    from triage.schema import Image
    from web.health import health_report
    from web.services import Services

    s = get_settings()
    db = Database(s.database_url)
    report = health_report(Services(settings=s, db=db, store=None, celery=None))
    if report["database"]["ok"]:
        with db.session() as session:
            report["images"] = dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())
    print(json.dumps(report, indent=2, default=str))
    sys.exit(0 if report["ok"] else 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dermatriage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("env", cmd_env, "print the resolved settings as shell exports"),
        ("config-table", cmd_config_table, "print the configuration table in Markdown"),
        ("migrate", cmd_migrate, "upgrade the database to the newest schema"),
        ("ensure-model", cmd_ensure_model, "build the demo model if no model file exists"),
        ("reconcile", cmd_reconcile, "re-enqueue images whose job was lost"),
        ("status", cmd_status, "database, Redis and queue health, images by status"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
