"""What the _content/_text full-text indexes cost PostgreSQL transaction ingest (A/B).

Creates a scratch database on the server of ``CAREPLANE_TEST_POSTGRES_URL`` (default
``postgres@127.0.0.1:5432``), migrates it, then loads synthetic patients (``careplane synth``'s
bundles, one transaction each, through the FHIR store as the synth loader does) in
alternating rounds with and without the two GIN indexes of migration 0102, and prints the
resources/s of each round, the medians and their ratio. The database is dropped afterwards.

    .venv/bin/python bench/records_fulltext_cost.py --rounds 5 --patients 15
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from datetime import date

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from careplane.platform.db import Database, migrate
from careplane.records.search_sql import CONTENT_INDEXES
from careplane.records.synth import generate, load_bundles
from careplane.security import Principal, Role
from careplane.security.identity import create_org

PG_ADMIN = os.environ.get("CAREPLANE_TEST_POSTGRES_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--patients", type=int, default=15, help="patients per round")
    args = parser.parse_args()
    name = f"careplane_fts_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
    try:
        migrate(db)
        with db.session() as session:
            org = create_org(session, "bench", "Bench").id
        who = Principal("bench", "bench", org, frozenset({Role.service}), "bench")
        rates: dict[bool, list[float]] = {True: [], False: []}
        seed = 1000
        for _ in range(args.rounds):
            for indexed in (True, False):
                with db.engine.begin() as conn:
                    for index, expression in CONTENT_INDEXES.items():
                        conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
                        if indexed:
                            conn.execute(text(f"CREATE INDEX {index} ON fhir_resource_version "
                                              f"USING gin (({expression}))"))
                seed += 1
                bundles = list(generate(args.patients, seed, start=date(2025, 6, 1)))
                count = sum(len(b["entry"]) for b in bundles)
                started = time.perf_counter()
                load_bundles(db, who, bundles, base="http://bench/fhir")
                rates[indexed].append(count / (time.perf_counter() - started))
    finally:
        db.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    with_, without = (statistics.median(rates[k]) for k in (True, False))
    print(f"with indexes    {[round(r) for r in rates[True]]} median {with_:.0f} resources/s")
    print(f"without indexes {[round(r) for r in rates[False]]} median {without:.0f} resources/s")
    print(f"ratio {with_ / without:.2f}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
