"""Database access: one :class:`Database` per process, SQLite or PostgreSQL behind SQLAlchemy 2."""

from careplane.platform.db._ahead import MISSING, recall, remember
from careplane.platform.db._driver import driver_rows
from careplane.platform.db._engine import Database, DatabaseUnavailable
from careplane.platform.db._migrate import MigrationRequired, migrate, modelled, needs_migration
from careplane.platform.db._types import JSONType, UTCDateTime, new_id, utcnow
from careplane.platform.db.base import Base

__all__ = [
    "MISSING",
    "Base",
    "Database",
    "DatabaseUnavailable",
    "JSONType",
    "MigrationRequired",
    "UTCDateTime",
    "driver_rows",
    "migrate",
    "modelled",
    "needs_migration",
    "new_id",
    "recall",
    "remember",
    "utcnow",
]
