"""The installed domains, in mounting order.

Each entry names a module with a ``mount(app)`` function that includes the domain's routers.
Importing the module also registers the domain's tables (for migrations), its place in the
navigation and its demo data, so adding a domain is one line here.

The order is also the order in which a request's path is tried against each router's routes
(FastAPI tries every route of every router mounted before the one that answers), and every
route tried costs the request a few microseconds. The FHIR API, the busiest, comes first:
from last to after security took about 0.7 ms off a read, and to first (past the platform's
and security's forty routes) about 0.2 ms more. Its generic ``/fhir/{type}/{id}`` routes do
not take a segment that starts with a dot, so security's
``/fhir/.well-known/smart-configuration`` is still reached.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

INSTALLED: tuple[str, ...] = (
    "careplane.records.mount",
    "careplane.ops.mount",
    "careplane.security.mount",
    "careplane.web.mount",
    "careplane.genomics.mount",
    "careplane.imaging.mount",
)


def modules() -> Iterator[ModuleType]:
    for name in INSTALLED:
        yield importlib.import_module(name)
