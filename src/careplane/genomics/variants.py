"""The variant store: every sample's calls as Parquet, queried with DuckDB.

Why this shape: variant queries are analytical (a region across a cohort, allele frequencies,
a gene's carriers) and the data is write-once per run, so a columnar file per sample, scanned by
an embedded engine, beats rows in the transactional database. Each organisation has its own
directory, so tenancy is a path, not a filter that could be forgotten. A sample's file is
replaced atomically when a newer run of it is loaded, so the store always holds each sample's
latest calls. Queries open a fresh in-memory DuckDB connection over the files: no database
file, hence no single-writer lock shared between the API and the job workers.

Calls the pipeline filtered out (FILTER other than PASS) are stored but left out of queries
unless asked for. Cohort allele frequency is the alternate allele count over the number of
called alleles at the site: ``2 x`` the samples in the organisation's store, less the alleles
of samples whose genotype there is missing (``./.``, or half of ``0/.``). A sample with no
record at a site counts as homozygous reference (the usual approximation when only variant
sites are kept); a missing call is kept as a row with no alternate allele, so it counts as
missing, never as a carrier or as reference.

Gene queries join a gene table: the organisation's own (a BED loaded with :meth:`load_genes`)
or, until it loads one, the table careplane ships: a generated annotation of the simulator's
contigs (see :func:`careplane.genomics.simulate.simulated_genes`), so gene queries work out
of the box on the demo and on simulated data.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pysam

__all__ = ["DEFAULT_GENES", "GeneError", "VariantQuery", "VariantStore"]

DEFAULT_GENES = Path(__file__).with_name("data") / "simulated_genes.bed"

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COLUMNS = (
    ("sample_id", "VARCHAR"), ("sample_name", "VARCHAR"), ("run_id", "VARCHAR"),
    ("chrom", "VARCHAR"), ("pos", "BIGINT"), ("end_pos", "BIGINT"), ("ref", "VARCHAR"),
    ("alt", "VARCHAR"), ("variant_class", "VARCHAR"), ("qual", "DOUBLE"),
    ("filter", "VARCHAR"), ("genotype", "VARCHAR"), ("zygosity", "VARCHAR"),
    ("alt_count", "INTEGER"), ("depth", "INTEGER"), ("ref_depth", "INTEGER"),
    ("alt_depth", "INTEGER"),
)


class GeneError(ValueError):
    """A gene table that cannot be loaded; the message names the line."""


@dataclass(frozen=True)
class VariantQuery:
    """Filters of a variant search; all optional. Positions are 1-based and inclusive."""

    chrom: str | None = None
    start: int | None = None
    end: int | None = None
    gene: str | None = None
    sample_id: str | None = None
    zygosity: str | None = None  # "het" or "hom"
    variant_class: str | None = None  # "snv", "indel" or "mnp"
    min_qual: float | None = None
    max_cohort_af: float | None = None
    include_filtered: bool = False  # calls whose FILTER is not PASS (e.g. LowQual)
    limit: int = 100
    offset: int = 0


def _classify(ref: str, alt: str) -> str:
    if len(ref) == len(alt):
        return "snv" if len(ref) == 1 else "mnp"
    return "indel"


class VariantStore:
    """Parquet files under ``data_dir/genomics/variants/<org>/``, one per sample."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "genomics" / "variants"

    def _org_dir(self, org_id: str) -> Path:
        if not _SAFE.match(org_id):
            raise ValueError(f"unusable organisation id {org_id!r}")
        return self.root / org_id

    def _files(self, org_id: str) -> list[str]:
        directory = self._org_dir(org_id)
        return sorted(str(p) for p in directory.glob("sample-*.parquet")) if directory.is_dir() \
            else []

    # -- loading ----------------------------------------------------------------------------

    def load_vcf(self, vcf: str | Path, *, org_id: str, sample_id: str, sample_name: str,
                 run_id: str) -> int:
        """Replace the sample's calls with those of ``vcf`` (first sample); returns the count."""
        if not _SAFE.match(sample_id):
            raise ValueError(f"unusable sample id {sample_id!r}")
        directory = self._org_dir(org_id)
        directory.mkdir(parents=True, exist_ok=True)
        rows = 0
        with tempfile.TemporaryDirectory(dir=directory, prefix=".load-") as tmp:
            table = Path(tmp) / "calls.tsv"
            with table.open("w", newline="") as out:
                writer = csv.writer(out, delimiter="\t", lineterminator="\n")
                rows = self._write_rows(vcf, writer, sample_id, sample_name, run_id)
            target = directory / f"sample-{sample_id}.parquet"
            partial = Path(tmp) / "calls.parquet"
            con = duckdb.connect()
            try:
                if rows:
                    types = {name: kind for name, kind in _COLUMNS}
                    con.execute(
                        "COPY (SELECT * FROM read_csv(?, delim='\t', header=false, columns=?, "
                        "nullstr='', quote='') ORDER BY chrom, pos) TO ? (FORMAT parquet)",
                        [str(table), types, str(partial)])
                else:  # no calls at all: still a sample of the cohort
                    empty = ", ".join(f"CAST(NULL AS {kind}) AS {name}"
                                      for name, kind in _COLUMNS)
                    con.execute(f"COPY (SELECT {empty} WHERE false) TO ? (FORMAT parquet)",
                                [str(partial)])
            finally:
                con.close()
            os.replace(partial, target)
        return rows

    @staticmethod
    def _write_rows(vcf: str | Path, writer: Any, sample_id: str, sample_name: str,
                    run_id: str) -> int:
        rows = 0
        quiet = pysam.set_verbosity(0)
        try:
            with pysam.VariantFile(str(vcf)) as fh:
                sample = next(iter(fh.header.samples), None)
                for rec in fh:
                    ref = (rec.ref or "").upper()
                    call = rec.samples[sample] if sample is not None else None
                    raw_gt = tuple(call.get("GT") or ()) if call is not None else ()
                    gt = tuple(a for a in raw_gt if a is not None)
                    partly_missing = None in raw_gt
                    ad = call.get("AD") if call else None
                    dp = call.get("DP") if call else None
                    filters = ";".join(str(k) for k in rec.filter) or "PASS"
                    for index, alt in enumerate(rec.alts or (), start=1):
                        if alt in ("*", ".") or alt.startswith("<"):
                            continue
                        if not raw_gt:  # a sites-only VCF: each record is one carried allele
                            alt_count, zygosity = 1, ""
                        else:
                            alt_count = sum(1 for a in gt if a == index)
                            if alt_count == 0 and not partly_missing:
                                continue  # another allele's record, or reference
                            # ./. and 0/. are kept with no alternate allele: they count as
                            # missing in cohort frequencies, never as carriers or reference.
                            zygosity = "" if alt_count == 0 else (
                                "hom" if alt_count == len(raw_gt) else "het")
                        genotype = "/".join("." if a is None else str(a) for a in raw_gt)
                        ref_depth = ad[0] if ad and ad[0] is not None else ""
                        alt_depth = ad[index] if ad and len(ad) > index and \
                            ad[index] is not None else ""
                        writer.writerow([
                            sample_id, sample_name, run_id, rec.chrom, rec.pos,
                            rec.pos + len(ref) - 1, ref, alt.upper(), _classify(ref, alt),
                            "" if rec.qual is None else f"{rec.qual:.2f}", filters, genotype,
                            zygosity, alt_count, "" if dp is None else dp, ref_depth,
                            alt_depth])
                        rows += 1
        finally:
            pysam.set_verbosity(quiet)
        return rows

    def remove_sample(self, org_id: str, sample_id: str) -> None:
        (self._org_dir(org_id) / f"sample-{sample_id}.parquet").unlink(missing_ok=True)

    # -- genes --------------------------------------------------------------------------------

    def load_genes(self, bed_text: str, *, org_id: str) -> int:
        """Replace the organisation's gene table with a BED (chrom, start, end, name)."""
        directory = self._org_dir(org_id)
        directory.mkdir(parents=True, exist_ok=True)
        rows = _parse_bed(bed_text)
        _write_genes(rows, directory / "genes.parquet")
        return len(rows)

    def reset_genes(self, org_id: str) -> None:
        """Drop the organisation's own gene table: gene queries use the shipped one again."""
        (self._org_dir(org_id) / "genes.parquet").unlink(missing_ok=True)

    def gene_table(self, org_id: str) -> str:
        """Which table gene queries use: ``"organisation"`` or ``"default"``."""
        return "organisation" if (self._org_dir(org_id) / "genes.parquet").exists() \
            else "default"

    def _gene_relation(self, org_id: str) -> tuple[str, str]:
        """SQL for the gene table in use (1-based, inclusive) and its one parameter."""
        own = self._org_dir(org_id) / "genes.parquet"
        if own.exists():
            return "read_parquet(?)", str(own)
        # The shipped BED, converted once per data directory (and again when it changes).
        shipped = DEFAULT_GENES.stat()
        cached = self.root / f"default-genes-{shipped.st_size}-{shipped.st_mtime_ns}.parquet"
        if not cached.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            _write_genes(_parse_bed(DEFAULT_GENES.read_text()), cached)
        return "read_parquet(?)", str(cached)

    def genes(self, org_id: str) -> list[dict[str, Any]]:
        relation, param = self._gene_relation(org_id)
        con = duckdb.connect()
        try:
            rows = con.execute(f"SELECT chrom, start_pos, end_pos, name FROM {relation} "  # noqa: S608
                               "ORDER BY chrom, start_pos", [param]).fetchall()
        finally:
            con.close()
        return [{"chrom": c, "start": s, "end": e, "name": n} for c, s, e, n in rows]

    # -- queries ------------------------------------------------------------------------------

    def query(self, org_id: str, q: VariantQuery) -> dict[str, Any]:
        """Calls matching ``q`` with their cohort counts, and the total number matching."""
        files = self._files(org_id)
        if not files:
            return {"total": 0, "samples_in_cohort": 0, "variants": []}
        where: list[str] = []
        params: list[Any] = [files, len(files)]  # one file per sample: the cohort's size
        gene_join = ""
        if q.gene is not None:
            relation, genes_param = self._gene_relation(org_id)
            gene_join = (f"JOIN {relation} g ON g.chrom = c.chrom AND c.pos <= g.end_pos "
                         "AND c.end_pos >= g.start_pos AND g.name = ?")
            params += [genes_param, q.gene]
        if q.chrom is not None:
            where.append("c.chrom = ?")
            params.append(q.chrom)
        if q.start is not None:
            where.append("c.end_pos >= ?")
            params.append(q.start)
        if q.end is not None:
            where.append("c.pos <= ?")
            params.append(q.end)
        if q.sample_id is not None:
            where.append("c.sample_id = ?")
            params.append(q.sample_id)
        if q.zygosity is not None:
            where.append("c.zygosity = ?")
            params.append(q.zygosity)
        if q.variant_class is not None:
            where.append("c.variant_class = ?")
            params.append(q.variant_class)
        if q.min_qual is not None:
            where.append("c.qual >= ?")
            params.append(q.min_qual)
        if q.max_cohort_af is not None:
            where.append("k.allele_count / nullif(2.0 * n.samples - k.missing_alleles, 0) <= ?")
            params.append(q.max_cohort_af)
        where.append("c.alt_count > 0")  # a missing call is no variant of its sample
        condition = "WHERE " + " AND ".join(where)
        passed = "" if q.include_filtered else "WHERE filter = 'PASS'"
        # Only fixed clauses and int()s are interpolated; every value is a bound parameter.
        sql = f"""
            WITH calls AS (SELECT * FROM read_parquet(?) {passed}),
            n AS (SELECT ?::BIGINT AS samples),
            k AS (SELECT chrom, pos, ref, alt, sum(alt_count) AS allele_count,
                         count(*) FILTER (WHERE alt_count > 0) AS carriers,
                         sum(length(genotype) - length(replace(genotype, '.', '')))
                             AS missing_alleles
                  FROM calls GROUP BY chrom, pos, ref, alt)
            SELECT c.*, k.allele_count, k.carriers, n.samples,
                   2 * n.samples - k.missing_alleles AS allele_number,
                   k.allele_count / nullif(2.0 * n.samples - k.missing_alleles, 0)
                       AS cohort_af,
                   count(*) OVER () AS total
            FROM calls c JOIN k USING (chrom, pos, ref, alt) CROSS JOIN n {gene_join}
            {condition}
            ORDER BY c.chrom, c.pos, c.ref, c.alt, c.sample_name
            LIMIT {int(q.limit)} OFFSET {int(q.offset)}
        """  # noqa: S608
        # The gene join's parameters come after the CTE's but before the WHERE clause's.
        con = duckdb.connect()
        try:
            cursor = con.execute(sql, params)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            con.close()
        total = rows[0]["total"] if rows else 0
        for row in rows:
            row.pop("total", None)
            row.pop("samples", None)
        return {"total": total, "samples_in_cohort": len(files),
                "variants": rows}

    def summary(self, org_id: str, sample_ids: Sequence[str] | None = None
                ) -> list[dict[str, Any]]:
        """Per-sample counts by class and zygosity (the sample page's table)."""
        files = self._files(org_id)
        if not files:
            return []
        con = duckdb.connect()
        try:
            rows = con.execute(
                "SELECT sample_id, sample_name, run_id, count(*) AS variants, "
                "count(*) FILTER (WHERE variant_class = 'snv') AS snvs, "
                "count(*) FILTER (WHERE variant_class = 'indel') AS indels, "
                "count(*) FILTER (WHERE zygosity = 'het') AS het, "
                "count(*) FILTER (WHERE zygosity = 'hom') AS hom "
                "FROM read_parquet(?) WHERE filter = 'PASS' AND alt_count > 0 "
                "GROUP BY ALL ORDER BY sample_name",
                [files]).fetchall()
        finally:
            con.close()
        keys = ("sample_id", "sample_name", "run_id", "variants", "snvs", "indels", "het", "hom")
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        if sample_ids is not None:
            wanted = set(sample_ids)
            out = [r for r in out if r["sample_id"] in wanted]
        return out


