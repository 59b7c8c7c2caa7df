"""DICOMweb at /dicomweb (PS3.18): STOW-RS, QIDO-RS, WADO-RS, rendered images and thumbnails.

Every request is authenticated (bearer token, or the web session for the viewer's images) and
passes one access decision per study touched — ``imaging:study`` targets — which also writes
the audit record. An instance that cannot be stored is reported in the STOW-RS response with
its failure reason while the rest of the request is kept; a malformed request is a 4xx that
says what is wrong.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep
from careplane.imaging.attributes import Level
from careplane.imaging.config import imaging_settings
from careplane.imaging.dicomjson import with_base
from careplane.imaging.multipart import (
    MultipartError,
    media_params,
    multipart_body,
    new_boundary,
    parse_multipart,
)
from careplane.imaging.part10 import FailureReason
from careplane.imaging.qido import QidoRequest, parse_qido, render_rows_text
from careplane.imaging.query import QueryError, build_select
from careplane.imaging.render import RenderError, Window, render_frame
from careplane.imaging.research import research_scope
from careplane.imaging.store import (
    BlobTee,
    StoredInstance,
    StoreFailure,
    discard_unreferenced,
    store_instance,
)
from careplane.imaging.wado import (
    InstanceRef,
    NotAcceptable,
    RetrieveError,
    accepted,
    bulk_value,
    frame_bytes,
    instance_refs,
    locate_study,
    opener,
    transcoded,
)
from careplane.platform.blobs import BlobRef
from careplane.platform.context import Platform
from careplane.security.deps import PrincipalDep
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["router"]

log = logging.getLogger(__name__)

class _CorsRoute(APIRoute):
    """Lets the configured browser origins (``CAREPLANE_DICOM_CORS_ORIGINS``) read responses.

    A viewer such as OHIF, served from another origin, calls DICOMweb with a bearer token;
    the browser only hands it the answers when they carry these headers.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_cors(request: Request) -> Response:
            response = await handler(request)
            origin = request.headers.get("origin")
            if origin and origin in imaging_settings().cors_origins:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = "Content-Type, Warning"
                response.headers.append("Vary", "Origin")
            return response

        return with_cors


router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], route_class=_CorsRoute)


@router.options("/{path:path}", include_in_schema=False)
def preflight(path: str, request: Request) -> Response:
    """CORS preflight: no credentials are involved, only what may be sent."""
    origin = request.headers.get("origin")
    if not origin or origin not in imaging_settings().cors_origins:
        return Response(status_code=204)
    return Response(status_code=204, headers={
        "Access-Control-Allow-Origin": origin, "Vary": "Origin",
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept",
        "Access-Control-Max-Age": "600"})

DICOM_JSON = "application/dicom+json"
_PART_TYPES = ("application/dicom", "application/octet-stream")
UIDPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$")]
_PAGE_DIRECT = 1000  # up to this many results are built in one piece, more are streamed
_STREAM_BATCH = 1000


def _base(request: Request) -> str:
    """The absolute DICOMweb base URL, for RetrieveURL and BulkDataURI values.

    Some clients (dicomweb-client among them) send a Host header without the port; when no
    proxy speaks for the request, the port the connection arrived on is put back.
    """
    base = request.base_url
    server = request.scope.get("server")
    proxied = any(h in request.headers for h in ("x-forwarded-host", "x-forwarded-proto",
                                                 "forwarded"))
    if base.port is None and server and not proxied:
        port = int(server[1])
        if port != (443 if base.scheme == "https" else 80):
            base = base.replace(port=port)
    return str(base).rstrip("/") + "/dicomweb"


def _fail(exc: RetrieveError | QueryError | RenderError) -> HTTPException:
    code = exc.status if isinstance(exc, RetrieveError) else status.HTTP_400_BAD_REQUEST
    if isinstance(exc, RenderError):
        code = status.HTTP_404_NOT_FOUND if "does not exist" in str(exc) else 406
    return HTTPException(code, str(exc))


# --------------------------------------------------------------------------- STOW-RS

