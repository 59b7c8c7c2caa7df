"""TLS for ``careplane serve`` and HSTS over HTTPS."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from careplane.app import create_app
from careplane.security.transport import TlsError, tls_options
from careplane.settings import Settings


def _self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_options_check_the_files(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    other_cert, other_key = _self_signed(tmp_path, "other")
    assert tls_options(None, None) == {}
    assert tls_options(cert, key)["ssl_certfile"] == str(cert)
    with pytest.raises(TlsError, match="go together"):
        tls_options(cert, None)
    with pytest.raises(TlsError, match="not a readable file"):
        tls_options(tmp_path / "missing.crt", key)
    with pytest.raises(TlsError, match="cannot use"):
        tls_options(cert, other_key)
    del other_cert


def test_hsts_only_over_https(tmp_path: Path) -> None:
    settings = Settings(env="test", data_dir=tmp_path / "data", job_workers=0, log_json=False)
    app = create_app(settings)
    try:
        with TestClient(app, base_url="https://testserver") as https:
            assert "max-age=" in https.get("/healthz").headers["strict-transport-security"]
        with TestClient(app) as http:
            assert "strict-transport-security" not in http.get("/healthz").headers
    finally:
        app.state.platform.db.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_speaks_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port, dicom = _free_port(), _free_port()
    env = {**os.environ, "CAREPLANE_ENV": "test", "CAREPLANE_DATA_DIR": str(tmp_path / "d"),
           "CAREPLANE_LOG_JSON": "false"}
    env.pop("CAREPLANE_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "careplane", "serve", "--port", str(port), "--dicom-port",
         str(dicom), "--job-workers", "0", "--tls-cert", str(cert), "--tls-key", str(key)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        trust = ssl.create_default_context(cafile=str(cert))
        while True:
            try:
                response = httpx.get(f"https://localhost:{port}/healthz", verify=trust)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stderr.read().decode() if proc.stderr else "") \
                        from None
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://localhost:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def test_serve_refuses_a_mismatched_key(tmp_path: Path) -> None:
    cert, _key = _self_signed(tmp_path)
    _other_cert, other_key = _self_signed(tmp_path, "other")
    env = {**os.environ, "CAREPLANE_ENV": "test", "CAREPLANE_DATA_DIR": str(tmp_path / "d")}
    env.pop("CAREPLANE_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "careplane", "serve", "--port", str(_free_port()),
         "--tls-cert", str(cert), "--tls-key", str(other_key)],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot use" in result.stderr
