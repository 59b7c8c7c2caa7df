"""Imports every table definition so that one metadata (and Alembic) sees them all.

Each domain adds its own models module here, nothing else.
"""

import careplane.platform.events._models
import careplane.platform.jobs._models
import careplane.security.models  # noqa: F401