def _uid_json(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _stow_response(base: str, study_uid: str | None,
                   results: list[StoredInstance | StoreFailure]) -> Response:
    body: dict[str, Any] = {}
    stored = [r for r in results if isinstance(r, StoredInstance)]
    failed = [r for r in results if isinstance(r, StoreFailure)]
    if study_uid is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    elif stored and len({r.study_instance_uid for r in stored}) == 1:
        body["00081190"] = {"vr": "UR", "Value": [
            f"{base}/studies/{stored[0].study_instance_uid}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [{
            "00000902": {"vr": "LO", "Value": [f.message[:64]]},
            "00081150": _uid_json(f.sop_class_uid),
            "00081155": _uid_json(f.sop_instance_uid),
            "00081197": {"vr": "US", "Value": [f.reason]},
        } for f in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [{
            "00081150": _uid_json(r.sop_class_uid),
            "00081155": _uid_json(r.sop_instance_uid),
            "00081190": {"vr": "UR", "Value": [
                f"{base}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
                f"/instances/{r.sop_instance_uid}"]},
        } for r in stored]}
    code = 200 if not failed else (202 if stored else 409)
    return Response(orjson.dumps(body), code, media_type=DICOM_JSON)


async def _stow(request: Request, platform: Platform, principal: Any,
                study_uid: str | None) -> Response:
    media, params = media_params(request.headers.get("content-type", ""))
    limit = platform.settings.max_upload_bytes
    results: list[StoredInstance | StoreFailure] = []
    unused: list[str] = []  # files written for instances that were not kept
    session: Session = platform.db.sessions()

    def store(body: Any, written: BlobRef | None = None) -> StoredInstance | StoreFailure:
        return store_instance(session, platform.blobs, principal, body, origin="stow-rs",
                              study_instance_uid=study_uid, written=written, unused=unused)

    def store_written(tee: BlobTee) -> StoredInstance | StoreFailure:
        # The part went to the blob store while it arrived: check and index it from memory
        # while the writer finishes, or (a large part) from the store once it is written.
        kept = tee.close()
        if kept is not None:
            return store_instance(session, platform.blobs, principal, kept, origin="stow-rs",
                                  study_instance_uid=study_uid, written=tee.writing,
                                  unused=unused)
        written = tee.finish()
        if written is None:
            return StoreFailure(FailureReason.out_of_resources,
                                "the instance could not be written to storage")
        with platform.blobs.open(written.sha256) as body:
            return store(body, written)

    try:
        if media == "application/dicom":
            with tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024) as spool:
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"the body exceeds {limit} bytes")
                    spool.write(chunk)
                spool.seek(0)
                results.append(await run_in_threadpool(store, spool))
        elif media == "multipart/related":
            part_type = params.get("type", "application/dicom").lower()
            if part_type != "application/dicom":
                raise HTTPException(415, f"parts of type {part_type!r} are not accepted; "
                                    "send Part-10 files as application/dicom")
            def tee(headers: dict[str, str]) -> BlobTee | None:
                kind = headers.get("content-type")
                if kind and media_params(kind)[0] not in _PART_TYPES:
                    return None
                return BlobTee(platform.blobs, imaging_settings().max_instance_bytes)

            async for part in parse_multipart(request.stream(), params.get("boundary", ""),
                                              max_bytes=limit, sink=tee):
                try:
                    kind = part.headers.get("content-type")
                    if kind and media_params(kind)[0] not in _PART_TYPES:
                        results.append(StoreFailure(
                            FailureReason.cannot_understand,
                            f"a part of type {media_params(kind)[0]!r} is not a DICOM file"))
                        continue
                    if isinstance(part.sink, BlobTee):
                        results.append(await run_in_threadpool(store_written, part.sink))
                    else:
                        results.append(await run_in_threadpool(store, part.body))
                finally:
                    part.close()
        else:
            raise HTTPException(415, "STOW-RS takes multipart/related; "
                                'type="application/dicom" (or one application/dicom file)')
        if not results:
            raise HTTPException(400, "the request holds no DICOM instances")
        await run_in_threadpool(session.commit)
    except MultipartError as exc:
        await run_in_threadpool(session.rollback)
        raise HTTPException(400, f"the multipart body is malformed: {exc}") from None
    except BaseException:
        await run_in_threadpool(session.rollback)
        raise
    finally:
        await run_in_threadpool(session.close)
        if unused:
            await run_in_threadpool(discard_unreferenced, platform.db, platform.blobs, unused)
    platform.events.poke()
    return _stow_response(_base(request), study_uid, results)


@router.post("/studies")
async def stow_studies(request: Request, platform: PlatformDep,
                       principal: PrincipalDep) -> Response:
    """Store instances (STOW-RS)."""
    return await _stow(request, platform, principal, None)


