"""The garbage collector of a long-running server process.

CPython's cycle collector runs every 700 container allocations, and every tenth of those
runs walks the older generation as well. A server process holds a large, permanent heap
(the FHIR specification's parameters, the validation models, the routes), and a transaction
bundle allocates tens of thousands of dicts: measured on bundle ingest, collections took
about a sixth of the process's CPU, most of it walking objects that live as long as the
process. Once the process has started, :func:`settle` moves what is alive into the permanent
generation, which collections skip, and lets the young generation grow larger before it is
collected. Cycles are still collected; only less often.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]

#: Container allocations (less deallocations) between collections of the young generation.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Freeze what a started server holds and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
