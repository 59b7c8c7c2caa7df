"""The OHIF viewer served by careplane at /ohif/, reading its studies from /dicomweb.

``scripts/install-ohif`` puts the production build of npm ``@ohif/app`` under
``CAREPLANE_DICOM_OHIF_DIR`` (``data/vendor/ohif``), moved under /ohif/. careplane serves those
files and writes OHIF's ``app-config.js`` itself, with one DICOMweb data source: this server's
/dicomweb on the page's own origin. The viewer is then authenticated either by the careplane
session cookie (the browser sends it with every same-origin request) or by a bearer token
given once in the URL (``/ohif/viewer?StudyInstanceUIDs=…&token=…``), which OHIF keeps and
sends as ``Authorization: Bearer`` on its DICOMweb requests. The pages themselves are OHIF's
public code; a page opened with neither a session nor a token is sent to the login first.
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from careplane.imaging.config import imaging_settings
from careplane.security import Principal
from careplane.security.deps import authenticate_request

__all__ = ["app_config", "router"]

router = APIRouter(prefix="/ohif", include_in_schema=False)
MaybePrincipal = Annotated[Principal | None, Depends(authenticate_request)]
DATA_SOURCE = "careplane"
# cross-origin isolation lets OHIF's decoders share memory with its workers
_ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin",
              "Cross-Origin-Embedder-Policy": "require-corp"}
_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
          ".css": "text/css", ".json": "application/json", ".html": "text/html"}


def app_config() -> str:
    """OHIF's window.config: careplane's DICOMweb as the only data source, under /ohif."""
    source = {
        "friendlyName": "careplane",
        "name": DATA_SOURCE,
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "staticWado": False,
        "singlepart": "video",
        "omitQuotationForMultipartRequest": False,
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
    }
    config = {
        "routerBasename": "/ohif",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "maxNumberOfWebWorkers": 2,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": DATA_SOURCE,
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": DATA_SOURCE,
            "configuration": source,
        }],
    }
    roots = ("wadoUriRoot", "qidoRoot", "wadoRoot")
    return (
        "// Written by careplane: its DICOMweb on this page's origin is OHIF's data source.\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function () {\n"
        "  var root = window.location.origin + '/dicomweb';\n"
        "  var source = window.config.dataSources[0].configuration;\n"
        f"  {json.dumps(list(roots))}.forEach(function (key) {{ source[key] = root; }});\n"
        "})();\n"
    )


def _installed() -> Path | None:
    root = imaging_settings().ohif_dir
    return root if (root / "index.html").is_file() else None


def _not_installed() -> Response:
    return PlainTextResponse(
        "The OHIF viewer is not installed on this server: run scripts/install-ohif "
        "(it downloads the build of npm @ohif/app) or set CAREPLANE_DICOM_OHIF_DIR.",
        status.HTTP_404_NOT_FOUND)


@router.get("")
def ohif_root() -> Response:
    return RedirectResponse("/ohif/", status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/app-config.js")
def ohif_config() -> Response:
    return Response(app_config(), media_type="text/javascript",
                    headers={"Cache-Control": "no-cache"})


@router.get("/{path:path}")
def ohif_file(path: str, request: Request, principal: MaybePrincipal) -> Response:
    """A file of the build, or the viewer page for OHIF's own routes (/ohif/viewer, …)."""
    root = _installed()
    if root is None:
        return _not_installed()
    if path and "\x00" not in path:
        candidate = (root / path).resolve()
        if candidate.is_relative_to(root.resolve()) and candidate.is_file():
            kind = _TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
            # file names carrying a content hash never change; the rest are revalidated
            immutable = ".bundle." in candidate.name or candidate.suffix == ".wasm"
            return FileResponse(candidate, media_type=kind or "application/octet-stream",
                                headers={**_ISOLATION, "Cache-Control":
                                         "public, max-age=31536000, immutable" if immutable
                                         else "no-cache"})
        if "." in Path(path).name:
            return PlainTextResponse(f"{path}: no such file in the OHIF viewer",
                                     status.HTTP_404_NOT_FOUND)
    if principal is None and "token" not in {k.lower() for k in request.query_params}:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status.HTTP_303_SEE_OTHER)
    return FileResponse(root / "index.html", media_type="text/html",
                        headers={**_ISOLATION, "Cache-Control": "no-cache"})
