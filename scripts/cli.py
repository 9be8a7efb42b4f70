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
              "DERMATRIAGE_FLOWER_USER": s.flower_user, "DERMATRIAGE_FLOWER_PASSWORD": s.flower_password,
              "DERMATRIAGE_DATA_DIR": s.data_dir}
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


def cmd_ensure_secret_key(_args) -> None:
    """Make the portal's key file (random, owner-only) unless it exists; never prints the key."""
    from triage.secret_key import ensure_secret_key, key_path

    s = get_settings()
    if s.secret_key:
        print("secret key: DERMATRIAGE_SECRET_KEY (the key file is not used)")
        return
    ensure_secret_key(s)
    print(f"secret key: {key_path(s)}")


def cmd_reconcile(_args) -> None:
    from worker.tasks import reconcile

    _database().dispose()
    print(json.dumps(reconcile()))


def cmd_status(_args) -> None:
    from sqlalchemy import func, select

    from triage.broker import redis_client
    from triage.db import Database
    from triage.migrate import SchemaNotCurrent, require_current
    from triage.schema import Image
    from web.health import health_report
    from web.services import Services

    s = get_settings()
    db = Database(s.database_url)
    report = health_report(Services(settings=s, db=db, store=None, celery=None, redis=redis_client(s.redis_url)))
    if report["database"]["ok"]:
        try:
            require_current(db.engine, s.database_url)
        except SchemaNotCurrent as exc:
            report["ok"], report["database"] = False, {"ok": False, "error": str(exc)}
    if report["database"]["ok"]:
        with db.session() as session:
            report["images"] = dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())
    print(json.dumps(report, indent=2, default=str))
    sys.exit(0 if report["ok"] else 1)


def _read_password(args) -> str:
    """From stdin (first line) for scripts, else asked twice at the terminal without echo."""
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"Password for {args.username}: ")
    if getpass.getpass("Again: ") != first:
        sys.exit("The two passwords differ; nothing was changed.")
    return first


def _database():
    """The configured database, once it is reachable and at this version's schema; otherwise the
    command ends with a sentence saying what to do, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from triage.db import Database
    from triage.migrate import SchemaNotCurrent, require_current

    url = get_settings().database_url
    db = Database(url)
    try:
        require_current(db.engine, url)
    except SchemaNotCurrent as exc:
        db.dispose()
        sys.exit(str(exc))
    except OperationalError as exc:
        db.dispose()
        sys.exit(f"Cannot reach the database {db.engine.url.render_as_string(hide_password=True)}: {exc.orig}")
    return db


def cmd_create_admin(args) -> None:
    """The first admin (or another one): a user with every role's rights."""
    from triage.audit import record
    from triage.auth import AuthError, create_user
    from triage.schema import Role

    password = _read_password(args)
    db = _database()
    try:
        with db.session() as s:
            user = create_user(s, args.username, password, Role.ADMIN)
            record(s, "user.create", target=("user", user.id),
                   details={"username": user.username, "role": user.role, "via": "cli"})
    except AuthError as exc:
        sys.exit(str(exc))
    finally:
        db.dispose()
    print(f"admin {args.username!r} created; sign in at the portal")


def cmd_create_token(args) -> None:
    """An API token for an existing user, printed once (only its SHA-256 is stored)."""
    from sqlalchemy import select

    from triage.audit import record
    from triage.auth import issue_token
    from triage.schema import User

    db = _database()
    try:
        with db.session() as s:
            user = s.scalar(select(User).where(User.username == args.username, User.active.is_(True)))
            if user is None:
                sys.exit(f"No active user {args.username!r}.")
            row, token = issue_token(s, user, args.name)
            record(s, "token.create", target=("api_token", row.id), details={"name": row.name, "via": "cli"})
    finally:
        db.dispose()
    print(token)


def cmd_revoke_token(args) -> None:
    from triage.audit import record
    from triage.auth import revoke_token

    db = _database()
    try:
        with db.session() as s:
            row = revoke_token(s, args.id)
            if row is None:
                sys.exit(f"No live token #{args.id}.")
            record(s, "token.revoke", target=("api_token", row.id), details={"name": row.name, "via": "cli"})
    finally:
        db.dispose()
    print(f"token #{args.id} revoked")


def cmd_create_site(args) -> None:
    """A new site (a clinic sharing the portal); its members are added with add-to-site."""
    from triage.audit import record
    from triage.sites import SiteError, create_site

    db = _database()
    try:
        with db.session() as s:
            site = create_site(s, args.name)
            record(s, "site.create", target=("site", site.id), details={"name": site.name, "via": "cli"})
            site_id = site.id
    except SiteError as exc:
        sys.exit(str(exc))
    finally:
        db.dispose()
    print(f"site #{site_id} {args.name!r} created")


