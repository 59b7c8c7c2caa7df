"""Imaging benchmark: careplane against Orthanc 1.10 (Debian), same data, same run.

Data: the real 7.2 MB chest CR of PyPI ``pydicom-data`` (RG1_UNCR.dcm, 1955x1841, explicit VR
little endian), copied under new SOP Instance UIDs; for the study lists, small made-up
instances (one per study) until the store holds 1,000 and then 10,000 studies.

Both servers run on this machine, on loopback, one after the other for each measurement
(careplane, Orthanc, careplane, Orthanc, ...), so the shared machine's noise falls on both:

* STOW-RS ingest: one instance per request, sequential, instances/s and MB/s;
* C-STORE ingest: dcmtk ``storescu`` sending the files over one association;
* QIDO-RS study list: a page of 100 (``limit=100`` at varying offsets; median latency) and
  the whole list (median time until the last byte);
* WADO-RS retrieve: the whole study of chest radiographs as multipart/related, MB/s.

careplane runs as ``careplane serve`` (embedded SQLite unless ``--database-url``; FHIR linking
queued but no job workers, so background work does not compete for the two cores); Orthanc
with its default SQLite index, no storage compression, the DICOMweb plugin.

    .venv/bin/python bench/imaging_bench.py --update-docs
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.imaging.conftest import make_instance  # noqa: E402
from tests.imaging.orthanc import running_orthanc  # noqa: E402
from tests.support.servers import free_port, running_server  # noqa: E402

from careplane.imaging.peers import add_remote_ae  # noqa: E402
from careplane.imaging.sample_data import chest_cr  # noqa: E402
from careplane.platform.db import Database  # noqa: E402
from careplane.security import Role  # noqa: E402
from careplane.security.identity import create_org, create_user, issue_token  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- imaging-bench:start -->", "<!-- imaging-bench:end -->"
BOUNDARY = "bench-boundary-7f3a"
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Target:
    name: str
    dicomweb: str  # base URL of the DICOMweb service
    headers: dict[str, str]
    dicom_port: int
    aec: str


def _copies(source: bytes, count: int, study: str | None = None) -> list[bytes]:
    """``count`` copies of a file under new SOP Instance UIDs (one series, one study)."""
    ds = pydicom.dcmread(io.BytesIO(source))
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    out = []
    for number in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _multipart(parts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type":
                  f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}


def stow(client: httpx.Client, target: Target, files: list[bytes]) -> dict[str, float]:
    started = time.perf_counter()
    for raw in files:
        body, headers = _multipart([raw])
        response = client.post(f"{target.dicomweb}/studies", content=body,
                               headers={**headers, **target.headers})
        if response.status_code != 200:
            raise RuntimeError(f"{target.name} STOW-RS: {response.status_code} "
                               f"{response.text[:300]}")
    seconds = time.perf_counter() - started
    size = sum(len(f) for f in files)
    return {"instances_per_s": len(files) / seconds, "mb_per_s": size / 1e6 / seconds,
            "seconds": seconds}


def c_store(target: Target, paths: list[Path]) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run(["storescu", "-aet", "BENCH", "-aec", target.aec, "127.0.0.1",
                             str(target.dicom_port), *map(str, paths)],
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{target.name} C-STORE failed: {result.stderr[-500:]}")
    return {"instances_per_s": len(paths) / seconds, "seconds": seconds}


def populate(client: httpx.Client, target: Target, count: int, batch: int = 100) -> None:
    """Add ``count`` one-instance studies, ``batch`` instances per STOW-RS request."""
    for start in range(0, count, batch):
        files = [make_instance(patient_id=f"B{start + i:06d}",
                               patient_name=f"Bench^Patient{start + i}",
                               study_date=f"20{10 + (start + i) % 15}0{1 + (start + i) % 9}15",
                               accession=f"ACC{start + i}")
                 for i in range(min(batch, count - start))]
        body, headers = _multipart(files)
        response = client.post(f"{target.dicomweb}/studies", content=body,
                               headers={**headers, **target.headers}, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"{target.name} populate: {response.status_code}")


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def qido(client: httpx.Client, target: Target, total: int, pages: int, wholes: int
         ) -> dict[str, float]:
    page_times = []
    for i in range(pages):
        offset = (i * 997) % max(1, total - 100)
        started = time.perf_counter()
        response = client.get(f"{target.dicomweb}/studies",
                              params={"limit": 100, "offset": offset}, headers=target.headers)
        page_times.append(time.perf_counter() - started)
        if response.status_code != 200 or len(response.json()) != 100:
            raise RuntimeError(f"{target.name} QIDO page: {response.status_code}")
    whole_times = []
    count = 0
    for _ in range(wholes):
        started = time.perf_counter()
        with client.stream("GET", f"{target.dicomweb}/studies", headers=target.headers,
                           timeout=600) as response:
            body = b"".join(response.iter_bytes())
        whole_times.append(time.perf_counter() - started)
        count = len(httpx.Response(200, content=body).json())
    return {"page_ms": _median_ms(page_times), "whole_s": statistics.median(whole_times),
            "studies": count}


def wado(client: httpx.Client, target: Target, study: str, repeats: int) -> dict[str, float]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        size = 0
        with client.stream("GET", f"{target.dicomweb}/studies/{study}", timeout=600,
                           headers={"Accept": ACCEPT_AS_STORED, **target.headers}) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{target.name} WADO-RS: {response.status_code}")
            for chunk in response.iter_bytes():
                size += len(chunk)
        rates.append(size / 1e6 / (time.perf_counter() - started))
    return {"mb_per_s": statistics.median(rates), "mb": size / 1e6}


def _careplane_account(db_url: str) -> tuple[dict[str, str], str]:
    db = Database(db_url)
    try:
        with db.session() as session:
            org = create_org(session, "bench", "Benchmark hospital")
            user = create_user(session, "bench", "bench-password-123", org=org,
                               roles=[Role.radiologist])
            add_remote_ae(session, org.id, "BENCH")
            token = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=6))
            return {"Authorization": f"Bearer {token.token}"}, org.id
    finally:
        db.dispose()


def _interleaved(targets: list[Target], measure: Callable[[Target], dict[str, float]],
                 repeats: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for repeat in range(repeats):
        order = targets if repeat % 2 == 0 else list(reversed(targets))
        for target in order:
            results[target.name].append(measure(target))
    return results


def _med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="imaging-bench-"))
    chest = chest_cr("RG1_UNCR.dcm").read_bytes()
    summary: dict[str, Any] = {"chest_mb": len(chest) / 1e6}
    with ExitStack() as stack:
        db_url = args.database_url or f"sqlite:///{work / 'careplane.db'}"
        dicom_port = free_port()
        base = stack.enter_context(running_server(
            db_url, work / "careplane", extra_env={
                "CAREPLANE_DICOM_PORT": str(dicom_port), "CAREPLANE_LOG_LEVEL": "WARNING"}))
        headers, _ = _careplane_account(db_url)
        orthanc = stack.enter_context(running_orthanc(work / "orthanc"))
        targets = [Target("careplane", f"{base}/dicomweb", headers, dicom_port, "CAREPLANE"),
                   Target("Orthanc", orthanc.dicomweb, {}, orthanc.dicom_port, orthanc.aet)]
        client = stack.enter_context(httpx.Client(timeout=120))
        # STOW-RS: per repeat, each server gets a fresh set of copies (all in one study, so
        # that WADO-RS later retrieves a study of them).
        studies = {t.name: generate_uid() for t in targets}
        summary["stow"] = _interleaved(targets, lambda t: stow(
            client, t, _copies(chest, args.instances, studies[t.name])), args.repeats)
        # C-STORE: files on disk for storescu, new UIDs for each run.
        def store(target: Target) -> dict[str, float]:
            folder = Path(tempfile.mkdtemp(dir=work))
            paths = []
            for i, raw in enumerate(_copies(chest, args.instances)):
                path = folder / f"{i}.dcm"
                path.write_bytes(raw)
                paths.append(path)
            return c_store(target, paths)
        summary["c_store"] = _interleaved(targets, store, args.repeats)
        summary["wado"] = {t.name: wado(client, t, studies[t.name], args.repeats)
                           for t in targets}
        summary["qido"] = {}
        held = 1 + args.repeats  # studies the ingest runs created on each server
        for size in args.studies:
            for target in targets:
                populate(client, target, max(0, size - held))
            held = size
            summary["qido"][size] = {t.name: qido(client, t, size, args.pages, args.wholes)
                                     for t in targets}
    return summary


def _runs(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['instances_per_s']:.1f}" for r in runs)


def _line(name: str, values: list[str]) -> str:
    return f"| {name} | " + " | ".join(values) + " |"


def update_docs(summary: dict[str, Any], args: argparse.Namespace) -> None:
    stow_runs, store_runs = summary["stow"], summary["c_store"]
    names = list(stow_runs)

    def each(fmt: Callable[[str], str]) -> list[str]:
        return [fmt(n) for n in names]

    lines = [
        START,
        "## Imaging: careplane vs Orthanc",
        "",
        f"Real chest CR ({summary['chest_mb']:.1f} MB, pydicom-data `RG1_UNCR.dcm`) copied "
        f"under new UIDs; {args.instances} instances per ingest run, {args.repeats} "
        f"interleaved runs per server, medians; Orthanc 1.10.1 with the DICOMweb plugin "
        f"(Debian), careplane `serve` on "
        f"{'PostgreSQL' if args.database_url else 'embedded SQLite'}; both on loopback on the "
        f"shared {os.cpu_count()}-core machine (Python {platform.python_version()}).",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        _line("STOW-RS ingest, instances/s (1 per request; each run)",
              each(lambda n: f"{_med(stow_runs[n], 'instances_per_s'):.1f} "
                             f"({_runs(stow_runs[n])})")),
        _line("STOW-RS ingest, MB/s", each(lambda n: f"{_med(stow_runs[n], 'mb_per_s'):.0f}")),
        _line("C-STORE ingest (storescu), instances/s (each run)",
              each(lambda n: f"{_med(store_runs[n], 'instances_per_s'):.1f} "
                             f"({_runs(store_runs[n])})")),
        _line(f"WADO-RS study retrieve ({summary['wado'][names[0]]['mb']:.0f} MB), MB/s",
              each(lambda n: f"{summary['wado'][n]['mb_per_s']:.0f}")),
    ]
    for size, per in summary["qido"].items():
        lines.append(_line(f"QIDO-RS at {size:,} studies: page of 100, ms (median)",
                           [f"{per[n]['page_ms']:.1f}" for n in names]))
        lines.append(_line(f"QIDO-RS at {size:,} studies: whole list streamed, s",
                           [f"{per[n]['whole_s']:.2f}" for n in names]))
    lines += [
        "",
        "The machine is shared: ingest rates move by a third from run to run as other work "
        "comes and goes (careplane and Orthanc alike; the runs alternate between them); "
        "careplane encrypts every file at rest (AES-256-GCM) and fsyncs it before it "
        "acknowledges it, and decrypts it again to serve it; Orthanc stores and serves "
        "plaintext.",
        "",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "Command: `.venv/bin/python bench/imaging_bench.py --update-docs` "
        f"(`--instances {args.instances} --repeats {args.repeats}`).",
        END,
    ]
    section = "\n".join(lines) + "\n"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)
    print(f"updated {DOCS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=30,
                        help="chest radiographs per ingest run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--pages", type=int, default=30, help="page requests per size")
    parser.add_argument("--wholes", type=int, default=3, help="whole-list requests per size")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: embedded SQLite)")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    summary = run(args)
    for section, per in summary.items():
        print(section, per)
    if args.update_docs:
        update_docs(summary, args)


if __name__ == "__main__":
    main()
