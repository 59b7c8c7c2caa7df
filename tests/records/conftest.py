"""Fixtures for the FHIR API tests: a client acting as a clinician of one organisation."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from careplane.security import Role

FHIR_JSON = "application/fhir+json"


class Fhir:
    """A thin FHIR client over the TestClient, authenticated as one account."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = {**headers, "Accept": FHIR_JSON}

    def request(self, method: str, path: str, *, json: Any = None,
                headers: dict[str, str] | None = None, **kwargs: Any) -> Response:
        hdrs = {**self.headers, **(headers or {})}
        if json is not None:
            import orjson

            kwargs["content"] = orjson.dumps(json)
            hdrs.setdefault("Content-Type", FHIR_JSON)
        return self.client.request(method, f"/fhir/{path.lstrip('/')}", headers=hdrs, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> Response:
        return self.request("PUT", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        return self.request("DELETE", path, **kwargs)

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        r = self.post(resource["resourceType"], resource)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def search(self, path: str, params: Any = None, **kwargs: Any) -> dict[str, Any]:
        r = self.get(path, params=params, **kwargs)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def ids(self, path: str, params: Any = None) -> list[str]:
        bundle = self.search(path, params)
        return [e["resource"]["id"] for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode") == "match"]


def patient_client(client: TestClient, accounts: Any, db: Any, username: str,
                   patient_id: str) -> Fhir:
    """A client for a new user with the ``patient`` role, linked to ``Patient/patient_id``."""
    from sqlalchemy import select

    from careplane.security.identity import link_patient
    from careplane.security.models import Organisation, User

    account = accounts.make(username, Role.patient)
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == username))
        org = s.get(Organisation, account.org_id)
        assert user is not None and org is not None
        link_patient(s, user, org, patient_id)
    return Fhir(client, account.headers)


@pytest.fixture
def fhir(client: TestClient, accounts: Any) -> Fhir:
    return Fhir(client, accounts.make("nurse", Role.clinician, org="org-a").headers)


@pytest.fixture
def other_org(client: TestClient, accounts: Any) -> Fhir:
    return Fhir(client, accounts.make("stranger", Role.clinician, org="org-b").headers)


def patient(family: str = "Chalmers", given: str = "Peter", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
            **extra}


def observation(subject: str, code: str = "8867-4", value: float = 72, unit: str = "/min",
                when: str = "2024-03-01T10:00:00Z", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": subject}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit},
            **extra}


PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}


def ann_and_bob(fhir: Fhir, family: str) -> dict[str, str]:
    """Two patients of ``fhir``'s organisation, Ann and Bob, each with a pulse Observation;
    Ann also has one labelled PSY (keys: ann, bob, ann_obs, bob_obs, ann_psy)."""
    w: dict[str, str] = {}
    for name in ("ann", "bob"):
        pid = fhir.create(patient(family, name.title()))["id"]
        w[name] = pid
        w[f"{name}_obs"] = fhir.create(observation(f"Patient/{pid}", value=70))["id"]
    w["ann_psy"] = fhir.create(observation(f"Patient/{w['ann']}", code="44249-1", value=9,
                                           meta={"security": [PSY]}))["id"]
    return w


def found_ids(bundle: dict[str, Any]) -> set[str]:
    """The ids of a search result's resources, OperationOutcomes left out."""
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if "resource" in e and e["resource"]["resourceType"] != "OperationOutcome"}
