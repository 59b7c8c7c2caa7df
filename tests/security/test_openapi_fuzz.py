"""Schemathesis over the whole OpenAPI document: an administrator's token, a patient's SMART
app token (a JWT from the built-in OAuth2 server), and no token at all.

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

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.access_tokens import issue_access_token
from careplane.security.identity import link_patient
from careplane.security.models import Organisation, User
from tests.conftest import Accounts

# Never-ending streams, and the one call that would sign the fuzzer's own token out.
SKIP = {("GET", "/api/events/stream"), ("POST", "/api/auth/revoke")}
# Examples per operation: most for the caller that gets furthest into the handlers.
EXAMPLES = {"admin-token": 5, "patient-app-jwt": 3, "anonymous": 2}


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


def _smart_patient_token(client: TestClient, accounts: Accounts, db: Database) -> str:
    """A SMART app's JWT for a patient user: the narrowest kind of caller."""
    me = accounts.make("pat-a", Role.patient, org="org-a")
    with db.session() as session:
        user, org = session.get(User, me.user_id), session.get(Organisation, me.org_id)
        assert user is not None and org is not None
        link_patient(session, user, org, "own-record")
        return issue_access_token(
            session, client.app.state.platform.settings.secret_key,  # type: ignore[attr-defined]
            issuer="http://testserver", user_id=me.user_id, org_id=me.org_id,
            client_id="fuzz-app", scope="launch/patient patient/*.rs",
            patient_id="own-record").token


@pytest.mark.slow
# genomics/routes.py still names the 413 status by its deprecated constant (reported to them);
# that is a warning for the owner, not a failure of access control.
@pytest.mark.filterwarnings("ignore:'HTTP_413_REQUEST_ENTITY_TOO_LARGE' is deprecated")
@pytest.mark.parametrize("caller", ["admin-token", "patient-app-jwt", "anonymous"])
def test_no_server_errors_and_no_foreign_data(client: TestClient, accounts: Accounts,
                                              db: Database, caller: str) -> None:
    foreign = _foreign_ids(client, accounts)
    authenticated = caller == "admin-token"
    if caller == "admin-token":
        auth = accounts.make("admin-a", Role.admin, org="org-a").headers
    elif caller == "patient-app-jwt":
        auth = {"Authorization": f"Bearer {_smart_patient_token(client, accounts, db)}"}
    else:
        auth = {}
    # From the running app's own document (loading it through from_asgi would start a second
    # copy of the app's lifespan on another event loop).
    schema = schemathesis.openapi.from_dict(client.get("/api/openapi.json").json())
    problems: list[str] = []
    answered: set[str] = set()  # operations that answered 2xx at least once
    operations = [r.ok() for r in schema.get_all_operations()]
    current = [""]  # the operation being fuzzed (the inner test reads it)
    assert len(operations) > 50
    for operation in operations:
        current[0] = f"{operation.method.upper()} {operation.path}"
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @settings(max_examples=EXAMPLES[caller], deadline=None, database=None, derandomize=True,
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
    elif caller == "anonymous":
        assert answered <= public, sorted(answered - public)
    else:  # the patient's app reads its own things only: never an administrator's lists
        # (/api/jobs still answers: the jobs routes do not ask the policy yet, see
        # KNOWN_GAPS in test_access_matrix.py)
        assert not {"GET /api/audit", "GET /api/grants", "GET /api/genomics/samples"} & answered, \
            sorted(answered)
