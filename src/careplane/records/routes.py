"""The FHIR R4 REST API at ``/fhir``: JSON only, every error an OperationOutcome.

Handlers are thin: they read the request (body, headers, query pairs in order), open one
database transaction, call the store/search/bundle services with the authenticated
principal, and write the FHIR response headers (``ETag``, ``Last-Modified``, ``Location``).
The transaction commits before the response is built, so a client never sees a success
that was then rolled back.

Errors are caught by :class:`FhirRoute` around each handler and its dependencies (including
authentication), so a 401, a 403 from the access policy, a malformed body or an unexpected
failure all reach FHIR clients as OperationOutcomes; paths below /fhir that match no route get
the same treatment from :class:`FhirNotFound`, a middleware that acts on /fhir only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException

from careplane.deps import PlatformDep
from careplane.platform.db import DatabaseUnavailable
from careplane.records import store
from careplane.records.access import Action, check, target
from careplane.records.bundles import process_bundle
from careplane.records.capability import capability_statement
from careplane.records.config import FhirConfig
from careplane.records.errors import FhirError, Issue, operation_outcome
from careplane.records.everything import everything
from careplane.records.history import history
from careplane.records.search import run_search, run_system_search, searchset
from careplane.records.search_params import parse_search, parse_system_search
from careplane.records.spec import resource_types
from careplane.records.validation import validate_resource
from careplane.security.deps import CredentialsDep, PrincipalDep, principal_of, token_key

__all__ = ["FHIR_JSON", "FhirNotFound", "FhirRoute", "note_warnings", "router"]

log = logging.getLogger("careplane.fhir")

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json")
_STATUS_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                 405: "not-supported", 406: "not-supported", 409: "conflict", 410: "deleted",
                 412: "conflict", 413: "too-costly", 415: "not-supported", 422: "invalid",
                 429: "throttled"}


def dump_json(content: Any) -> bytes:
    """orjson, or the standard library for integers beyond 64 bits (PostgreSQL's JSONB
    writes a decimal such as 1e30 back as its integer digits)."""
    try:
        return orjson.dumps(content)
    except TypeError:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def fhir_json(content: Any, status: int = 200, headers: dict[str, str] | None = None
              ) -> Response:
    return Response(dump_json(content), status, headers=headers, media_type=FHIR_JSON)


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None
                     ) -> Response:
    return fhir_json(operation_outcome(issues), status, headers)


class FhirRoute(APIRoute):
    """An APIRoute whose every failure, from any dependency or the handler, is FHIR-shaped."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except FhirError as exc:
                return outcome_response(exc.status, exc.issues, exc.headers or None)
            except HTTPException as exc:
                code = _STATUS_CODES.get(exc.status_code, "processing")
                return outcome_response(exc.status_code, [Issue(code, str(exc.detail))],
                                        dict(exc.headers or {}) or None)
            except RequestValidationError as exc:
                issues = [Issue("invalid", f"{'.'.join(str(p) for p in e.get('loc', ()))}: "
                                f"{e.get('msg', '')}") for e in exc.errors()]
                return outcome_response(400, issues)
            except OperationalError as exc:
                if type(exc.orig).__name__ == "QueryCanceled":
                    return outcome_response(503, [Issue(
                        "too-costly", "the search ran past the server's time limit; "
                        "narrow it (more criteria, a smaller _count, fewer _include)")])
                log.error("database unavailable: %s", exc.__class__.__name__)
                return outcome_response(503, [Issue("transient", "the database is "
                                                    "unavailable; try again shortly")],
                                        {"Retry-After": "5"})
            except DatabaseUnavailable as exc:
                log.error("database unavailable: %s", exc.__class__.__name__)
                return outcome_response(503, [Issue("transient", "the database is "
                                                    "unavailable; try again shortly")],
                                        {"Retry-After": "5"})
            except Exception:
                log.exception("unhandled FHIR error on %s %s", request.method, request.url.path)
                return outcome_response(500, [Issue("exception", "internal error; quote the "
                                                    "X-Request-ID")])

        return fhir_handler


class _TypeSegment(Convertor[str]):
    """The ``{rtype}`` of a FHIR path: any segment but one that starts with a dot, so that
    ``/fhir/.well-known/smart-configuration`` (security's, mounted after this router) is
    never taken for a read. An unknown type still reaches the route, which names it."""

    regex = "[^/.][^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhir_type", _TypeSegment())

router = APIRouter(prefix="/fhir", route_class=FhirRoute, tags=["fhir"])


