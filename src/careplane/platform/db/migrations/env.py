"""Alembic environment: always online, on the connection handed over by careplane."""

from alembic import context

import careplane.models  # noqa: F401 - registers every table on Base.metadata
from careplane.platform.db._migrate import modelled
from careplane.platform.db.base import Base

config = context.config
connection = config.attributes["connection"]
# Autogenerate for one domain at a time: only tables whose names carry its prefix.
only_prefix: str | None = config.attributes.get("table_prefix")


def include_object(obj: object, name: str | None, type_: str, reflected: bool,
                   compare_to: object) -> bool:
    if not modelled(obj, name, type_, reflected, compare_to):
        return False
    if only_prefix is None or type_ != "table":
        return True
    return bool(name and name.startswith(only_prefix))


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_object=include_object,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
