"""Alembic environment: always online, on the connection handed over by careplane."""

from alembic import context

import careplane.models  # noqa: F401 - registers every table on Base.metadata
from careplane.platform.db.base import Base

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
