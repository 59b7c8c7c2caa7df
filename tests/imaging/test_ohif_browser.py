"""OHIF (npm @ohif/app, installed by scripts/install-ohif) served by careplane, in Chromium.

The viewer opens a study from careplane's /dicomweb: once with the careplane session cookie,
once with only a bearer token in the URL. Both times its QIDO, metadata and frame requests
must reach /dicomweb and be answered 200, and the study's images must be drawn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.deps import SESSION_COOKIE
from tests.conftest import Accounts
from tests.imaging.conftest import data_file, make_instance, multipart
from tests.support.browser import CHROMIUM, SharedChromium
from tests.support.servers import ROOT, running_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OHIF_DIR = Path(os.environ.get("CAREPLANE_DICOM_OHIF_DIR", ROOT / "data" / "vendor" / "ohif"))


def _require_ohif() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed")
    if not (OHIF_DIR / "index.html").is_file():
        message = f"OHIF is not installed in {OHIF_DIR}: run scripts/install-ohif"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(db_url, tmp_path / "data",
                        extra_env={"CAREPLANE_DICOM_OHIF_DIR": str(OHIF_DIR)}) as base:
        yield base


def _store_study(server: str, headers: dict[str, str]) -> tuple[str, set[str]]:
    """The real chest CR and a small second series, under one new study."""
    from io import BytesIO

    import pydicom

    study = generate_uid()
    chest = pydicom.dcmread(BytesIO(data_file("RG1_UNCR.dcm")))
    chest.StudyInstanceUID = study
    chest.SeriesInstanceUID = generate_uid()
    chest.SOPInstanceUID = generate_uid()
    chest.file_meta.MediaStorageSOPInstanceUID = chest.SOPInstanceUID
    out = BytesIO()
    chest.save_as(out, enforce_file_format=True)
    second = generate_uid()
    body, head = multipart([out.getvalue(), make_instance(
        study_uid=study, series_uid=second, rows=64, columns=64, frames=2,
        patient_id=str(chest.PatientID), patient_name=str(chest.PatientName))])
    stored = httpx.post(server + "/dicomweb/studies", content=body,
                        headers={**head, **headers}, timeout=60)
    assert stored.status_code == 200, stored.text
    return study, {str(chest.SeriesInstanceUID), second}


class _Watch:
    """The /dicomweb responses a page receives, and the Authorization header they carried."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.responses: list[tuple[str, int, str | None]] = []
        self.errors: list[str] = []
        page.on("response", self._seen)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _seen(self, response: Any) -> None:
        if "/dicomweb/" in response.url:
            self.responses.append((response.url, response.status,
                                   response.request.headers.get("authorization")))

    def frames(self, series: str) -> list[tuple[str, int, str | None]]:
        return [r for r in self.responses if f"/series/{series}/" in r[0] and "/frames/" in r[0]]

    def wait_for_frames(self, all_series: set[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not all(any(r[1] == 200 for r in self.frames(s)) for s in all_series):
            assert time.monotonic() < deadline, \
                f"OHIF did not fetch a frame of every series: {self.responses} {self.errors}"
            self.page.wait_for_timeout(200)  # lets Playwright deliver the events


def _drawn(page: Any) -> None:
    """A viewport canvas exists and holds an image (not one flat colour)."""
    deadline = time.monotonic() + 60
    script = """() => {
      const canvases = [...document.querySelectorAll('.cornerstone-canvas, canvas')]
        .filter(c => c.width > 64 && c.height > 64);
      for (const c of canvases) {
        let ctx; try { ctx = c.getContext('2d'); } catch (e) { continue; }
        if (!ctx) continue;
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) {
          seen.add(d[i]);
          if (seen.size > 8) return true;
        }
      }
      return false;
    }"""
    while not page.evaluate(script):
        assert time.monotonic() < deadline, "OHIF drew no image"
        page.wait_for_timeout(500)


@contextmanager
def _browser_on_a_study(chromium: SharedChromium, server: str, db: Database, username: str
                        ) -> Iterator[tuple[Any, _Watch, str, set[str], str]]:
    """A Chromium page watching /dicomweb, and a stored study: (page, watch, study UID,
    its series UIDs, the user's bearer token)."""
    _require_ohif()
    account = Accounts(db).make(username, Role.radiologist)
    study, all_series = _store_study(server, account.headers)
    with chromium.page(viewport={"width": 1400, "height": 900}) as page:
        yield page, _Watch(page), study, all_series, account.token


def test_ohif_opens_a_study_with_the_session(chromium: SharedChromium, server: str,
                                             db: Database) -> None:
    with _browser_on_a_study(chromium, server, db, "rad") as (page, watch, study, all_series, _):
        page.goto(f"{server}/ohif/viewer?StudyInstanceUIDs={study}")
        page.wait_for_url("**/login**")  # no session yet: the login comes first
        page.fill("input[name=username]", "rad")
        page.fill("input[name=password]", "rad-password")
        page.click("button[type=submit]")
        page.wait_for_url("**/ohif/viewer**")
        watch.wait_for_frames(all_series)
        _drawn(page)
        assert page.evaluate("() => window.crossOriginIsolated") is True
        failed = [r for r in watch.responses if r[1] != 200]
        assert not failed, failed
        urls = [r[0] for r in watch.responses]
        assert any(u.endswith(f"/studies/{study}/series") or f"/studies/{study}/series?" in u
                   for u in urls), urls
        assert any(u.endswith("/metadata") for u in urls), urls
        shots = Path("test-results")
        shots.mkdir(exist_ok=True)
        page.screenshot(path=str(shots / "imaging-ohif.png"))


def test_ohif_with_a_bearer_token_and_no_session(chromium: SharedChromium, server: str,
                                                 db: Database) -> None:
    with _browser_on_a_study(chromium, server, db, "tok") as (page, watch, study, all_series,
                                                               token):
        page.goto(f"{server}/ohif/viewer?StudyInstanceUIDs={study}&token={token}")
        watch.wait_for_frames(all_series)
        _drawn(page)
        assert SESSION_COOKIE not in {c["name"] for c in page.context.cookies()}
        assert watch.responses
        assert all(r[1] == 200 and r[2] == f"Bearer {token}"
                   for r in watch.responses), watch.responses