# -- request helpers ------------------------------------------------------------------------

def config(request: Request) -> FhirConfig:
    cfg = getattr(request.app.state, "fhir_config", None)
    if cfg is None:
        cfg = request.app.state.fhir_config = FhirConfig()
    return cfg


async def _config_dep(request: Request) -> FhirConfig:
    # Dependencies that do no I/O are async so that FastAPI runs them on the event loop
    # rather than sending each through its thread pool (a hop that costs a read ~0.2 ms).
    return config(request)


ConfigDep = Annotated[FhirConfig, Depends(_config_dep)]


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


async def negotiate(request: Request) -> None:
    """JSON only: refuse an Accept or _format that excludes it (406)."""
    accept = request.headers.get("accept", "")
    fmt = request.query_params.get("_format", "")
    if fmt and "json" not in fmt:
        raise FhirError.of(406, "not-supported", "this server speaks FHIR JSON only")
    if accept and "json" not in accept and "*/*" not in accept and "application/*" not in \
            accept:
        raise FhirError.of(406, "not-supported",
                           f"cannot answer in {accept}; this server speaks {FHIR_JSON}")


async def json_body(request: Request, cfg: ConfigDep) -> Any:
    """The request body as JSON: 415 for other media types, 413 over the limit, 400 if bad."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in _JSON_TYPES:
        raise FhirError.of(415, "not-supported",
                           f"cannot read {ctype}; send {FHIR_JSON}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cfg.max_body_bytes:
        raise FhirError.of(413, "too-costly", f"the body is larger than "
                           f"{cfg.max_body_bytes} bytes")
    raw = await request.body()
    if len(raw) > cfg.max_body_bytes:
        raise FhirError.of(413, "too-costly", f"the body is larger than "
                           f"{cfg.max_body_bytes} bytes")
    if not raw.strip():
        raise FhirError.of(400, "structure", "the request has no body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirError.of(400, "structure", f"the body is not valid JSON: {exc}") from None


BodyDep = Annotated[Any, Depends(json_body)]
Negotiated = Depends(negotiate)


def prefer(request: Request) -> dict[str, str]:
    out = {}
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def known_type(rtype: str) -> str:
    if rtype not in resource_types():
        raise FhirError.of(404, "not-supported", f"{rtype!r} is not an R4 resource type")
    return rtype


def _http_date(stored: store.StoredResource) -> str:
    return format_datetime(stored.last_updated, usegmt=True)


_WARNINGS = "careplane.fhir.warnings"


def note_warnings(session: Session, messages: list[str]) -> None:
    """Warnings about a write that is kept all the same (the parts of a Consent that cannot be
    enforced): the client gets them as OperationOutcome issues of severity ``warning`` when
    it asks for ``Prefer: return=OperationOutcome``, as FHIR's RESTful API describes."""
    session.info.setdefault(_WARNINGS, []).extend(messages)


def _warnings(session: Session) -> list[str]:
    found: list[str] = session.info.pop(_WARNINGS, [])
    return found


def resource_response(request: Request, stored: store.StoredResource, base: str, *,
                      status: int = 200, location: bool = False,
                      warnings: list[str] | None = None) -> Response:
    headers = {"ETag": stored.etag, "Last-Modified": _http_date(stored)}
    if location:
        headers["Location"] = f"{base}/{stored.location}"
    mode = prefer(request).get("return", "representation").lower()  # FHIR: OperationOutcome
    if mode == "minimal":
        return Response(status_code=status, headers=headers)
    if mode == "operationoutcome":
        return outcome_response(status, [Issue("informational", f"{stored.resource_type}/"
                                               f"{stored.id} version {stored.version}",
                                               "information"),
                                         *(Issue("not-supported", w, "warning")
                                           for w in warnings or ())], headers)
    return fhir_json(stored.content, status, headers)


def _pairs(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k != "_format"]


def _strict(request: Request) -> bool:
    return prefer(request).get("handling") == "strict"


# -- capability -----------------------------------------------------------------------------

@router.get("/metadata", dependencies=[Negotiated])
def metadata(request: Request) -> Response:
    return fhir_json(capability_statement(base_url(request)))


# -- system level ---------------------------------------------------------------------------

@router.post("", dependencies=[Negotiated])
def bundle(request: Request, platform: PlatformDep, principal: PrincipalDep, body: BodyDep,
           cfg: ConfigDep) -> Response:
    base = base_url(request)
    with platform.session() as session:
        result = process_bundle(session, principal, body, base=base,
                                max_entries=cfg.max_bundle_entries,
                                minimal=prefer(request).get("return") == "minimal")
        warnings = _warnings(session)
    if warnings:
        _entry_warnings(result, base, warnings)
    return fhir_json(result)


