"""The viewer in a real browser: images load, scrolling moves through frames, W/L re-renders."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from careplane.platform.db import Database
from careplane.security import Role
from tests.conftest import Accounts
from tests.imaging.conftest import make_instance, multipart
from tests.support.browser import CHROMIUM, SharedChromium
from tests.support.servers import free_port, running_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _loaded(page: object) -> None:
    """Wait until the viewer's image has been fetched and decoded by the browser."""
    deadline = time.monotonic() + 20
    script = "() => { const i = document.getElementById('image'); " \
             "return i.complete && i.naturalWidth > 0; }"
    while not page.evaluate(script):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the image did not load"
        time.sleep(0.05)


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(db_url, tmp_path / "data",
                        extra_env={"CAREPLANE_DICOM_PORT": str(free_port())}) as base:
        yield base


def test_viewer_scrolls_and_windows(chromium: SharedChromium, server: str, db: Database,
                                    tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed")
    from playwright.sync_api import expect

    account = Accounts(db).make("jun", Role.radiologist)
    study, series = generate_uid(), generate_uid()
    body, headers = multipart([
        make_instance(study_uid=study, series_uid=series, instance_number=1, rows=64,
                      columns=64, frames=3, patient_name="Viewer^Test"),
        make_instance(study_uid=study, series_uid=series, instance_number=2, rows=64,
                      columns=64)])
    stored = httpx.post(server + "/dicomweb/studies", content=body,
                        headers={**headers, **account.headers})
    assert stored.status_code == 200
    with chromium.page(viewport={"width": 1280, "height": 900}) as page:
        page.goto(server + "/login?next=/imaging")
        page.fill("input[name=username]", "jun")
        page.fill("input[name=password]", "jun-password")
        page.click("button[type=submit]")
        page.wait_for_url(server + "/imaging")
        page.click(f"a[href='/imaging/studies/{study}'] >> nth=1")
        image = page.locator("#image")
        expect(image).to_have_attribute("src", re.compile(r"/frames/1/rendered"))
        _loaded(page)
        expect(page.locator("#position")).to_have_text("1 / 4")  # 3 frames + 1 image
        image.hover()
        page.mouse.wheel(0, 120)
        expect(page.locator("#position")).to_have_text("2 / 4")
        expect(image).to_have_attribute("src", re.compile(r"/frames/2/rendered"))
        page.fill("#wc", "100")
        page.fill("#ww", "50")
        page.locator("#ww").dispatch_event("change")
        expect(image).to_have_attribute("src", re.compile(r"window=100%2C50"))
        _loaded(page)
        shots = Path("test-results")
        shots.mkdir(exist_ok=True)
        page.screenshot(path=str(shots / "imaging-viewer.png"))
