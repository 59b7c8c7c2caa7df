"""Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) as a real peer, on free ports.

Used by the interoperability tests and by ``bench/imaging_bench.py``. Orthanc listens on
127.0.0.1 only, keeps its files in a temporary folder, and knows careplane both as a DICOM
modality and as a DICOMweb server.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> bool:
    return Path(ORTHANC).exists() and DICOMWEB_PLUGIN.exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    url: str
    http_port: int
    dicom_port: int
    aet: str

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


@contextmanager
def running_orthanc(workdir: Path, *, aet: str = "ORTHANC",
                    modalities: dict[str, tuple[str, str, int]] | None = None,
                    dicomweb_servers: dict[str, tuple[str, dict[str, str]]] | None = None,
                    threads: int = 50, dicom_port: int | None = None) -> Iterator[Orthanc]:
    """Start Orthanc with a throw-away storage; ``modalities``: name -> (AET, host, port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {
        "Name": "careplane-peer", "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"), "StorageCompression": False,
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpDescribeErrors": True, "HttpThreadsCount": threads,
        "DicomServerEnabled": True, "DicomAet": aet, "DicomPort": dicom_port,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True, "DicomAlwaysAllowGet": True,
        "UnknownSopClassAccepted": True, "OverwriteInstances": False, "SaveJobs": False,
        "StableAge": 3600, "ConcurrentJobs": 2, "LimitFindResults": 0,
        "LimitFindInstances": 0, "DicomModalities": {
            name: [a, host, port] for name, (a, host, port) in (modalities or {}).items()},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "StudiesMetadata": "MainDicomTags", "SeriesMetadata": "MainDicomTags",
                     "Servers": {name: {"Url": url, "HttpHeaders": headers}
                                 for name, (url, headers) in (dicomweb_servers or {}).items()}},
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = (workdir / "orthanc.log").read_text()[-3000:]
                raise RuntimeError(f"Orthanc exited:\n{tail}")
            try:
                if httpx.get(f"{url}/system", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not start")
            time.sleep(0.05)
        yield Orthanc(url, http_port, dicom_port, aet)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
