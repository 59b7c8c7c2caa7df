"""Autogenerate a migration from the models, for one domain's branch.

    python tools/new_migration.py "records: resources and search indexes" \
        --rev 0100 --branch records --prefix fhir_      # first revision of a domain branch
    python tools/new_migration.py "records: add x" --rev 0101 --head records@head \
        --prefix fhir_

It diffs the models against a scratch SQLite database migrated to the current heads, writes
the revision under src/careplane/platform/db/migrations/versions and tidies what Alembic
renders (our UTCDateTime type, JSONB's text type). Review the file before committing.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from alembic import command

from careplane.platform.db import Database, migrate
from careplane.platform.db._migrate import _config

VERSIONS = Path(__file__).resolve().parents[1] / "src/careplane/platform/db/migrations/versions"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("message")
    parser.add_argument("--rev", required=True, help="revision id, e.g. 0100")
    parser.add_argument("--branch", help="label of a new branch (its first revision)")
    parser.add_argument("--head", default="foundation@head",
                        help="revision to build on (default: foundation@head)")
    parser.add_argument("--prefix", required=True,
                        help="only tables whose name starts with this (the domain's prefix)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/scratch.db")
        migrate(db)
        cfg = _config(db)
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            cfg.attributes["table_prefix"] = args.prefix
            command.revision(cfg, message=args.message, autogenerate=True, rev_id=args.rev,
                             head=args.head, splice=bool(args.branch),
                             branch_label=args.branch)
    path = next(VERSIONS.glob(f"{args.rev}_*.py"))
    text = path.read_text()
    text = text.replace("careplane.platform.db._types.UTCDateTime", "cdb.UTCDateTime")
    text = text.replace("astext_type=Text()", "astext_type=sa.Text()")
    text = re.sub(r"\n *# ### (commands auto generated|end Alembic commands).*", "", text)
    text = text.replace("\nfrom sqlalchemy.dialects import postgresql\n", "\n", 1) \
        if text.count("from sqlalchemy.dialects import postgresql") > 1 else text
    path.write_text(text)
    print(path)


if __name__ == "__main__":
    main()
