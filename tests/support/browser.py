"""One headless Chromium (Debian's, driven by Playwright) per test module.

Starting Chromium takes a second or more, several on a busy machine; a browser tests module
starts it once and every test gets a page in a context of its own (its own cookies, storage
and cache), closed when the test is done, so tests stay as separate as with a browser each.
The browser is started on first use, so a test that skips before asking for a page starts
nothing. Module scope, not session: Playwright's sync API keeps an event loop marked running
between its calls, which the other tests' own event loops must not meet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


class SharedChromium:
    """The module's browser, started when the first page is asked for."""

    def __init__(self) -> None:
        self._manager: Any = None
        self._browser: Any = None

    def _started(self) -> Any:
        if self._browser is None:
            if not Path(CHROMIUM).exists():
                raise RuntimeError("Chromium is not installed: run scripts/install-system-deps")
            from playwright.sync_api import sync_playwright

            self._manager = sync_playwright()
            playwright = self._manager.__enter__()
            self._browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                       args=CHROMIUM_FLAGS)
        return self._browser

    @contextmanager
    def page(self, **context_options: Any) -> Iterator[Any]:
        """A page in a fresh browser context (e.g. ``viewport={...}``), closed afterwards."""
        context = self._started().new_context(**context_options)
        try:
            yield context.new_page()
        finally:
            context.close()

    def close(self) -> None:
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            if self._manager is not None:
                self._manager.__exit__(None, None, None)
            self._browser = self._manager = None
