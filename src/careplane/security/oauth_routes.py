"""HTTP surface of the OAuth2/OIDC server and the SMART discovery document.

Every failure answers with the RFC 6749 body ``{"error", "error_description"}`` (never
careplane's own error shape, never a 5xx for bad input); token responses are ``no-store``.
The authorization endpoint signs the user in through the existing web session and asks for
their approval on a page of its own.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from careplane.platform.context import Platform
from careplane.security import keys
from careplane.security._principal import Principal, Role
from careplane.security.access_tokens import TokenRejected, resolve_access_token
from careplane.security.deps import CSRF_COOKIE, SESSION_COOKIE
from careplane.security.identity import resolve_token
from careplane.security.issuer import issuer_url
from careplane.security.models import User
from careplane.security.oauth import (
    ASSERTION_ALGS,
    AUTH_METHODS,
    AuthorizationRequest,
    ClientCredentials,
    Issuer,
    OAuthError,
    authenticate_client,
    create_authorization_code,
    exchange,
    introspect,
    patient_for,
    revoke,
    validate_authorization_request,
)
from careplane.security.scopes import OTHER_SCOPES, ScopeSet

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["oauth2"])

_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {_FORM: {
    "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}}}
_SCOPES_SUPPORTED = [
    *sorted(OTHER_SCOPES), "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds",
    "system/*.rs",
    "system/*.cruds", "user/imaging:*.rs", "system/imaging:*.rs", "user/genomics:*.cruds",
    "system/genomics:*.cruds"]


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _error(exc: OAuthError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers={**_NO_STORE, **exc.headers})


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded body as single values (a repeated parameter is an error, RFC 6749 3.1)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != _FORM:
        raise OAuthError("invalid_request", f"the body must be {_FORM}")
    body = await request.body()
    if len(body) > 64 * 1024:
        raise OAuthError("invalid_request", "the request body is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "the body is not valid form data") from exc
    return _single(pairs)


def _single(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise OAuthError("invalid_request", f"parameter {name!r} is repeated")
        if len(value) > 8192:
            raise OAuthError("invalid_request", f"parameter {name!r} is too long")
        out[name] = value
    return out


def _endpoints(issuer: str) -> dict[str, str]:
    return {"issuer": issuer, "authorization_endpoint": f"{issuer}/oauth2/authorize",
            "token_endpoint": f"{issuer}/oauth2/token", "jwks_uri": f"{issuer}/oauth2/jwks",
            "revocation_endpoint": f"{issuer}/oauth2/revoke",
            "introspection_endpoint": f"{issuer}/oauth2/introspect",
            "userinfo_endpoint": f"{issuer}/oauth2/userinfo"}


@router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request) -> JSONResponse:
    """OpenID Connect discovery (also serves as RFC 8414 authorization server metadata)."""
    issuer = issuer_url(request)
    return JSONResponse({
        **_endpoints(issuer),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS[:3]),
        "id_token_signing_alg_values_supported": [keys.SIGNING_ALG],
        "subject_types_supported": ["public"],
        "scopes_supported": _SCOPES_SUPPORTED,
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name",
                             "preferred_username", "fhirUser"],
        "authorization_response_iss_parameter_supported": True,
    }, headers={"Cache-Control": "public, max-age=300"})


@router.get("/fhir/.well-known/smart-configuration", tags=["oauth2", "fhir"])
def smart_configuration(request: Request) -> JSONResponse:
    """SMART App Launch 2.x discovery for the FHIR base ``/fhir``."""
    issuer = issuer_url(request)
    endpoints = _endpoints(issuer)
    return JSONResponse({
        **{k: v for k, v in endpoints.items() if k != "userinfo_endpoint"},
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "scopes_supported": _SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric",
                         "client-confidential-asymmetric", "context-standalone-patient",
                         "sso-openid-connect", "permission-offline", "permission-online",
                         "permission-patient", "permission-user", "permission-v1",
                         "permission-v2"],
    }, headers={"Cache-Control": "public, max-age=300"})


@router.get("/oauth2/jwks")
def jwks(request: Request) -> JSONResponse:
    """The public keys that verify our tokens (current and recently retired ones)."""
    platform = _platform(request)
    with platform.session() as session:
        keys.current_key(session, platform.settings.secret_key)  # the first key, on first use
        body = {"keys": keys.published(session)}
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})


def _client_creds(request: Request, form: dict[str, str]) -> ClientCredentials:
    return ClientCredentials.from_request(request.headers.get("authorization"), form)


async def _token_form(request: Request) -> tuple[dict[str, str], ClientCredentials]:
    """The form and client credentials of a request about a token (revoke, introspect)."""
    form = await _form(request)
    creds = _client_creds(request, form)
    if not form.get("token"):
        raise OAuthError("invalid_request", "token is required")
    return form, creds


@router.post("/oauth2/token", openapi_extra=_FORM_BODY)
async def token(request: Request) -> Response:
    """The token endpoint: client credentials, authorization code (PKCE) and refresh token."""
    issuer = issuer_url(request)
    platform = _platform(request)
    try:
        form = await _form(request)
        creds = _client_creds(request, form)
    except OAuthError as exc:
        return _error(exc)

    def run() -> Response:
        with platform.session() as session:
            try:
                client = authenticate_client(session, creds, issuer=issuer,
                                             token_endpoint=f"{issuer}/oauth2/token")
                issued = exchange(session, client, form,
                                  Issuer(issuer, platform.settings.secret_key))
            except OAuthError as exc:
                # Commit what the refusal changed (a replayed code revokes its tokens).
                log.info("token request refused: %s", exc.error,
                         extra={"oauth_error": exc.error})
                return _error(exc)
        log.info("token issued", extra={"client_id": client.id,
                                        "grant_type": form.get("grant_type")})
        return JSONResponse(issued.body(), headers=_NO_STORE)

    return await run_in_threadpool(run)


@router.post("/oauth2/revoke", openapi_extra=_FORM_BODY)
async def revoke_token(request: Request) -> Response:
    """RFC 7009 revocation: 200 whether or not the token was known."""
    issuer = issuer_url(request)
    platform = _platform(request)
    try:
        form, creds = await _token_form(request)
    except OAuthError as exc:
        return _error(exc)

    def run() -> Response:
        with platform.session() as session:
            try:
                client = authenticate_client(session, creds, issuer=issuer,
                                             token_endpoint=f"{issuer}/oauth2/token")
            except OAuthError as exc:
                return _error(exc)
            revoke(session, client, form["token"])
        return Response(status_code=200, headers=_NO_STORE)

    return await run_in_threadpool(run)


@router.post("/oauth2/introspect", openapi_extra=_FORM_BODY)
async def introspect_token(request: Request) -> Response:
    """RFC 7662 introspection, for confidential clients of the token's organisation."""
    issuer = issuer_url(request)
    platform = _platform(request)
    try:
        form, creds = await _token_form(request)
    except OAuthError as exc:
        return _error(exc)

    def run() -> Response:
        with platform.session() as session:
            try:
                client = authenticate_client(session, creds, issuer=issuer,
                                             token_endpoint=f"{issuer}/oauth2/token")
                if client.auth_method == "none":
                    raise OAuthError("invalid_client", "public clients may not introspect",
                                     401)
            except OAuthError as exc:
                return _error(exc)
            body = introspect(session, client, form["token"], issuer=issuer)
        return JSONResponse(body, headers=_NO_STORE)

    return await run_in_threadpool(run)


