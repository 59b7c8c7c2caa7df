from __future__ import annotations

from fastapi.testclient import TestClient

from careplane.platform.db import Database
from careplane.platform.jobs import Worker, submit
from tests.conftest import Accounts

T = "tests.platform.job_tasks"


def test_jobs_api_lists_shows_cancels_and_retries(client: TestClient, db: Database,
                                                  accounts: Accounts) -> None:
    nurse = accounts.make("nurse", org="org-a")
    other = accounts.make("other", org="org-b")
    with db.session() as session:
        done = submit(session, f"{T}:add", {"a": 1, "b": 1}, org_id=nurse.org_id).id
    Worker(db).run_once()
    with db.session() as session:
        failed = submit(session, f"{T}:bad_input", {}, org_id=nurse.org_id).id
    Worker(db).run_once()
    with db.session() as session:
        queued = submit(session, f"{T}:add", {"a": 2, "b": 2}, org_id=nurse.org_id,
                        title="Align tumour sample").id

    listed = client.get("/api/jobs", headers=nurse.headers).json()
    assert {j["id"] for j in listed} == {done, queued, failed}
    assert client.get("/api/jobs", headers=other.headers).json() == []
    assert client.get(f"/api/jobs/{done}", headers=other.headers).status_code == 404

    job = client.get(f"/api/jobs/{done}", headers=nurse.headers).json()
    assert job["status"] == "succeeded" and job["result"] == {"sum": 2}
    logs = client.get(f"/api/jobs/{done}/logs", headers=nurse.headers).json()
    assert [line["line"] for line in logs][-1] == "succeeded"

    cancelled = client.post(f"/api/jobs/{queued}/cancel", headers=nurse.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/api/jobs/{done}/cancel", headers=nurse.headers).status_code == 409
    assert client.post(f"/api/jobs/{queued}/cancel", headers=other.headers).status_code == 404

    assert client.get(f"/api/jobs/{failed}", headers=nurse.headers).json()["status"] == "failed"
    retried = client.post(f"/api/jobs/{failed}/retry", headers=nurse.headers)
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert client.get("/api/jobs?status=bogus", headers=nurse.headers).status_code == 422
