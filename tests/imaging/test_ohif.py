"""careplane's side of serving OHIF: its config, the build's files, the login, missing builds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from careplane.imaging.config import imaging_settings
from careplane.imaging.ohif import app_config
from careplane.security import Role
from tests.conftest import Accounts


@pytest.fixture
def ohif_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in build: the page, a hashed bundle, a wasm file."""
    root = tmp_path / "ohif"
    root.mkdir()
    (root / "index.html").write_text("<html><script src='/ohif/app-config.js'></script></html>")
    (root / "app.bundle.0123abcd.js").write_text("console.log('ohif');")
    (root / "decoder.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "secret.txt").write_text("not part of the build")
    monkeypatch.setenv("CAREPLANE_DICOM_OHIF_DIR", str(root))
    imaging_settings.cache_clear()
    yield root
    imaging_settings.cache_clear()


def test_config_points_ohif_at_this_servers_dicomweb() -> None:
    config = app_config()
    assert "window.config = " in config
    assert "window.location.origin + '/dicomweb'" in config
    assert '"routerBasename": "/ohif"' in config
    assert '"defaultDataSourceName": "careplane"' in config
    for root in ("wadoUriRoot", "qidoRoot", "wadoRoot"):
        assert f'"{root}"' in config


def test_files_are_served_with_their_types(client: TestClient, ohif_dir: Path) -> None:
    bundle = client.get("/ohif/app.bundle.0123abcd.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert "immutable" in bundle.headers["cache-control"]
    wasm = client.get("/ohif/decoder.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.headers["cross-origin-embedder-policy"] == "require-corp"
    config = client.get("/ohif/app-config.js")
    assert config.status_code == 200 and "window.config" in config.text
    assert client.get("/ohif/missing.js").status_code == 404
    assert client.get("/ohif/../secret.txt").status_code == 404
    assert client.get("/ohif/%2e%2e/secret.txt").status_code == 404


def test_viewer_page_needs_a_session_or_a_token(client: TestClient, ohif_dir: Path,
                                                accounts: Accounts) -> None:
    page = client.get("/ohif/viewer?StudyInstanceUIDs=1.2.3", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?next=/ohif/viewer%3FStudyInstanceUIDs")
    with_token = client.get("/ohif/viewer?StudyInstanceUIDs=1.2.3&token=abc")
    assert with_token.status_code == 200 and "app-config.js" in with_token.text
    account = accounts.make("ohif-user", Role.radiologist)
    signed_in = client.get("/ohif/viewer", headers=account.headers)
    assert signed_in.status_code == 200
    assert signed_in.headers["cross-origin-opener-policy"] == "same-origin"
    assert client.get("/ohif", follow_redirects=False).headers["location"] == "/ohif/"


def test_a_server_without_the_build_says_how_to_install_it(
        client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLANE_DICOM_OHIF_DIR", str(tmp_path / "nowhere"))
    imaging_settings.cache_clear()
    try:
        response = client.get("/ohif/viewer")
    finally:
        imaging_settings.cache_clear()
    assert response.status_code == 404
    assert "scripts/install-ohif" in response.text
