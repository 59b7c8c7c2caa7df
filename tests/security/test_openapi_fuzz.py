"""Schemathesis over the whole OpenAPI document, with a valid token and with none.

Every operation gets generated requests (valid and malformed, from the schema); whatever they
carry, the answer is never a 5xx, and nothing answered to organisation A carries an id of
organisation B's data (a patient, a consent, a genomics sample) created beforehand.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

from careplane.security import Role
from tests.conftest import Accounts

# Never-ending streams, and the one call that would sign the fuzzer's own token out.
SKIP = {("GET", "/api/events/stream"), ("POST", "/api/auth/revoke")}
EXAMPLES = 6


def _foreign_ids(client: TestClient, accounts: Accounts) -> set[str]:
    them = accounts.make("them", Role.admin, org="org-b")
    pid = client.post("/fhir/Patient", headers=them.headers, json={
        "resourceType": "Patient", "name": [{"family": "Foreign"}]}).json()["id"]
    consent = client.post("/api/consents", headers=them.headers, json={
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "permit"}}).json()
    sample = client.post("/api/genomics/samples", headers=them.headers,
                         json={"name": "foreign-sample"}).json()
    return {pid, consent["id"], sample["id"]}


@pytest.mark.slow
@pytest.mark.parametrize("authenticated", [True, False], ids=["token", "anonymous"])
def test_no_server_errors_and_no_foreign_data(client: TestClient, accounts: Accounts,
                                              authenticated: bool) -> None:
    foreign = _foreign_ids(client, accounts)
    admin = accounts.make("admin-a", Role.admin, org="org-a")
    auth = admin.headers if authenticated else {}
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", client.app)
    problems: list[str] = []
    answered: set[str] = set()  # operations that answered 2xx at least once
    operations = [r.ok() for r in schema.get_all_operations()]
    current = [""]  # the operation being fuzzed (the inner test reads it)
    assert len(operations) > 50
    for operation in operations:
        current[0] = f"{operation.method.upper()} {operation.path}"
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            kwargs = case.as_transport_kwargs()
            kwargs.pop("cookies", None)
            kwargs["headers"] = {**{k: v for k, v in kwargs.get("headers", {}).items()
                                    if k.lower() != "authorization"}, **auth}
            response = client.request(**kwargs)
            where = f"{kwargs['method']} {kwargs['url']}"
            if response.status_code < 300:
                answered.add(current[0])
            if response.status_code >= 500:
                problems.append(f"{where}: {response.status_code} {response.text[:200]}")
            leaked = [i for i in foreign if i in response.text]
            if leaked:
                problems.append(f"{where}: carries organisation B's {leaked}")

        run()
    assert not problems, "\n".join(sorted(set(problems))[:40])
    # The token really opened doors (the test is not just a wall of 401s) and anonymity none
    # beyond the public ones.
    public = {"GET /healthz", "GET /readyz", "GET /.well-known/openid-configuration",
              "GET /fhir/.well-known/smart-configuration", "GET /oauth2/jwks",
              "GET /fhir/metadata", "POST /oauth2/revoke"}
    if authenticated:
        assert len(answered - public) >= 15, sorted(answered)
    else:
        assert answered <= public, sorted(answered - public)
