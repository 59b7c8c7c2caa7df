"""Job tasks of the genomics domain (run by ``careplane worker`` or the local executor).

``pipeline`` runs the pipeline on files named by path and moves the outputs into a directory:
it is what ``careplane genomics run`` submits. ``run`` runs a registered run (inputs from the
blob store, reference indexed once under the data directory) and publishes its outputs into
the registry in one transaction. Both leave nothing behind when the input is bad: the outputs
are staged in a work directory and only moved or registered once every step has finished.
The worker process finds the database and data directory the way every careplane process
does, from its settings (``CAREPLANE_*``).
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from careplane.genomics.pipeline import (
    InputError,
    PipelineSpec,
    publish_to_directory,
    run_pipeline,
)
from careplane.platform.jobs import JobContext, JobFailed

__all__ = ["check_reference", "pipeline", "run"]


def pipeline(ctx: JobContext) -> dict[str, Any]:
    """Run on local paths; ``out_dir`` receives NAME.bam(.bai), NAME.vcf.gz(.tbi), NAME.qc.json."""
    spec = PipelineSpec.from_dict(ctx.args["spec"])
    try:
        outputs = run_pipeline(spec, ctx)
    except InputError as exc:
        # Nothing of a run on bad input is worth resuming: leave no half-made files behind.
        shutil.rmtree(Path(spec.work_dir) / "result", ignore_errors=True)
        raise JobFailed(str(exc)) from exc
    placed = publish_to_directory(outputs, ctx.args["out_dir"])
    if not ctx.args.get("keep_work"):
        shutil.rmtree(spec.work_dir, ignore_errors=True)
    return {"files": {k: str(v) for k, v in placed.items()},
            "qc": _summary(outputs.qc_document)}


def _summary(document: dict[str, Any]) -> dict[str, Any]:
    alignment, variants = document.get("alignment", {}), document.get("variants", {})
    return {"read_pairs": document.get("read_pairs"),
            "mapped_percent": alignment.get("mapped_percent"),
            "duplicates_percent": alignment.get("duplicates_percent"),
            "mean_coverage": alignment.get("coverage", {}).get("mean"),
            "variants": variants.get("variants"), "snvs": variants.get("snvs"),
            "indels": variants.get("indels"), "ti_tv": variants.get("ti_tv")}


def _environment(ctx: JobContext) -> tuple[Any, Any, Any]:
    """Settings, database and blob store of a worker, for a job of a server.

    The worker's own configuration (CAREPLANE_*), anchored to the submitting server's data
    directory (see service.submit_run).
    """
    from careplane.platform.db import Database
    from careplane.security.encryption import blob_store_for
    from careplane.settings import load_settings

    data_dir = ctx.args.get("data_dir")
    settings = load_settings(data_dir=data_dir) if data_dir else load_settings()
    return settings, Database(settings.db_url), blob_store_for(settings)


def check_reference(ctx: JobContext) -> dict[str, Any]:
    """Check a large reference FASTA line by line and build its indexes (once, reused by every
    run); the reference becomes ``ready`` with its contigs, or ``failed`` with the reason."""
    from careplane.genomics import service
    from careplane.genomics.models import GenomicsFile, GenomicsReference
    from careplane.genomics.reference import ReferenceError, prepare_reference

    settings, db, blobs = _environment(ctx)
    reference_id = ctx.args["reference_id"]
    try:
        with db.session() as session:
            row = session.get(GenomicsReference, reference_id)
            if row is None:
                raise JobFailed(f"genomics reference {reference_id} no longer exists")
            source = session.get(GenomicsFile, row.file_id)
            shown = f"{row.name} ({source.filename if source else row.sha256})"
            sha256 = row.sha256
        index_dir = settings.data_dir / "genomics" / "references" / sha256
        ctx.progress(0, 2, "copying the FASTA")
        fasta = service.plain_copy(blobs, sha256, index_dir / "source")
        ctx.progress(1, 2, "checking and indexing the FASTA")
        try:
            ref = prepare_reference(fasta, index_dir, shown)
            status, error = "ready", None
        except ReferenceError as exc:
            status, error = "failed", str(exc)
            shutil.rmtree(index_dir, ignore_errors=True)  # no copy of a refused FASTA is kept
        with db.session() as session:
            row = session.get(GenomicsReference, reference_id)
            if row is None:
                raise JobFailed(f"genomics reference {reference_id} no longer exists")
            row.status, row.error = status, error
            if error is None:
                row.contigs = [[c, n] for c, n in ref.contigs]
                row.length = ref.length
        if error is not None:
            raise JobFailed(error)
        return {"reference_id": reference_id, "contigs": len(ref.contigs),
                "length": ref.length}
    finally:
        db.dispose()


def run(ctx: JobContext) -> dict[str, Any]:
    """Run a registered :class:`~careplane.genomics.models.GenomicsRun` and publish it."""
    from careplane.genomics import service
    from careplane.genomics.models import GenomicsFile, GenomicsReference, GenomicsSample
    from careplane.genomics.variants import VariantStore

    settings, db, blobs = _environment(ctx)
    run_id = ctx.args["run_id"]
    work_dir = settings.data_dir / "genomics" / "work" / run_id
    # Blobs are encrypted at rest; the tools read plaintext files. The reads get decrypted
    # copies inside the work directory, removed when the run ends (or fails); the reference
    # is kept once beside its indexes, which hold its sequence anyway.
    inputs_dir = work_dir / "inputs"
    try:
        with ExitStack() as copies:
            with db.session() as session:
                run_row = session.get(service.GenomicsRun, run_id)
                if run_row is None:
                    raise JobFailed(f"genomics run {run_id} no longer exists")
                sample = session.get(GenomicsSample, run_row.sample_id)
                reference = session.get(GenomicsReference, run_row.reference_id)
                inputs = [session.get(GenomicsFile, fid) for fid in run_row.inputs]
                if sample is None or reference is None or any(f is None for f in inputs):
                    raise JobFailed(f"genomics run {run_id}: its sample, reference or input "
                                    "files were deleted")
                ref_file = session.get(GenomicsFile, reference.file_id)
                assert ref_file is not None
                index_dir = settings.data_dir / "genomics" / "references" / reference.sha256
                fasta = str(service.plain_copy(blobs, reference.sha256, index_dir / "source"))
                fastq = [(str(copies.enter_context(service.blob_file(blobs, f.sha256,
                                                                     inputs_dir))), f.filename)
                         for f in inputs if f is not None]
                spec = PipelineSpec(
                    sample=sample.name, fastq1=fastq[0][0], fastq2=fastq[1][0],
                    reference=fasta, index_dir=str(index_dir),
                    work_dir=str(work_dir), threads=run_row.threads, aligner=run_row.aligner,
                    executor=settings.genomics_executor, ray_address=settings.ray_address,
                    **{k: v for k, v in run_row.params.items()
                       if k in ("chunk_pairs", "min_qual", "min_mapped_fraction")},
                    names={fastq[0][0]: fastq[0][1], fastq[1][0]: fastq[1][1],
                           fasta: f"{reference.name} ({ref_file.filename})"})
            try:
                outputs = run_pipeline(spec, ctx)
            except InputError as exc:
                shutil.rmtree(work_dir, ignore_errors=True)
                raise JobFailed(str(exc)) from exc
        ctx.check()
        with db.session() as session:
            run_row = session.get(service.GenomicsRun, run_id)
            assert run_row is not None
            if run_row.published_at is None:  # a retry after publishing publishes nothing
                service.publish_outputs(session, blobs, run_row, outputs.files(),
                                        outputs.qc_document)
            published = dict(run_row.outputs)
            org_id, sample_id = run_row.org_id, run_row.sample_id
        # The variant store is derived data: rebuilt from the published VCF if this fails.
        VariantStore(settings.data_dir).load_vcf(outputs.vcf, org_id=org_id,
                                                 sample_id=sample_id, sample_name=spec.sample,
                                                 run_id=run_id)
        shutil.rmtree(work_dir, ignore_errors=True)
        return {"run_id": run_id, "outputs": published, "qc": _summary(outputs.qc_document)}
    finally:
        db.dispose()

