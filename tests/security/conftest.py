"""Security-test fixtures.

``client`` here also disposes the application's own database engine when the test ends, so a
PostgreSQL connection of one test is never garbage-collected (with a ResourceWarning) during
the next one.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from careplane.app import create_app
from careplane.platform.db import Database
from careplane.security.deps import CSRF_COOKIE
from careplane.security.models import Organisation
from careplane.security.oauth import create_client
from careplane.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        app.state.platform.db.dispose()


# --- OAuth2 helpers --------------------------------------------------------------------------
REDIRECT = "http://localhost:9999/callback"


@dataclass
class Registered:
    client_id: str
    secret: str | None

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{self.client_id}:{self.secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def register(db: Database, org_id: str, scope: str, **kwargs: Any) -> Registered:
    with db.session() as session:
        org = session.get(Organisation, org_id)
        assert org is not None
        made = create_client(session, org=org, name=kwargs.pop("name", "Test app"),
                             scope=scope, **kwargs)
        return Registered(made.client.id, made.secret)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    return verifier, challenge


def sign_in(client: TestClient, username: str, password: str) -> str:
    client.get("/login")
    csrf = client.cookies.get(CSRF_COOKIE)
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf": csrf, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    fresh = client.cookies.get(CSRF_COOKIE)
    assert fresh
    return fresh


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorize(client: TestClient, app: Registered, scope: str, *, patient: str | None = None,
              challenge: str, state: str = "xyz", **extra: str) -> dict[str, str]:
    """Run the browser part of the code flow for the signed-in user; returns the callback
    query (code, state, iss or error)."""
    params = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT,
              "scope": scope, "state": state, "code_challenge": challenge,
              "code_challenge_method": "S256", "aud": "http://testserver/fhir", **extra}
    page = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    if page.status_code == 303:
        return query_of(page.headers["location"])
    assert page.status_code == 200, page.text
    form = {**params, "csrf": client.cookies.get(CSRF_COOKIE) or "", "decision": "allow"}
    if patient:
        form["patient"] = patient
    response = client.post("/oauth2/authorize", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return query_of(location)
