"""The web shell in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from careplane.platform.db import Database
from tests.conftest import Accounts
from tests.support.browser import CHROMIUM, SharedChromium
from tests.support.servers import running_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(db_url, tmp_path / "data") as base:
        yield base


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800},
                                      {"width": 390, "height": 844}], ids=["laptop", "phone"])
def test_log_in_and_see_the_dashboard(chromium: SharedChromium, server: str, db: Database,
                                      tmp_path: Path, viewport: dict[str, int]) -> None:
    Accounts(db).make("mina")
    with chromium.page(viewport=viewport) as page:
        page.goto(server + "/")
        assert page.url.endswith("/login?next=/")
        page.fill("input[name=username]", "mina")
        page.fill("input[name=password]", "wrong-password")
        page.click("button[type=submit]")
        assert page.locator("[role=alert]").inner_text() == "Wrong username, password or code."
        page.fill("input[name=password]", "mina-password")
        page.click("button[type=submit]")
        page.wait_for_url(server + "/")
        assert page.locator("h1").inner_text() == "Dashboard"
        assert page.get_by_test_id("who").inner_text() == "mina"
        page.get_by_role("link", name="Jobs").first.click()
        page.wait_for_url(server + "/jobs")
        assert page.locator("h1").inner_text() == "Jobs"
        # Nothing overflows sideways on a phone: the layout is responsive.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"]
        shots = Path("test-results")
        shots.mkdir(exist_ok=True)
        page.screenshot(path=str(shots / f"jobs-{viewport['width']}.png"))


def test_chromium_is_the_system_one() -> None:
    assert shutil.which("chromium") == CHROMIUM
