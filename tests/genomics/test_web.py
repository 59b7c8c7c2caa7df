"""The genomics pages: runs with progress, the QC report with its charts, samples, variants."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from careplane.genomics.simulate import SimulatedDataset
from careplane.genomics.variants import VariantQuery, VariantStore
from careplane.platform import jobs
from careplane.platform.db import Database
from careplane.security import Role
from careplane.settings import Settings
from tests.conftest import Accounts
from tests.genomics.test_routes import _register


def _login(client: TestClient, accounts: Accounts, role: Role = Role.clinician,
           org: str = "org-a") -> dict[str, str]:
    account = accounts.make(f"web-{role.value}-{org}", role, org=org)
    return account.headers


def test_run_pages_show_progress_qc_and_charts(
        client: TestClient, accounts: Accounts, db: Database, dataset: SimulatedDataset,
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    mp = monkeypatch
    mp.setenv("CAREPLANE_DATABASE_URL", settings.db_url)
    mp.setenv("CAREPLANE_DATA_DIR", str(settings.data_dir))
    h = _login(client, accounts)
    ids = _register(client, h, dataset)
    run = client.post("/api/genomics/runs", json=ids, headers=h).json()
    home = client.get("/genomics", headers=h)
    assert home.status_code == 200
    assert f"/genomics/runs/{run['id']}" in home.text and "queued" in home.text
    assert 'data-live-topic="job."' in home.text  # refreshed by the job events

    assert jobs.Worker(db).run_once()
    table = client.get("/genomics/_runs", headers=h)
    assert "succeeded" in table.text and "<progress" in table.text
    page = client.get(f"/genomics/runs/{run['id']}", headers=h)
    assert page.status_code == 200
    assert page.text.count("<svg") == 2 and "Coverage histogram" in page.text
    assert "Insert size" in page.text and "Ti/Tv" in page.text
    assert re.search(r"Mapped</dt><dd>(99|100)\.\d\d%", page.text)
    assert "NA-1.vcf.gz" in page.text

    sample = client.get(f"/genomics/samples/{ids['sample_id']}", headers=h)
    assert sample.status_code == 200 and "Patient/pat-1" in sample.text
    assert "passing calls" in sample.text

    browser = client.get("/genomics/variants", params={"chrom": "chr1", "start": "1",
                                                       "end": "20,000"}, headers=h)
    assert browser.status_code == 200
    total = int(re.search(r'data-testid="variant-total">([\d,]+) call',
                          browser.text).group(1).replace(",", ""))  # type: ignore[union-attr]
    expected = VariantStore(settings.data_dir).query(
        accounts.orgs["org-a"], VariantQuery(chrom="chr1", start=1, end=20_000))["total"]
    assert total == expected > 0
    bad = client.get("/genomics/variants", params={"start": "x"}, headers=h)
    assert bad.status_code == 200 and "start must be a whole number" in bad.text


def test_pages_respect_organisations_and_roles(client: TestClient, accounts: Accounts,
                                               dataset: SimulatedDataset) -> None:
    h = _login(client, accounts)
    ids = _register(client, h, dataset)
    run = client.post("/api/genomics/runs", json=ids, headers=h).json()
    other = _login(client, accounts, org="org-b")
    assert client.get(f"/genomics/runs/{run['id']}", headers=other).status_code == 404
    assert client.get(f"/genomics/samples/{ids['sample_id']}", headers=other).status_code == 404
    assert run["id"] not in client.get("/genomics", headers=other).text
    counsellor = _login(client, accounts, Role.counsellor)
    assert client.get("/genomics", headers=counsellor).status_code == 403
    assert client.get("/genomics", follow_redirects=False).status_code == 303
