"""Command-line tools of the security domain: ``careplane audit ...`` and ``careplane client ...``.

They reuse the main CLI's helpers (settings, database, JSON output), imported inside each
command because the main CLI imports this module to register the sub-apps.
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["audit_app", "client_app"]

audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit trail.")
client_app = typer.Typer(no_args_is_help=True, help="OAuth2 clients (applications, services).")


@audit_app.command("verify")
def audit_verify(data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="data directory (default: $CAREPLANE_DATA_DIR or ./data)")] = None
                 ) -> None:
    """Recompute the audit chain; exit 1 and name the first bad record if it was tampered with."""
    from pathlib import Path

    from careplane.cli import database, emit, settings_from
    from careplane.security.audit import verify

    settings = settings_from(Path(data_dir) if data_dir else None)
    with database(settings) as db, db.session() as session:
        result = verify(session)
    emit({"ok": result.ok, "checked": result.checked, "first_bad_id": result.first_bad_id,
          "problem": result.problem})
    if not result.ok:
        typer.echo(f"careplane: audit chain broken at record {result.first_bad_id}: "
                   f"{result.problem}", err=True)
        raise typer.Exit(1)