@router.post("/studies/{study}")
async def stow_study(study: UIDPath, request: Request, platform: PlatformDep,
                     principal: PrincipalDep) -> Response:
    """Store instances of one study (STOW-RS); instances of other studies are refused."""
    return await _stow(request, platform, principal, study)


# --------------------------------------------------------------------------- QIDO-RS

def _query(request: Request, platform: Platform, principal: Any, level: Level,
           study: str | None = None, series: str | None = None) -> Response:
    try:
        qido = parse_qido(list(request.query_params.multi_items()), level,
                          study_uid=study, series_uid=series)
    except QueryError as exc:
        raise _fail(exc) from None
    org_id = principal.org_id
    base = _base(request)
    criteria = qido.criteria
    headers = {}
    if qido.ignored:
        headers["Warning"] = ('299 careplane "The following attributes are not supported for '
                              f'matching at this level: {", ".join(qido.ignored)}"')
    with platform.session() as session:
        projects = research_scope(session, principal)
        if projects is None:
            authorize(session, principal, Action.search,
                      Target(kind="imaging:study", org_id=org_id, id=study))
        else:  # a researcher queries the de-identified studies of the projects granted
            granted: list[tuple[str, str | None]] = [*projects] or [(org_id, None)]
            for owner, project in granted:  # none granted: the policy says why not
                authorize(session, principal, Action.search,
                          Target(kind="imaging:study", org_id=owner, id=study,
                                 deidentified=True, workspace_id=project))
        if criteria.limit is not None and criteria.limit <= _PAGE_DIRECT:
            try:
                rows = session.execute(build_select(criteria, org_id, projects)).all()
            except QueryError as exc:
                raise _fail(exc) from None
            body = "[" + ",".join(render_rows_text(session, qido, rows, base)) + "]"
            return Response(body.encode(), media_type=DICOM_JSON, headers=headers)
        try:
            query = build_select(criteria, org_id, projects)
        except QueryError as exc:
            raise _fail(exc) from None
    return StreamingResponse(_stream(platform, qido, query, base), media_type=DICOM_JSON,
                             headers=headers)


def _stream(platform: Platform, qido: QidoRequest, query: Any, base: str) -> Iterator[bytes]:
    yield b"["
    first = True
    with platform.db.session() as session:
        result = session.execute(query.execution_options(yield_per=_STREAM_BATCH))
        for batch in result.partitions():
            items = ",".join(render_rows_text(session, qido, batch, base)).encode()
            if items:  # one chunk per batch: each chunk costs a trip through the thread pool
                yield items if first else b"," + items
                first = False
    yield b"]"


@router.get("/studies")
def search_studies(request: Request, platform: PlatformDep, principal: PrincipalDep
                   ) -> Response:
    """Search for studies (QIDO-RS)."""
    return _query(request, platform, principal, Level.study)


@router.get("/series")
def search_all_series(request: Request, platform: PlatformDep, principal: PrincipalDep
                      ) -> Response:
    return _query(request, platform, principal, Level.series)


@router.get("/instances")
def search_all_instances(request: Request, platform: PlatformDep, principal: PrincipalDep
                         ) -> Response:
    return _query(request, platform, principal, Level.instance)


@router.get("/studies/{study}/series")
def search_series(study: UIDPath, request: Request, platform: PlatformDep,
                  principal: PrincipalDep) -> Response:
    return _query(request, platform, principal, Level.series, study)


@router.get("/studies/{study}/instances")
def search_study_instances(study: UIDPath, request: Request, platform: PlatformDep,
                           principal: PrincipalDep) -> Response:
    return _query(request, platform, principal, Level.instance, study)


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(study: UIDPath, series: UIDPath, request: Request,
                     platform: PlatformDep, principal: PrincipalDep) -> Response:
    return _query(request, platform, principal, Level.instance, study, series)


# --------------------------------------------------------------------------- WADO-RS

def _refs(platform: Platform, principal: Any, study: str, series: str | None = None,
          instance: str | None = None) -> list[InstanceRef]:
    try:
        with platform.session() as session:
            found = locate_study(session, principal, study)
            return instance_refs(session, found, series, instance)
    except RetrieveError as exc:
        raise _fail(exc) from None


