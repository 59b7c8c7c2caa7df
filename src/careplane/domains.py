"""The installed domains, in mounting order.

Each entry names a module with a ``mount(app)`` function that includes the domain's routers.
Importing the module also registers the domain's tables (for migrations), its place in the
navigation and its demo data, so adding a domain is one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

INSTALLED: tuple[str, ...] = (
    "careplane.ops.mount",
    "careplane.security.mount",
    "careplane.web.mount",
    "careplane.genomics.mount",
    "careplane.imaging.mount",
    "careplane.records.mount",
)


def modules() -> Iterator[ModuleType]:
    for name in INSTALLED:
        yield importlib.import_module(name)