def _entry_warnings(result: dict[str, Any], base: str, warnings: list[str]) -> None:
    """Each written entry's warnings (they name it: ``Consent/ID: ...``) as its
    ``response.outcome``, where FHIR puts the hints and warnings of a bundle entry: always,
    since the response Bundle has no other place for them."""
    for entry in result["entry"]:
        location = str(entry["response"].get("location") or "").removeprefix(f"{base}/")
        parts = location.split("/")
        if len(parts) < 2:
            continue
        named = f"{parts[0]}/{parts[1]}: "
        mine = [w for w in warnings if w.startswith(named)]
        if mine:
            entry["response"]["outcome"] = operation_outcome(
                [Issue("not-supported", w, "warning") for w in mine])


def _system_search(request: Request, platform: PlatformDep, principal: PrincipalDep,
                   pairs: list[tuple[str, str]], cfg: FhirConfig) -> Response:
    types, requests = parse_system_search(pairs, strict=_strict(request))
    base = base_url(request)
    with platform.session() as session:
        result = run_system_search(session, principal, types, requests, base=base,
                                   timeout_ms=cfg.search_timeout_ms)
    return fhir_json(searchset(result, requests[0], base=base, path=""))


@router.get("", dependencies=[Negotiated])
def search_system(request: Request, platform: PlatformDep, principal: PrincipalDep,
                  cfg: ConfigDep) -> Response:
    """A search across types: ``GET /fhir?_type=Patient,Observation&_lastUpdated=gt...``."""
    return _system_search(request, platform, principal, _pairs(request), cfg)


@router.post("/_search", dependencies=[Negotiated])
async def search_system_post(request: Request, platform: PlatformDep, principal: PrincipalDep,
                             cfg: ConfigDep) -> Response:
    form = await _form(request)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_system_search, request, platform, principal,
                                   _pairs(request) + form, cfg)


async def _form(request: Request) -> list[tuple[str, str]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise FhirError.of(415, "not-supported", "_search takes a form-encoded body")
    return parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


@router.get("/_history", dependencies=[Negotiated])
def system_history(request: Request, platform: PlatformDep, principal: PrincipalDep
                   ) -> Response:
    with platform.session() as session:
        result = history(session, principal, _pairs(request), base=base_url(request))
    return fhir_json(result)


# -- type level -----------------------------------------------------------------------------

def _search(request: Request, platform: PlatformDep, principal: PrincipalDep, rtype: str,
            pairs: list[tuple[str, str]], compartment: tuple[str, str] | None = None,
            path: str | None = None) -> Response:
    known_type(rtype)
    req = parse_search(rtype, pairs, strict=_strict(request))
    base = base_url(request)
    with platform.session() as session:
        result = run_search(session, principal, req, base=base, compartment=compartment,
                            cross_org=True, timeout_ms=config(request).search_timeout_ms)
    return fhir_json(searchset(result, req, base=base, path=path or rtype))


@router.get("/{rtype:fhir_type}/_history", dependencies=[Negotiated])
def type_history(rtype: str, request: Request, platform: PlatformDep, principal: PrincipalDep
                 ) -> Response:
    known_type(rtype)
    with platform.session() as session:
        result = history(session, principal, _pairs(request), base=base_url(request),
                         resource_type=rtype)
    return fhir_json(result)


@router.post("/{rtype:fhir_type}/_search", dependencies=[Negotiated])
async def search_post(rtype: str, request: Request, platform: PlatformDep,
                      principal: PrincipalDep) -> Response:
    form = await _form(request)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_search, request, platform, principal, rtype,
                                   _pairs(request) + form)


@router.get("/{rtype:fhir_type}", dependencies=[Negotiated])
def search_type(rtype: str, request: Request, platform: PlatformDep, principal: PrincipalDep
                ) -> Response:
    return _search(request, platform, principal, rtype, _pairs(request))


@router.post("/{rtype:fhir_type}", dependencies=[Negotiated])
def create(rtype: str, request: Request, platform: PlatformDep, principal: PrincipalDep,
           body: BodyDep) -> Response:
    known_type(rtype)
    base = base_url(request)
    condition = request.headers.get("if-none-exist")
    with platform.session() as session:
        if condition:
            validate_resource(body, rtype)
            found = _conditional(session, principal, rtype, condition.lstrip("?"))
            if len(found) > 1:
                raise FhirError.of(412, "multiple-matches", f"If-None-Exist matches "
                                   f"{len(found)} resources")
            if found:
                stored = store.read(session, principal, rtype, found[0])
                return resource_response(request, stored, base, status=200)
        stored = store.create(session, principal, body, resource_type=rtype)
        warnings = _warnings(session)
    return resource_response(request, stored, base, status=201, location=True,
                             warnings=warnings)


