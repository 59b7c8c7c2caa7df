"""The one entry point: ``careplane serve | demo | migrate | worker | org | user | token``.

Commands that create things print them as JSON so that scripts can use the output directly.
Every failure the operator can fix (bad settings, unreachable database) is one clear line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.orm import Session

from careplane.genomics.cli import genomics_app
from careplane.platform.db import Database, DatabaseUnavailable, MigrationRequired, migrate
from careplane.platform.logs import configure_logging
from careplane.records.cli import records_app
from careplane.records.synth import synth_command
from careplane.security import Role
from careplane.security.cli import audit_app, client_app, keys_app
from careplane.security.identity import IdentityError
from careplane.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="careplane: FHIR records, DICOM imaging, genomics and more, self-hosted.")
org_app = typer.Typer(no_args_is_help=True, help="Organisations (institutions).")
user_app = typer.Typer(no_args_is_help=True, help="Users and their roles.")
token_app = typer.Typer(no_args_is_help=True, help="API bearer tokens.")
app.add_typer(org_app, name="org")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(genomics_app, name="genomics")
app.add_typer(audit_app, name="audit")
app.add_typer(client_app, name="client")
app.add_typer(keys_app, name="keys")
app.add_typer(records_app, name="records")
app.command("synth")(synth_command)

log = logging.getLogger("careplane.cli")
T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="data directory "
                                               "(default: $CAREPLANE_DATA_DIR or ./data)")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"careplane: error: {message}", err=True)
    raise typer.Exit(code)


def emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def settings_from(data_dir: Path | None = None, **overrides: Any) -> Settings:
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        fail(str(exc))


@contextmanager
def database(settings: Settings, *, auto_migrate: bool = True) -> Iterator[Database]:
    db = Database(settings.db_url)
    try:
        db.ping()
        if auto_migrate:
            migrate(db, only_if_new=True)
        yield db
    except (DatabaseUnavailable, MigrationRequired) as exc:
        fail(str(exc))
    finally:
        db.dispose()


def guarded(func: Callable[[], T]) -> T:
    try:
        return func()
    except IdentityError as exc:
        fail(str(exc))


@app.command("migrate")
def migrate_cmd(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date (safe to run at any time)."""
    settings = settings_from(data_dir)
    with database(settings, auto_migrate=False) as db:
        applied = migrate(db)
    emit({"database": db.safe_url, "migrated": applied})


@org_app.command("add")
def org_add(slug: str, name: Annotated[str, typer.Option(help="display name")] = "",
            data_dir: DataDir = None) -> None:
    """Create an organisation and print it as JSON."""
    from careplane.security.identity import create_org

    settings = settings_from(data_dir)
    with database(settings) as db, db.session() as session:
        org = guarded(lambda: create_org(session, slug, name or slug))
        emit({"id": org.id, "slug": org.slug, "name": org.name})


