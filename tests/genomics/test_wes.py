"""GA4GH WES 1.1 over careplane runs: service-info, submit, list, status, log, cancel."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from careplane.genomics.simulate import SimulatedDataset
from careplane.security import Role
from tests.conftest import Accounts
from tests.genomics.test_routes import _register


def _form(ids: dict[str, Any], **overrides: str) -> dict[str, str]:
    import json

    form = {"workflow_type": "CAREPLANE_GERMLINE", "workflow_type_version": "1.0",
            "workflow_url": "careplane:germline",
            "workflow_params": json.dumps(ids), "tags": json.dumps({"project": "p1"})}
    form.update(overrides)
    return form


def test_wes_lifecycle(client: TestClient, accounts: Accounts,
                       dataset: SimulatedDataset) -> None:
    nurse = accounts.make("gina", Role.clinician)
    h = nurse.headers
    info = client.get("/ga4gh/wes/v1/service-info", headers=h).json()
    assert info["supported_wes_versions"] == ["1.1.0"]
    assert "CAREPLANE_GERMLINE" in info["workflow_type_versions"]
    ids = _register(client, h, dataset)
    submitted = client.post("/ga4gh/wes/v1/runs", data=_form(ids), headers=h)
    assert submitted.status_code == 200, submitted.text
    run_id = submitted.json()["run_id"]
    assert client.get(f"/ga4gh/wes/v1/runs/{run_id}/status", headers=h).json() == {
        "run_id": run_id, "state": "QUEUED"}
    listed = client.get("/ga4gh/wes/v1/runs", params={"page_size": 1}, headers=h).json()
    assert listed["runs"] == [{"run_id": run_id, "state": "QUEUED"}]
    log = client.get(f"/ga4gh/wes/v1/runs/{run_id}", headers=h).json()
    assert log["request"]["workflow_params"]["fastq"] == ids["fastq"]
    assert log["request"]["tags"] == {"project": "p1"} and log["state"] == "QUEUED"
    info = client.get("/ga4gh/wes/v1/service-info", headers=h).json()
    assert info["system_state_counts"]["QUEUED"] == 1
    assert client.post(f"/ga4gh/wes/v1/runs/{run_id}/cancel", headers=h).json() == {
        "run_id": run_id}
    assert client.get(f"/ga4gh/wes/v1/runs/{run_id}/status", headers=h).json()["state"] == \
        "CANCELED"
    # The same run is visible through careplane's own API.
    assert client.get(f"/api/genomics/runs/{run_id}", headers=h).json()["status"] == \
        "cancelled"


def test_wes_errors_use_its_error_shape(client: TestClient, accounts: Accounts,
                                        dataset: SimulatedDataset) -> None:
    nurse = accounts.make("gina", Role.clinician)
    h = nurse.headers
    ids = _register(client, h, dataset)
    wrong_type = client.post("/ga4gh/wes/v1/runs", data=_form(ids, workflow_type="CWL"),
                             headers=h)
    assert wrong_type.status_code == 400 and wrong_type.json()["status_code"] == 400
    assert "workflow_type" in wrong_type.json()["msg"]
    bad_json = client.post("/ga4gh/wes/v1/runs", data=_form(ids, workflow_params="{"),
                           headers=h)
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["msg"]
    missing = client.post("/ga4gh/wes/v1/runs",
                          data=_form({"sample_id": ids["sample_id"]}), headers=h)
    assert missing.status_code == 400 and "reference_id" in missing.json()["msg"]
    unknown = client.get("/ga4gh/wes/v1/runs/nope/status", headers=h)
    assert unknown.status_code == 404 and unknown.json() == {"msg": "no run nope",
                                                             "status_code": 404}
    other = accounts.make("oscar", Role.clinician, org="org-b")
    run_id = client.post("/ga4gh/wes/v1/runs", data=_form(ids), headers=h).json()["run_id"]
    assert client.get(f"/ga4gh/wes/v1/runs/{run_id}", headers=other.headers).status_code == 404