def _conditional(session: Any, principal: PrincipalDep, rtype: str, query: str) -> list[str]:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise FhirError.of(400, "invalid", "a condition needs at least one search parameter")
    req = parse_search(rtype, [*pairs, ("_count", "2"), ("_total", "none")], strict=True)
    return [f.id for f in run_search(session, principal, req).matches]


@router.put("/{rtype:fhir_type}", dependencies=[Negotiated])
def conditional_update(rtype: str, request: Request, platform: PlatformDep,
                       principal: PrincipalDep, body: BodyDep) -> Response:
    known_type(rtype)
    base = base_url(request)
    with platform.session() as session:
        found = _conditional(session, principal, rtype, request.url.query)
        if len(found) > 1:
            raise FhirError.of(412, "multiple-matches",
                               f"the condition matches {len(found)} resources")
        if found:
            rid = found[0]
            if isinstance(body, dict) and body.get("id") not in (None, rid):
                raise FhirError.of(400, "invalid", f"the body's id {body.get('id')!r} is not "
                                   f"the id of the matching resource ({rid})")
        else:
            given = body.get("id") if isinstance(body, dict) else None
            rid = given if isinstance(given, str) and given else store.new_id()
        if isinstance(body, dict):
            body = {**body, "id": rid}
        stored, created = store.update(session, principal, rtype, rid, body,
                                       if_match=request.headers.get("if-match"))
        warnings = _warnings(session)
    return resource_response(request, stored, base, status=201 if created else 200,
                             location=created, warnings=warnings)


@router.delete("/{rtype:fhir_type}", dependencies=[Negotiated])
def conditional_delete(rtype: str, request: Request, platform: PlatformDep,
                       principal: PrincipalDep) -> Response:
    known_type(rtype)
    with platform.session() as session:
        found = _conditional(session, principal, rtype, request.url.query)
        if len(found) > 1:
            raise FhirError.of(412, "multiple-matches",
                               f"the condition matches {len(found)} resources")
        if found:
            store.delete_resource(session, principal, rtype, found[0])
    return Response(status_code=204)


@router.post("/{rtype:fhir_type}/$validate", dependencies=[Negotiated])
def validate(rtype: str, platform: PlatformDep, body: BodyDep, principal: PrincipalDep
             ) -> Response:
    known_type(rtype)
    with platform.session() as session:
        check(session, principal, Action.execute, target(rtype, principal.org_id),
              detail={"operation": "$validate"})
    resource = body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for p in body.get("parameter") or []:
            if isinstance(p, dict) and p.get("name") == "resource":
                resource = p.get("resource")
    try:
        validate_resource(resource, rtype)
        from careplane.records.indexer import index_resource

        index_resource(resource)
    except FhirError as exc:
        return outcome_response(200, exc.issues)
    return outcome_response(200, [Issue("informational", "the resource is valid",
                                        "information")])


# -- instance level -------------------------------------------------------------------------

@router.get("/Patient/{rid}/$everything", dependencies=[Negotiated])
def patient_everything(rid: str, request: Request, platform: PlatformDep,
                       principal: PrincipalDep) -> Response:
    with platform.session() as session:
        result = everything(session, principal, rid, _pairs(request), base=base_url(request))
    return fhir_json(result)


@router.get("/{rtype:fhir_type}/{rid}/_history/{vid}", dependencies=[Negotiated])
def vread(rtype: str, rid: str, vid: str, request: Request, platform: PlatformDep,
          credentials: CredentialsDep) -> Response:
    with platform.read_session() as session:  # as read() below
        principal = principal_of(platform, credentials, session=session)
        known_type(rtype)
        stored = store.vread(session, principal, rtype, rid, vid)
    return resource_response(request, stored, base_url(request))


@router.get("/{rtype:fhir_type}/{rid}/_history", dependencies=[Negotiated])
def instance_history(rtype: str, rid: str, request: Request, platform: PlatformDep,
                     principal: PrincipalDep) -> Response:
    known_type(rtype)
    with platform.session() as session:
        result = history(session, principal, _pairs(request), base=base_url(request),
                         resource_type=rtype, rid=rid)
    return fhir_json(result)