def cmd_add_to_site(args) -> None:
    """Put a user at a site with a role (or change their role there), or take them off it."""
    from sqlalchemy import select

    from triage.audit import record
    from triage.schema import User
    from triage.sites import SiteError, remove_membership, set_membership, site_named

    db = _database()
    try:
        with db.session() as s:
            user = s.scalar(select(User).where(User.username == args.username))
            site = site_named(s, args.site)
            if user is None or site is None:
                sys.exit(f"No user {args.username!r}." if user is None else f"No site {args.site!r}.")
            if args.remove:
                changed = {"removed_from_site": site.id} if remove_membership(s, user.id, site.id) else {}
            else:
                before, after = set_membership(s, user.id, site.id, args.role)
                changed = {"site_role": {"site": site.id, "from": before, "to": after}}
            record(s, "user.update", target=("user", user.id),
                   details={"username": user.username, **changed, "via": "cli"})
            record_site = site.name
    except SiteError as exc:
        sys.exit(str(exc))
    finally:
        db.dispose()
    print(f"{args.username!r} {'removed from' if args.remove else 'is ' + args.role + ' at'} {record_site!r}")


def _row_id(text: str) -> int:
    from triage.ids import parse_id

    found = parse_id(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a row id")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dermatriage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("env", cmd_env, "print the resolved settings as shell exports"),
        ("config-table", cmd_config_table, "print the configuration table in Markdown"),
        ("migrate", cmd_migrate, "upgrade the database to the newest schema"),
        ("ensure-model", cmd_ensure_model, "build the demo model if no model file exists"),
        ("ensure-secret-key", cmd_ensure_secret_key, "make the portal's secret key file if there is none"),
        ("reconcile", cmd_reconcile, "re-enqueue images whose job was lost"),
        ("status", cmd_status, "database, Redis and queue health, images by status"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)
    admin = sub.add_parser("create-admin", help="create an admin user (the first one, or another)")
    admin.add_argument("--username", required=True)
    admin.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    admin.set_defaults(func=cmd_create_admin)
    token = sub.add_parser("create-token", help="issue an API token for a user and print it once")
    token.add_argument("--username", required=True)
    token.add_argument("--name", default="command line", help="what the token is for")
    token.set_defaults(func=cmd_create_token)
    revoke = sub.add_parser("revoke-token", help="revoke an API token by its number")
    revoke.add_argument("id", type=_row_id)
    revoke.set_defaults(func=cmd_revoke_token)
    site = sub.add_parser("create-site", help="create a site (a clinic whose data only its members see)")
    site.add_argument("name")
    site.set_defaults(func=cmd_create_site)
    member = sub.add_parser("add-to-site", help="put a user at a site with a role (or --remove them)")
    member.add_argument("--username", required=True)
    member.add_argument("--site", required=True, help="the site's name or number")
    member.add_argument("--role", choices=["uploader", "reviewer", "admin"], default="uploader")
    member.add_argument("--remove", action="store_true", help="take the user off the site")
    member.set_defaults(func=cmd_add_to_site)
    for name, text in (("train", "train a model (python -m model.train --help)"),
                       ("evaluate", "evaluate a model (python -m model.evaluate --help)")):
        passthrough = sub.add_parser(name, help=text, add_help=False)
        passthrough.add_argument("args", nargs=argparse.REMAINDER)
        passthrough.set_defaults(func=cmd_model_tool, tool=name)
    check = sub.add_parser("check-backbone", help="classify sample photographs with a backbone's ImageNet network "
                                                  "(dermatriage check-backbone --help)", add_help=False)
    check.add_argument("args", nargs=argparse.REMAINDER)
    check.set_defaults(func=cmd_check_backbone, tool="check-backbone")
    upload = sub.add_parser("upload", help="send a folder of photographs to the portal, resumably "
                                           "(dermatriage upload --help)", add_help=False)
    upload.add_argument("args", nargs=argparse.REMAINDER)
    upload.set_defaults(func=cmd_upload, tool="upload")
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "tool", None) is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # options before the first positional, e.g. `dermatriage train --help`
        args.args = extra + args.args
    args.func(args)


def cmd_upload(args) -> None:
    """The upload client talks to a running portal over HTTP; it lives in scripts/upload.py."""
    from scripts.upload import main as upload_main

    sys.exit(upload_main(args.args))


def cmd_check_backbone(args) -> None:
    """Its exit status is the verdict (0 pass, 1 wrong classes, 2 weights missing)."""
    from model.check_backbone import main as check_main

    sys.exit(check_main(args.args))


def cmd_model_tool(args) -> None:
    """Training and evaluation live in model/; their own parsers take every option."""
    import importlib

    importlib.import_module(f"model.{args.tool}").main(args.args)


if __name__ == "__main__":
    main()
