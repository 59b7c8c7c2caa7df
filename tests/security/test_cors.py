"""CORS for SMART apps on configured origins: preflights, labelled answers, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from careplane.app import create_app
from careplane.security import Role
from careplane.security.cors import cors_path
from careplane.settings import Settings, SettingsError, load_settings
from tests.conftest import Accounts

APP = "https://app.example.org"
EVIL = "https://evil.example.com"


@pytest.fixture
def cors_client(settings: Settings) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"cors_origins": [APP, "http://localhost:9000"]})
    app = create_app(configured)
    try:
        with TestClient(app) as client:
            yield client
    finally:
        app.state.platform.db.dispose()


def _preflight(client: TestClient, path: str, origin: str, method: str = "POST",
               headers: str = "authorization, content-type") -> dict[str, str]:
    response = client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})
    assert response.status_code < 500, response.text
    return {k.lower(): v for k, v in response.headers.items()}


@pytest.mark.parametrize("path", ["/fhir/Patient", "/fhir/Observation/123", "/fhir",
                                  "/dicomweb/studies", "/oauth2/token",
                                  "/.well-known/openid-configuration"])
def test_preflight_from_a_listed_origin(cors_client: TestClient, path: str) -> None:
    response = cors_client.options(path, headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert response.status_code == 204
    headers = {k.lower(): v for k, v in response.headers.items()}
    assert headers["access-control-allow-origin"] == APP
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in headers
    assert "Origin" in headers["vary"]


def test_preflight_refused_for_others(cors_client: TestClient) -> None:
    for origin in (EVIL, APP + ".evil.com", "null", APP.replace("https", "http")):
        headers = _preflight(cors_client, "/fhir/Patient", origin)
        assert "access-control-allow-origin" not in headers
    odd = _preflight(cors_client, "/fhir/Patient", APP, headers="x-custom-secret")
    assert "access-control-allow-origin" not in odd
    assert "access-control-allow-origin" not in _preflight(cors_client, "/fhir/Patient", APP,
                                                            method="TRACE")
    # Pages and the login API are not for other origins.
    for path in ("/api/auth/token", "/oauth2/authorize", "/admin/audit"):
        assert "access-control-allow-origin" not in _preflight(cors_client, path, APP)


def test_answers_carry_the_origin_refusals_too(cors_client: TestClient,
                                               accounts: Accounts) -> None:
    nurse = accounts.make("gina", Role.clinician)
    ok = cors_client.get("/fhir/Patient", headers={**nurse.headers, "Origin": APP})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP
    assert "ETag" in ok.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in ok.headers
    refused = cors_client.get("/fhir/Patient", headers={"Origin": APP})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP  # the app can read why
    token = cors_client.post("/oauth2/token", data={"grant_type": "client_credentials"},
                             headers={"Origin": APP})
    assert token.status_code in (400, 401)
    assert token.headers["access-control-allow-origin"] == APP
    other = cors_client.get("/fhir/Patient", headers={**nurse.headers, "Origin": EVIL})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    metadata = cors_client.get("/fhir/metadata", headers={"Origin": APP})
    assert metadata.json()["rest"][0]["security"]["cors"] is True


def test_nothing_without_configured_origins(client: TestClient) -> None:
    response = client.options("/fhir/Patient", headers={
        "Origin": APP, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in client.get(
        "/fhir/metadata", headers={"Origin": APP}).headers


@pytest.mark.parametrize("origin", ["*", "https://app.example.org/", "app.example.org",
                                    "https://*.example.org/x", "ftp://files.example.org",
                                    " https://app.example.org"])
def test_bad_origins_refused_in_settings(origin: str) -> None:
    with pytest.raises(SettingsError, match="cors_origins"):
        load_settings(env="test", cors_origins=[origin])


def test_cors_paths() -> None:
    assert cors_path("/fhir") and cors_path("/fhir/Patient/1/_history")
    assert cors_path("/oauth2/token") and cors_path("/.well-known/smart-configuration")
    assert not cors_path("/fhirx") and not cors_path("/oauth2/tokens")
    assert not cors_path("/oauth2/authorize") and not cors_path("/api/audit")
