"""Alembic, driven from code: ``careplane migrate`` and the automatic upgrade of a new database.

Each domain keeps its own branch of revisions (``branch_labels``) under ``migrations/versions``
so that domains evolve their tables independently; ``upgrade heads`` brings all of them up.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from careplane.platform.db._engine import Database
from careplane.platform.db.base import Base

_HERE = Path(__file__).parent


class MigrationRequired(RuntimeError):
    """The database schema is older than this version of careplane."""


def modelled(obj: object, name: str | None, type_: str, reflected: bool,
             compare_to: object) -> bool:
    """Alembic's ``include_object`` for comparing the models with a database: leaves out the
    tables a migration makes that no model can declare (an SQLite FTS5 index and its shadow
    tables), which a domain names in ``Base.metadata.info["unmodelled"]`` by prefix."""
    if type_ != "table" or not reflected or not name:
        return True
    return not name.startswith(tuple(Base.metadata.info.get("unmodelled", ())))


def _config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection_url"] = db.url
    return cfg


def _heads(db: Database) -> set[str]:
    return set(ScriptDirectory.from_config(_config(db)).get_heads())


def _current(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def needs_migration(db: Database) -> bool:
    return _current(db) != _heads(db)


def migrate(db: Database, *, only_if_new: bool = False) -> bool:
    """Upgrade to the newest schema. Returns True if anything was applied.

    With ``only_if_new`` an existing database at an older revision is not touched:
    :class:`MigrationRequired` asks the operator to run ``careplane migrate`` deliberately.
    """
    current = _current(db)
    if current == _heads(db):
        return False
    if only_if_new and current:
        raise MigrationRequired(
            f"the database at {db.safe_url} has an older schema; run `careplane migrate` first")
    with db.engine.begin() as conn:
        cfg = _config(db)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    return True
