"""The genomics pages in a real browser (Debian's Chromium driven by Playwright): the runs
list follows a run's progress live, the QC report draws its charts, the variant browser
answers region and gene queries."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careplane.genomics.simulate import SimulatedDataset
from careplane.platform.db import Database
from careplane.security import Role
from tests.conftest import Accounts
from tests.support.servers import running_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(db_url, tmp_path / "data", job_workers=1) as base:
        yield base


def _register(api: httpx.Client, ds: SimulatedDataset) -> dict[str, Any]:
    def upload(path: Path, **params: str) -> str:
        got = api.post("/api/genomics/files", params={"filename": path.name, **params},
                       content=path.read_bytes())
        assert got.status_code == 201, got.text
        return str(got.json()["id"])

    sample = api.post("/api/genomics/samples", json={"name": "BROWSER-1"})
    assert sample.status_code == 201, sample.text
    sid = sample.json()["id"]
    reference = api.post("/api/genomics/references",
                         json={"name": "sim", "file_id": upload(ds.reference)})
    assert reference.status_code == 201, reference.text
    return {"sample_id": sid, "reference_id": reference.json()["id"],
            "fastq": [upload(ds.r1, sample_id=sid), upload(ds.r2, sample_id=sid)],
            "threads": 2}


def test_runs_qc_report_and_variant_browser(server: str, db: Database,
                                            dataset: SimulatedDataset) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run scripts/install-system-deps")
    from playwright.sync_api import sync_playwright

    account = Accounts(db).make("gina", Role.clinician)
    api = httpx.Client(base_url=server, headers=account.headers, timeout=60)
    ids = _register(api, dataset)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(server + "/login?next=/genomics")
            page.fill("input[name=username]", account.username)
            page.fill("input[name=password]", account.password)
            page.click("button[type=submit]")
            page.wait_for_url(server + "/genomics")
            assert page.locator("#genomics-runs").inner_text().strip() == "No runs yet."

            # A run submitted now appears in the open page and its progress moves, live.
            run = api.post("/api/genomics/runs", json=ids)
            assert run.status_code == 202, run.text
            run_id = run.json()["id"]
            row = page.locator("#genomics-runs tr", has_text="BROWSER-1")
            seen: list[float] = []
            deadline = time.monotonic() + 240
            while True:
                assert time.monotonic() < deadline, "the run did not finish in time"
                if row.count():
                    bar = row.locator("progress")
                    if bar.count():
                        seen.append(float(bar.get_attribute("value") or 0))
                    status = row.locator(".status").inner_text()
                    assert status not in ("failed", "cancelled"), row.inner_text()
                    if status == "succeeded":
                        break
                time.sleep(0.1)
            assert any(0 < value < 1 for value in seen), seen  # an intermediate step showed
            assert "100%" in row.inner_text()

            # The QC report: its figures and both charts.
            row.get_by_role("link", name="BROWSER-1").click()
            page.wait_for_url(server + f"/genomics/runs/{run_id}")
            qc = page.locator("section", has_text="Quality control")
            mapped = qc.locator("dt:text-is('Mapped') + dd").inner_text()
            assert float(mapped.rstrip("%")) > 99
            charts = qc.locator("figure svg")
            assert charts.count() == 2
            for i in range(2):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 80
                assert charts.nth(i).locator("rect, path, polyline").count() > 3
            outputs = page.locator("section", has_text="Outputs").inner_text()
            assert "BROWSER-1.vcf.gz" in outputs and "BROWSER-1.bam" in outputs

            # The variant browser: a region, then a gene of the shipped gene table.
            page.goto(server + "/genomics/variants")
            page.fill("input[name=chrom]", "chr1")
            page.fill("input[name=start]", "1")
            page.fill("input[name=end]", "10000")
            page.click("form.filters button[type=submit]")
            page.wait_for_url(re.compile(r".*chrom=chr1.*"))
            expected = api.get("/api/genomics/variants",
                               params={"chrom": "chr1", "start": 1, "end": 10000}).json()
            assert expected["total"] > 0
            assert page.get_by_test_id("variant-total").inner_text().startswith(
                f"{expected['total']:,} call")
            positions = [int(c.split(":")[1].replace(",", "")) for c in
                         page.locator("table tbody tr td:first-child").all_inner_texts()]
            assert positions == [v["pos"] for v in expected["variants"]]

            genes = api.get("/api/genomics/genes").json()
            gene = next(g for g in genes if api.get(
                "/api/genomics/variants", params={"gene": g["name"]}).json()["total"] > 1)
            page.fill("input[name=chrom]", "")
            page.fill("input[name=start]", "")
            page.fill("input[name=end]", "")
            page.fill("input[name=gene]", gene["name"])
            page.click("form.filters button[type=submit]")
            page.wait_for_url(re.compile(rf".*gene={gene['name']}.*"))
            in_gene = api.get("/api/genomics/variants", params={"gene": gene["name"]}).json()
            assert page.get_by_test_id("variant-total").inner_text().startswith(
                f"{in_gene['total']:,} call")
            for cell in page.locator("table tbody tr td:first-child").all_inner_texts():
                chrom, pos = cell.split(":")
                assert chrom == gene["chrom"]
                assert gene["start"] - 100 <= int(pos.replace(",", "")) <= gene["end"]
        finally:
            browser.close()
            api.close()