def _retrieve(request: Request, platform: Platform, principal: Any, study: str,
              series: str | None = None, instance: str | None = None) -> Response:
    try:
        choice = accepted(request.headers.get("accept"), ["application/dicom"],
                          single=instance is not None)
    except RetrieveError as exc:
        raise _fail(exc) from None
    refs = _refs(platform, principal, study, series, instance)
    blobs = platform.blobs
    # Transcode (or check that it is possible) before the first byte goes out.
    bodies = []
    for ref in refs:
        try:
            converted = transcoded(blobs, ref, choice.transfer_syntax)
        except RetrieveError as exc:
            raise _fail(exc) from None
        bodies.append((ref, converted))

    def chunks(ref: InstanceRef, converted: Iterator[bytes] | None) -> Iterator[bytes]:
        return converted if converted is not None else blobs.iter_bytes(ref.blob_sha256)

    def syntax(ref: InstanceRef) -> str:
        if choice.transfer_syntax in (None, "*") and choice.transfer_syntax is None:
            return "1.2.840.10008.1.2.1"
        return ref.transfer_syntax_uid if choice.transfer_syntax == "*" \
            else str(choice.transfer_syntax)

    if not choice.multipart:
        ref, converted = bodies[0]
        return StreamingResponse(chunks(ref, converted), media_type=(
            f"application/dicom; transfer-syntax={syntax(ref)}"))
    boundary = new_boundary()
    parts = ((({"Content-Type": f"application/dicom; transfer-syntax={syntax(ref)}"}
               | ({"Content-Length": str(ref.size)} if converted is None else {})),
              chunks(ref, converted)) for ref, converted in bodies)
    return StreamingResponse(
        multipart_body(parts, boundary),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


@router.get("/studies/{study}")
def retrieve_study(study: UIDPath, request: Request, platform: PlatformDep,
                   principal: PrincipalDep) -> Response:
    """Retrieve a study's instances (WADO-RS), multipart/related; type=application/dicom."""
    return _retrieve(request, platform, principal, study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(study: UIDPath, series: UIDPath, request: Request,
                    platform: PlatformDep, principal: PrincipalDep) -> Response:
    return _retrieve(request, platform, principal, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(study: UIDPath, series: UIDPath, instance: UIDPath, request: Request,
                      platform: PlatformDep, principal: PrincipalDep) -> Response:
    return _retrieve(request, platform, principal, study, series, instance)


def _metadata(request: Request, platform: Platform, principal: Any, study: str,
              series: str | None = None, instance: str | None = None) -> Response:
    refs = _refs(platform, principal, study, series, instance)
    base = _base(request)
    items = [with_base(ref.metadata_json, f"{base}/studies/{ref.study_instance_uid}/series/"
                       f"{ref.series_instance_uid}/instances/{ref.sop_instance_uid}")
             for ref in refs]
    return Response(("[" + ",".join(items) + "]").encode(), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata")
def study_metadata(study: UIDPath, request: Request, platform: PlatformDep,
                   principal: PrincipalDep) -> Response:
    """The headers of a study's instances as DICOM JSON, bulk data by BulkDataURI."""
    return _metadata(request, platform, principal, study)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: UIDPath, series: UIDPath, request: Request,
                    platform: PlatformDep, principal: PrincipalDep) -> Response:
    return _metadata(request, platform, principal, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(study: UIDPath, series: UIDPath, instance: UIDPath, request: Request,
                      platform: PlatformDep, principal: PrincipalDep) -> Response:
    return _metadata(request, platform, principal, study, series, instance)


def _frame_numbers(frames: str) -> list[int]:
    try:
        numbers = [int(f) for f in frames.split(",") if f.strip()]
    except ValueError:
        raise HTTPException(400, "frames are a comma-separated list of numbers from 1") from None
    if not numbers or len(numbers) > 10000:
        raise HTTPException(400, "frames are a comma-separated list of numbers from 1")
    return numbers


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
def retrieve_frames(study: UIDPath, series: UIDPath, instance: UIDPath,
                    frames: Annotated[str, Path(max_length=20000)], request: Request,
                    platform: PlatformDep, principal: PrincipalDep) -> Response:
    """Frames as multipart/related: native pixels (octet-stream) or, on request, as stored."""
    numbers = _frame_numbers(frames)
    ref = _refs(platform, principal, study, series, instance)[0]
    from careplane.imaging.wado import FRAME_MEDIA_TYPES

    stored_type = FRAME_MEDIA_TYPES.get(ref.transfer_syntax_uid, "application/octet-stream")
    offers = ["application/octet-stream"] + (
        [stored_type] if stored_type != "application/octet-stream" else [])
    try:
        choice = accepted(request.headers.get("accept"), offers, single=len(numbers) == 1)
        as_stored = choice.media_type != "application/octet-stream" or \
            choice.transfer_syntax == "*"
        media, data = frame_bytes(platform.blobs, ref, numbers, as_stored=as_stored)
    except RetrieveError as exc:
        raise _fail(exc) from None
    syntax = ref.transfer_syntax_uid if media != "application/octet-stream" \
        else "1.2.840.10008.1.2.1"
    if not choice.multipart:
        return Response(data[0], media_type=media)
    boundary = new_boundary()
    parts = (({"Content-Type": f"{media}; transfer-syntax={syntax}",
               "Content-Length": str(len(frame))}, [frame]) for frame in data)
    return StreamingResponse(multipart_body(parts, boundary),
                             media_type=f'multipart/related; type="{media}"; '
                                        f'boundary={boundary}')


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{path:path}")
def retrieve_bulk(study: UIDPath, series: UIDPath, instance: UIDPath, path: str,
                  request: Request, platform: PlatformDep, principal: PrincipalDep
                  ) -> Response:
    """The value of one bulk data element (the BulkDataURI of the metadata)."""
    ref = _refs(platform, principal, study, series, instance)[0]
    try:
        choice = accepted(request.headers.get("accept"), ["application/octet-stream"],
                          single=True)
        value = bulk_value(platform.blobs, ref, path)
    except RetrieveError as exc:
        raise _fail(exc) from None
    if not choice.multipart:
        return Response(value, media_type="application/octet-stream")
    boundary = new_boundary()
    return StreamingResponse(
        multipart_body([({"Content-Type": "application/octet-stream",
                          "Content-Length": str(len(value))}, [value])], boundary),
        media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


# --------------------------------------------------------------------- rendered, thumbnail

def _image_type(request: Request) -> str:
    wanted = request.query_params.get("accept") or request.headers.get("accept") or ""
    for item in wanted.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("image/jpeg", "image/png"):
            return media
        if media in ("image/*", "*/*"):
            return "image/jpeg"
    if wanted.strip():
        raise HTTPException(406, "rendered images are offered as image/jpeg or image/png")
    return "image/jpeg"


def _window(value: str | None) -> Window | None:
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise HTTPException(400, "window is center,width[,function]") from None
    function = parts[2].upper() if len(parts) > 2 and parts[2] else "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
        raise HTTPException(400, "window function is linear, linear-exact or sigmoid and "
                                 "the width is positive")
    return Window(center, width, function)


def _viewport(value: str | None, default: tuple[int, int] | None) -> tuple[int, int] | None:
    if not value:
        return default
    try:
        parts = [int(float(p)) for p in value.split(",")[:2]]
    except ValueError:
        raise HTTPException(400, "viewport is width,height in pixels") from None
    if len(parts) != 2 or not all(0 < p <= 16384 for p in parts):
        raise HTTPException(400, "viewport is width,height in pixels")
    return parts[0], parts[1]


def _rendered(request: Request, ref: InstanceRef, platform: Platform, frame: int,
              viewport: tuple[int, int] | None, window: Window | None) -> Response:
    media = _image_type(request)
    quality_text = request.query_params.get("quality", "90")
    try:
        quality = int(quality_text)
    except ValueError:
        raise HTTPException(400, "quality is a number from 1 to 100") from None
    try:
        image = render_frame(ref.blob_sha256, opener(platform.blobs, ref), frame - 1,
                             media_type=media, window=window, viewport=viewport,
                             quality=quality)
    except RenderError as exc:
        raise _fail(exc) from None
    return Response(image, media_type=media, headers={"Cache-Control": "private, max-age=300"})


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
def rendered_instance(study: UIDPath, series: UIDPath, instance: UIDPath, request: Request,
                      platform: PlatformDep, principal: PrincipalDep,
                      window: str | None = None, viewport: str | None = None) -> Response:
    """The first frame as JPEG or PNG, with an optional window (center,width[,function])."""
    ref = _refs(platform, principal, study, series, instance)[0]
    return _rendered(request, ref, platform, 1, _viewport(viewport, None), _window(window))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
def rendered_frame(study: UIDPath, series: UIDPath, instance: UIDPath,
                   frame: Annotated[int, Path(ge=1)], request: Request,
                   platform: PlatformDep, principal: PrincipalDep,
                   window: str | None = None, viewport: str | None = None) -> Response:
    ref = _refs(platform, principal, study, series, instance)[0]
    return _rendered(request, ref, platform, frame, _viewport(viewport, None), _window(window))


_PIXEL_TAGS = ('"7FE00010"', '"7FE00008"', '"7FE00009"')


def _rendered_part_type(request: Request) -> str:
    """The image type of each part of a rendered study or series: the ``type`` of an accepted
    multipart/related, or an image type accepted directly (JPEG when nothing is said)."""
    wanted = request.query_params.get("accept") or request.headers.get("accept") or ""
    for item in wanted.split(","):
        media, params = media_params(item)
        if media == "multipart/related":
            media = params.get("type", "image/jpeg").lower()
        if media in ("image/jpeg", "image/png"):
            return media
        if media in ("image/*", "*/*", "multipart/*"):
            return "image/jpeg"
    if wanted.strip():
        raise HTTPException(406, 'rendered studies and series are offered as multipart/related; '
                                 'type="image/jpeg" or type="image/png"')
    return "image/jpeg"


def _rendered_many(request: Request, platform: Platform, principal: Any, study: str,
                   series: str | None, window: str | None, viewport: str | None) -> Response:
    """Every frame of every image instance, rendered, one part each (PS3.18 rendered study or
    series), in series and instance order; each part names its frame's rendered URL."""
    media = _rendered_part_type(request)
    chosen_window, size = _window(window), _viewport(viewport, None)
    refs = [r for r in _refs(platform, principal, study, series)
            if any(tag in r.metadata_json for tag in _PIXEL_TAGS)]
    if not refs:
        raise HTTPException(404, "no instance with pixel data to render")
    base = _base(request)

    def parts() -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
        for ref in refs:
            for frame in range(ref.number_of_frames or 1):
                try:
                    image = render_frame(ref.blob_sha256, opener(platform.blobs, ref), frame,
                                         media_type=media, window=chosen_window,
                                         viewport=size)
                except RenderError as exc:  # the status is sent; leave this image out
                    log.warning("rendered %s frame %d left out: %s", ref.sop_instance_uid,
                                frame + 1, exc)
                    break
                yield {"Content-Type": media, "Content-Location":
                       f"{base}/studies/{ref.study_instance_uid}/series/"
                       f"{ref.series_instance_uid}/instances/{ref.sop_instance_uid}/frames/"
                       f"{frame + 1}/rendered"}, (image,)

    boundary = new_boundary()
    return StreamingResponse(
        multipart_body(parts(), boundary),
        media_type=f'multipart/related; type="{media}"; boundary={boundary}',
        headers={"Cache-Control": "private, max-age=300"})


@router.get("/studies/{study}/rendered")
def rendered_study(study: UIDPath, request: Request, platform: PlatformDep,
                   principal: PrincipalDep, window: str | None = None,
                   viewport: str | None = None) -> Response:
    """The study's images rendered, as multipart/related (one part per frame)."""
    return _rendered_many(request, platform, principal, study, None, window, viewport)


@router.get("/studies/{study}/series/{series}/rendered")
def rendered_series(study: UIDPath, series: UIDPath, request: Request,
                    platform: PlatformDep, principal: PrincipalDep,
                    window: str | None = None, viewport: str | None = None) -> Response:
    """The series' images rendered, as multipart/related (one part per frame)."""
    return _rendered_many(request, platform, principal, study, series, window, viewport)


def _thumbnail(request: Request, platform: Platform, principal: Any, study: str,
               series: str | None = None, instance: str | None = None,
               viewport: str | None = None) -> Response:
    refs = _refs(platform, principal, study, series, instance)
    ref = refs[len(refs) // 2] if instance is None else refs[0]
    return _rendered(request, ref, platform, 1, _viewport(viewport, (128, 128)), None)


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(study: UIDPath, request: Request, platform: PlatformDep,
                    principal: PrincipalDep, viewport: str | None = None) -> Response:
    return _thumbnail(request, platform, principal, study, viewport=viewport)


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: UIDPath, series: UIDPath, request: Request,
                     platform: PlatformDep, principal: PrincipalDep,
                     viewport: str | None = None) -> Response:
    return _thumbnail(request, platform, principal, study, series, viewport=viewport)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(study: UIDPath, series: UIDPath, instance: UIDPath, request: Request,
                       platform: PlatformDep, principal: PrincipalDep,
                       viewport: str | None = None) -> Response:
    return _thumbnail(request, platform, principal, study, series, instance, viewport)


_ = NotAcceptable  # re-exported error type used by callers of this module
