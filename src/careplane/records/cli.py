"""``careplane records ...``: maintenance of the FHIR store from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["records_app"]

records_app = typer.Typer(no_args_is_help=True, help="The FHIR records store.")


@records_app.command("reindex")
def reindex_command(
    resource_type: Annotated[list[str] | None, typer.Option(
        "--type", help="only this resource type (repeatable; default: all)")] = None,
    batch: Annotated[int, typer.Option(min=1, max=10000)] = 500,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Rebuild the search indexes from the stored resources, online, batch by batch."""
    from careplane.cli import database, emit, fail, settings_from
    from careplane.records.maintenance import analyze, reindex
    from careplane.records.spec import resource_types

    unknown = sorted(set(resource_type or ()) - resource_types())
    if unknown:
        fail(f"not R4 resource types: {', '.join(unknown)}")
    settings = settings_from(data_dir)
    with database(settings) as db:
        result = reindex(db, types=set(resource_type or ()) or None, batch=batch,
                         progress=lambda n: typer.echo(f"reindexed {n} resources", err=True))
        analyze(db)
    emit({"resources": result.resources, "index_rows": result.rows,
          "failed": list(result.failed)})


@records_app.command("analyze")
def analyze_command(data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None
                    ) -> None:
    """Refresh the database planner's statistics of the records tables (after a big load)."""
    from careplane.cli import database, emit, settings_from
    from careplane.records.maintenance import analyze

    with database(settings_from(data_dir)) as db:
        analyze(db)
    emit({"analyzed": True})
