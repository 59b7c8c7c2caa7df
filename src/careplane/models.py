"""Imports every table definition so that one metadata (and Alembic) sees them all."""

import careplane.platform.events._models
import careplane.platform.jobs._models  # noqa: F401
from careplane.domains import modules

for _module in modules():  # each domain's mount module imports its own tables
    pass
