"""The garbage collector of a long-running server process.

CPython's cycle collector runs every 700 container allocations, and every tenth of those
runs walks the older generation as well. A server process holds a large, permanent heap
(the FHIR specification's parameters, the validation models, the routes), and a transaction
bundle allocates tens of thousands of dicts: measured on bundle ingest, collections took
about a sixth of the process's CPU, most of it walking objects that live as long as the
process. Once the process has started, :func:`settle` moves what is alive into the permanent
generation, which collections skip, and lets the young generation grow larger before it is
collected. Cycles are still collected; only less often.

A domain that builds what its requests need on first use (compiled checks, parsed
definitions) registers a loader with :func:`load_at_start`; :func:`settle` runs the loaders
first. The first requests of a fresh process then cost what later ones do (an HTTP worker of
``careplane serve --http-workers N`` starts cold: measured on bundle ingest, the records
domain's lazy loading took a tenth of a new worker's first ten seconds), and what they load
is frozen with the rest.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

__all__ = ["load_at_start", "settle"]

#: Container allocations (less deallocations) between collections of the young generation.
YOUNG_THRESHOLD = 10_000


_LOADERS: list[Callable[[], object]] = []


def load_at_start(loader: Callable[[], object]) -> None:
    """Have :func:`settle` call ``loader`` (once per call, before freezing)."""
    if loader not in _LOADERS:
        _LOADERS.append(loader)


def settle() -> None:
    """Load what the domains registered, freeze what a started server holds and collect
    young objects less often."""
    for loader in _LOADERS:
        loader()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
