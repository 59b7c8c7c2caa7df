"""The genomics pages' access rules (a finished run's pages are checked in test_routes, on the
run that test already makes)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from careplane.genomics.simulate import SimulatedDataset
from careplane.security import Role
from tests.conftest import Accounts
from tests.genomics.test_routes import _register


def _login(client: TestClient, accounts: Accounts, role: Role = Role.clinician,
           org: str = "org-a") -> dict[str, str]:
    account = accounts.make(f"web-{role.value}-{org}", role, org=org)
    return account.headers


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