def _write_genes(rows: Sequence[tuple[str, int, int, str]], target: Path) -> None:
    """Write a gene table as Parquet, replacing ``target`` atomically."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".genes-") as tmp:
        table = Path(tmp) / "genes.tsv"
        table.write_text("".join(f"{c}\t{s}\t{e}\t{n}\n" for c, s, e, n in rows))
        partial = Path(tmp) / "genes.parquet"
        con = duckdb.connect()
        try:
            con.execute(
                "COPY (SELECT * FROM read_csv(?, delim='\t', header=false, quote='', "
                "columns={'chrom': 'VARCHAR', 'start_pos': 'BIGINT', 'end_pos': 'BIGINT', "
                "'name': 'VARCHAR'})) TO ? (FORMAT parquet)", [str(table), str(partial)])
        finally:
            con.close()
        os.replace(partial, target)


def _parse_bed(bed_text: str) -> list[tuple[str, int, int, str]]:
    """BED lines as ``(chrom, start, end, name)``, 1-based and inclusive."""
    rows: list[tuple[str, int, int, str]] = []
    for number, line in enumerate(bed_text.splitlines(), start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 4:
            raise GeneError(f"line {number}: a gene needs chrom, start, end and name")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise GeneError(f"line {number}: start and end must be integers") from None
        if start < 0 or end <= start:
            raise GeneError(f"line {number}: need 0 <= start < end")
        rows.append((fields[0], start + 1, end, fields[3]))  # stored 1-based, inclusive
    if not rows:
        raise GeneError("the BED file has no genes")
    return rows