@router.get("/oauth2/userinfo")
def userinfo(request: Request) -> Response:
    """OpenID Connect UserInfo for a JWT access token carrying ``openid``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    if scheme.lower() != "bearer" or not value.strip():
        return JSONResponse({"error": "invalid_token", "error_description":
                             "a bearer access token is required"}, 401, headers=challenge)
    platform = _platform(request)
    with platform.session() as session:
        try:
            principal = resolve_access_token(session, value.strip(),
                                             issuer=issuer_url(request))
        except TokenRejected as exc:
            return JSONResponse({"error": "invalid_token", "error_description": str(exc)}, 401,
                                headers=challenge)
        if "openid" not in principal.scopes:
            return JSONResponse({"error": "insufficient_scope",
                                 "error_description": "the token lacks the openid scope"}, 403)
        body: dict[str, Any] = {"sub": principal.user_id}
        if "profile" in principal.scopes:
            body.update(name=principal.display_name, preferred_username=principal.username)
    return JSONResponse(body)


# --- authorization endpoint -----------------------------------------------------------------


def _session_principal(request: Request, platform: Platform) -> Principal | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with platform.session() as session:
        return resolve_token(session, cookie, kind="session")


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _authorize_error(exc: OAuthError, issuer: str) -> Response:
    if exc.redirect_uri:
        params = {"error": exc.error, "error_description": exc.description, "iss": issuer}
        if exc.state is not None:
            params["state"] = exc.state
        return RedirectResponse(_with_query(exc.redirect_uri, params), 303)
    return _error(exc)


def _describe(scope: ScopeSet) -> list[str]:
    words = {"openid": "confirm who you are", "fhirUser": "know which user you are",
             "profile": "see your name", "launch/patient": "work with one patient's record",
             "offline_access": "keep access while you are away (until you revoke it)",
             "online_access": "keep access while you are signed in", "launch": "launch"}
    verbs = {"read": "read", "search": "search", "create": "create", "update": "change",
             "delete": "delete", "export": "export", "execute": "run"}
    lines = [words.get(o, o) for o in sorted(scope.other)]
    for r in scope.resources:
        what = "all records" if r.resource == "*" else r.resource
        whose = {"patient": "of the selected patient", "user": "you can access",
                 "system": "of the organisation"}[r.context]
        acts = ", ".join(sorted({verbs[a.value] for a in r.actions}))
        lines.append(f"{acts}: {what} {whose}")
    return lines


def _consent_page(request: Request, principal: Principal, req: AuthorizationRequest,
                  status_code: int = 200, error: str | None = None) -> Response:
    from careplane.web.routes import render

    asks_patient = req.wants_patient and Role.patient not in principal.roles
    return render(request, "security/authorize.html", principal, status_code,
                  client_name=req.client.name, scopes=_describe(req.scope),
                  params=req.params, asks_patient=asks_patient, error=error,
                  redirect_host=urlsplit(req.redirect_uri).netloc)


@router.get("/oauth2/authorize", include_in_schema=False)
def authorize_page(request: Request) -> Response:
    platform = _platform(request)
    issuer = issuer_url(request)
    try:
        params = _single(list(request.query_params.multi_items()))
        with platform.session() as session:
            req = validate_authorization_request(session, params, issuer=issuer)
    except OAuthError as exc:
        return _authorize_error(exc, issuer)
    principal = _session_principal(request, platform)
    if principal is None:
        target = f"/oauth2/authorize?{urlencode(params)}"
        return RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
    return _consent_page(request, principal, req)


@router.post("/oauth2/authorize", include_in_schema=False)
async def authorize_decision(request: Request) -> Response:
    platform = _platform(request)
    issuer = issuer_url(request)
    try:
        form = await _form(request)
    except OAuthError as exc:
        return _error(exc)
    csrf = form.pop("csrf", "")
    decision = form.pop("decision", "")
    chosen_patient = form.pop("patient", "").strip() or None

    def run() -> Response:
        import secrets

        principal = _session_principal(request, platform)
        if principal is None:
            return _error(OAuthError("access_denied", "sign in first", 401))
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not csrf or not secrets.compare_digest(csrf.encode(), expected.encode()):
            return _error(OAuthError("access_denied", "missing or wrong CSRF token", 403))
        with platform.session() as session:
            try:
                req = validate_authorization_request(session, form, issuer=issuer)
                if decision != "allow":
                    raise OAuthError("access_denied", "the user declined",
                                     redirect_uri=req.redirect_uri, state=req.state)
                user = session.get(User, principal.user_id)
                assert user is not None
                try:
                    patient = patient_for(session, user, principal.org_id, chosen_patient, req)
                except OAuthError as exc:
                    if exc.error == "invalid_request":
                        return _consent_page(request, principal, req, 400, exc.description)
                    exc.redirect_uri, exc.state = req.redirect_uri, req.state
                    raise
                code = create_authorization_code(session, req, user=user,
                                                 org_id=principal.org_id, patient_id=patient)
            except OAuthError as exc:
                return _authorize_error(exc, issuer)
        params = {"code": code, "iss": issuer}
        if req.state is not None:
            params["state"] = req.state
        return RedirectResponse(_with_query(req.redirect_uri, params), 303)

    return await run_in_threadpool(run)