@user_app.command("add")
def user_add(
    username: str,
    org: Annotated[str, typer.Option(help="organisation slug")],
    role: Annotated[list[Role], typer.Option(help="role (repeatable)")],
    password: Annotated[str | None, typer.Option(
        envvar="CAREPLANE_NEW_USER_PASSWORD",
        help="default: a generated one, printed once")] = None,
    full_name: Annotated[str, typer.Option()] = "",
    email: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a user in an organisation and print it (and a generated password) as JSON."""
    import secrets

    from careplane.security.identity import create_user, get_org

    settings = settings_from(data_dir)
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    with database(settings) as db, db.session() as session:
        organisation = guarded(lambda: get_org(session, org))
        user = guarded(lambda: create_user(session, username, password, org=organisation,
                                           roles=list(role), full_name=full_name, email=email))
        out: dict[str, Any] = {"id": user.id, "username": user.username,
                               "organisation": organisation.slug,
                               "roles": sorted(r.value for r in role)}
        if generated:
            out["password"] = password
        emit(out)


@token_app.command("add")
def token_add(username: str,
              days: Annotated[float, typer.Option(min=0.01, max=366)] = 30,
              name: Annotated[str, typer.Option()] = "cli",
              data_dir: DataDir = None) -> None:
    """Issue a bearer token for a user (for scripts) and print it once as JSON."""
    from sqlalchemy import select

    from careplane.security.identity import issue_token
    from careplane.security.models import User

    settings = settings_from(data_dir)
    with database(settings) as db, db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            fail(f"no user {username!r}")
        issued = guarded(lambda: issue_token(session, user, kind="bearer", name=name,
                                             lifetime=timedelta(days=days)))
        emit({"access_token": issued.token, "token_type": "Bearer",
              "expires_at": issued.expires_at.isoformat()})


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run one job worker in the foreground (scale out by running more, on any host)."""
    import signal

    from careplane.platform.jobs import Worker

    settings = settings_from(data_dir)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    export_to_workers(settings)
    with database(settings) as db:
        w = Worker(db, heartbeat=settings.job_heartbeat_seconds,
                   stale_after=settings.job_stale_after_seconds)
        signal.signal(signal.SIGTERM, lambda *_: w.stop())
        signal.signal(signal.SIGINT, lambda *_: w.stop())
        w.run_forever()


def export_to_workers(settings: Settings) -> None:
    """Job workers are separate processes that read their settings from the environment:
    hand them the data directory and database this command was given on its command line."""
    os.environ["CAREPLANE_DATA_DIR"] = str(settings.data_dir)
    os.environ["CAREPLANE_ENV"] = settings.env.value
    if settings.database_url:
        os.environ["CAREPLANE_DATABASE_URL"] = settings.database_url


def bootstrap_admin(session: Session, password: str) -> bool:
    """On an empty installation, create the first administrator so someone can sign in."""
    from sqlalchemy import select

    from careplane.security.identity import create_org, create_user
    from careplane.security.models import User

    if session.scalar(select(User.id).limit(1)) is not None:
        return False
    org = create_org(session, "main", "careplane")
    create_user(session, "admin", password, org=org, roles=[Role.admin],
                full_name="Administrator")
    return True


def run_server(settings: Settings, *, tls_cert: Path | None = None,
               tls_key: Path | None = None) -> None:
    import signal

    import uvicorn

    from careplane.app import create_app
    from careplane.platform.jobs import LocalExecutor

    try:
        settings.check_safe()
    except SettingsError as exc:
        fail(str(exc))
    configure_logging(settings.log_level, json_lines=settings.log_json)
    from careplane.security.transport import TlsError, tls_options

    try:
        tls = tls_options(tls_cert, tls_key)
    except TlsError as exc:
        fail(str(exc))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with database(settings) as db, db.session() as session:
        created = bootstrap_admin(session, settings.admin_password)
    if created:
        log.warning("created the first administrator: user 'admin' in organisation 'main', "
                    "with the password from CAREPLANE_ADMIN_PASSWORD")
    application = create_app(settings)
    from careplane.imaging.dimse import start_dimse  # the DICOM listener on --dicom-port

    try:
        dimse = start_dimse(settings, application.state.platform.db,
                            application.state.platform.blobs)
    except OSError as exc:  # the web server is still useful; say loudly what is missing
        log.error("DICOM listener not started on %s:%s: %s", settings.host,
                  settings.dicom_port, exc)
        dimse = None
    executor = None
    export_to_workers(settings)
    if settings.job_workers:
        executor = LocalExecutor(settings.db_url, settings.job_workers,
                                 heartbeat=settings.job_heartbeat_seconds,
                                 stale_after=settings.job_stale_after_seconds,
                                 log_level=settings.log_level, log_json=settings.log_json)
        executor.start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that
    # was installed before it; this one lets the cleanup below run instead of dying at once.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # More than one HTTP worker: each is a process of its own, which builds the application
    # from the exported environment (careplane.app.app_from_environment), and they share the
    # connections (careplane.platform.http_workers).
    workers = settings.http_workers
    from careplane.platform import heap
    from careplane.platform.http_workers import run_workers

    heap.settle()
    # The app logs each request itself, by path only; uvicorn's access line would also log the
    # query string, where OAuth codes and viewer tokens can travel.
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_config=None, access_log=False,
        proxy_headers=True, forwarded_allow_ips="127.0.0.1", **tls)
    try:
        if workers == 1:
            uvicorn.run(application, **options)
        else:
            run_workers("careplane.app:app_from_environment", workers, **options)
    finally:
        if dimse:
            dimse.stop()
        if executor:
            executor.stop()


@app.command()
def serve(host: Annotated[str | None, typer.Option()] = None,
          port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
          dicom_port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
          workers: Annotated[int | None, typer.Option(
              "--job-workers", min=0, max=64, help="local job worker processes")] = None,
          http_workers: Annotated[int | None, typer.Option(
              "--http-workers", min=1, max=64,
              help="processes answering HTTP (one per core for a busy server)")] = None,
          tls_cert: Annotated[Path | None, typer.Option(
              help="serve HTTPS with this certificate (PEM, chain included)")] = None,
          tls_key: Annotated[Path | None, typer.Option(
              help="the certificate's private key (PEM, unencrypted)")] = None,
          data_dir: DataDir = None) -> None:
    """Start the server (web UI, FHIR, DICOMweb, GA4GH and the job workers)."""
    settings = settings_from(data_dir, host=host, port=port, dicom_port=dicom_port,
                             job_workers=workers, http_workers=http_workers)
    run_server(settings, tls_cert=tls_cert, tls_key=tls_key)


@app.command()
def demo(port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
         data_dir: DataDir = None,
         no_serve: Annotated[bool, typer.Option("--no-serve", help="seed and exit")] = False
         ) -> None:
    """Create demo organisations, users and data, print the logins, and serve on 127.0.0.1."""
    from careplane.demo import seed

    os.environ.setdefault("CAREPLANE_ENV", "development")
    os.environ.setdefault("CAREPLANE_LOG_JSON", "false")  # a person reads this terminal
    settings = settings_from(data_dir or Path(os.environ.get(
        "CAREPLANE_DATA_DIR", Path.cwd() / "data" / "demo")), host="127.0.0.1", port=port)
    if not settings.development:
        fail("`careplane demo` runs only in development mode (CAREPLANE_ENV=development)")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with database(settings) as db:
        logins = seed(settings, db)
    typer.echo(f"careplane demo: data in {settings.data_dir}", err=True)
    typer.echo(f"Open http://127.0.0.1:{port}/ and sign in as one of:", err=True)
    for login in logins:
        typer.echo(f"  {login['username']:<16} {login['password']:<20} {login['roles']}",
                   err=True)
    if not no_serve:
        run_server(settings)


def main() -> None:
    try:
        app()
    except SettingsError as exc:
        typer.echo(f"careplane: error: {exc}", err=True)
        sys.exit(2)