@router.get("/{rtype:fhir_type}/{rid}", dependencies=[Negotiated])
def read(rtype: str, rid: str, request: Request, platform: PlatformDep,
         credentials: CredentialsDep) -> Response:
    # The hot path: the principal is resolved in this handler's worker thread rather than in
    # a dependency of its own; the token, the resource and the patient's consents are read
    # in one statement (store.read_ahead), in autocommit (no BEGIN/COMMIT); the access is
    # audited through the queued writer.
    with platform.read_session() as session:
        key = token_key(credentials, session)
        if key is not None:  # a token row to find (not an external provider's, nor a bad JWT)
            store.read_ahead(session, rtype, rid, key)
        principal = principal_of(platform, credentials, session=session)
        known_type(rtype)
        stored = store.read(session, principal, rtype, rid)
    etag = request.headers.get("if-none-match")
    if etag and etag.strip() == stored.etag:
        return Response(status_code=304, headers={"ETag": stored.etag})
    return resource_response(request, stored, base_url(request))


@router.put("/{rtype:fhir_type}/{rid}", dependencies=[Negotiated])
def update(rtype: str, rid: str, request: Request, platform: PlatformDep,
           principal: PrincipalDep, body: BodyDep) -> Response:
    known_type(rtype)
    with platform.session() as session:
        stored, created = store.update(session, principal, rtype, rid, body,
                                       if_match=request.headers.get("if-match"))
        warnings = _warnings(session)
    return resource_response(request, stored, base_url(request),
                             status=201 if created else 200, location=created,
                             warnings=warnings)


@router.patch("/{rtype:fhir_type}/{rid}", dependencies=[Negotiated])
def patch(rtype: str, rid: str, request: Request, platform: PlatformDep,
          principal: PrincipalDep, body: BodyDep) -> Response:
    known_type(rtype)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json-patch+json":
        if not isinstance(body, list):
            raise FhirError.of(400, "structure", "a JSON Patch is an array of operations")
    elif ctype in ("application/fhir+json", "application/json"):
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError.of(400, "structure", "a FHIRPath Patch is a Parameters resource")
    else:
        raise FhirError.of(415, "not-supported", "PATCH takes application/json-patch+json "
                           "(JSON Patch) or application/fhir+json (FHIRPath Patch)")
    with platform.session() as session:
        stored = store.patch(session, principal, rtype, rid, body,
                             if_match=request.headers.get("if-match"))
        warnings = _warnings(session)
    return resource_response(request, stored, base_url(request), warnings=warnings)


@router.delete("/{rtype:fhir_type}/{rid}", dependencies=[Negotiated])
def delete(rtype: str, rid: str, request: Request, platform: PlatformDep,
           principal: PrincipalDep) -> Response:
    known_type(rtype)
    with platform.session() as session:
        stored = store.delete_resource(session, principal, rtype, rid,
                                       if_match=request.headers.get("if-match"))
    headers = {"ETag": stored.etag} if stored else {}
    return Response(status_code=204, headers=headers)


@router.get("/{ctype}/{cid}/{rtype:fhir_type}", dependencies=[Negotiated])
def compartment_search(ctype: str, cid: str, rtype: str, request: Request,
                       platform: PlatformDep, principal: PrincipalDep) -> Response:
    known_type(ctype)
    return _search(request, platform, principal, rtype, _pairs(request),
                   compartment=(ctype, cid), path=f"{ctype}/{cid}/{rtype}")


class FhirNotFound:
    """ASGI middleware: a 404/405 below /fhir that no FHIR route produced becomes an
    OperationOutcome. Other paths pass straight through, untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if not (path == "/fhir" or path.startswith("/fhir/")):
            await self.app(scope, receive, send)
            return
        replaced = False

        async def guarded_send(message: Any) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                ctype = headers.get(b"content-type", b"").decode("latin-1")
                if message["status"] in (404, 405) and not ctype.startswith(FHIR_JSON):
                    replaced = True
                    verb = "not a FHIR interaction" if message["status"] == 404 else \
                        "a method this resource does not support"
                    body = orjson.dumps(operation_outcome([Issue(
                        "not-supported", f"{scope.get('method')} {path} is {verb}")]))
                    await send({"type": "http.response.start", "status": message["status"],
                                "headers": [(b"content-type", FHIR_JSON.encode()),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            elif message["type"] == "http.response.body" and replaced:
                return
            await send(message)

        await self.app(scope, receive, guarded_send)
