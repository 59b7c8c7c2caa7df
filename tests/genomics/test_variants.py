"""The variant store: per-sample Parquet, region/gene/genotype queries, cohort frequencies."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from careplane.genomics.simulate import SimulatedDataset
from careplane.genomics.variants import GeneError, VariantQuery, VariantStore
from careplane.security import Role
from careplane.settings import Settings
from tests.conftest import Accounts


@pytest.fixture
def store(tmp_path: Path, dataset: SimulatedDataset) -> VariantStore:
    s = VariantStore(tmp_path)
    assert s.load_vcf(dataset.truth_vcf, org_id="orga", sample_id="s1", sample_name="ONE",
                      run_id="r1") == len(dataset.variants)
    return s


def test_region_queries_return_exactly_the_calls_inside(store: VariantStore,
                                                        dataset: SimulatedDataset) -> None:
    expected = [v for v in dataset.variants
                if v.contig == "chr1" and v.pos + len(v.ref) - 1 >= 1000 and v.pos <= 9000]
    result = store.query("orga", VariantQuery(chrom="chr1", start=1000, end=9000, limit=1000))
    assert result["total"] == len(expected) > 0
    assert [(r["pos"], r["ref"], r["alt"]) for r in result["variants"]] == [
        (v.pos, v.ref, v.alt) for v in expected]
    homs = store.query("orga", VariantQuery(zygosity="hom", limit=1000))
    assert homs["total"] == sum(1 for v in dataset.variants if v.is_homozygous)
    indels = store.query("orga", VariantQuery(variant_class="indel", limit=1000))
    assert indels["total"] == dataset.n_indel


def test_cohort_frequency_and_latest_run_per_sample(store: VariantStore,
                                                    dataset: SimulatedDataset) -> None:
    store.load_vcf(dataset.truth_vcf, org_id="orga", sample_id="s2", sample_name="TWO",
                   run_id="r2")
    first = dataset.variants[0]
    rows = store.query("orga", VariantQuery(chrom=first.contig, start=first.pos,
                                            end=first.pos))["variants"]
    assert [r["sample_name"] for r in rows] == ["ONE", "TWO"]
    expected_ac = 2 * (2 if first.is_homozygous else 1)
    assert all(r["allele_count"] == expected_ac and r["carriers"] == 2 for r in rows)
    assert rows[0]["cohort_af"] == pytest.approx(expected_ac / 4)
    # A newer run of a sample replaces its calls rather than adding to them.
    store.load_vcf(dataset.truth_vcf, org_id="orga", sample_id="s2", sample_name="TWO",
                   run_id="r3")
    again = store.query("orga", VariantQuery(chrom=first.contig, start=first.pos,
                                             end=first.pos))["variants"]
    assert len(again) == 2 and {r["run_id"] for r in again} == {"r1", "r3"}
    # Another organisation's store is separate.
    assert store.query("orgb", VariantQuery())["total"] == 0
    assert {r["sample_name"] for r in store.summary("orga")} == {"ONE", "TWO"}


def test_gene_queries(store: VariantStore, dataset: SimulatedDataset) -> None:
    store.load_genes("# genes\nchr1\t0\t5000\tgeneA\nchr2\t99\t20000\tgeneB\n", org_id="orga")
    in_a = [v for v in dataset.variants if v.contig == "chr1" and v.pos <= 5000]
    result = store.query("orga", VariantQuery(gene="geneA", limit=1000))
    assert result["total"] == len(in_a) > 0
    assert store.query("orga", VariantQuery(gene="nope"))["total"] == 0
    assert [g["name"] for g in store.genes("orga")] == ["geneA", "geneB"]
    with pytest.raises(GeneError, match="line 1"):
        store.load_genes("chr1\t10\t5\tbad\n", org_id="orga")


def test_variants_api(client: TestClient, accounts: Accounts, settings: Settings,
                      dataset: SimulatedDataset) -> None:
    nurse = accounts.make("gina", Role.clinician)
    sample = client.post("/api/genomics/samples", json={"name": "ONE"},
                         headers=nurse.headers).json()
    VariantStore(settings.data_dir).load_vcf(dataset.truth_vcf, org_id=nurse.org_id,
                                             sample_id=sample["id"], sample_name="ONE",
                                             run_id="r1")
    got = client.get("/api/genomics/variants", params={"chrom": "chr1", "start": 1,
                                                       "end": 10_000, "genotype": "het"},
                     headers=nurse.headers)
    assert got.status_code == 200
    body = got.json()
    assert body["total"] > 0 and all(v["zygosity"] == "het" for v in body["variants"])
    # Out of the box, gene queries use the shipped table of the simulator's contigs.
    shipped = client.get("/api/genomics/genes", headers=nurse.headers)
    assert shipped.headers["Gene-Table"] == "default" and len(shipped.json()) > 300
    first = shipped.json()[0]
    assert client.get("/api/genomics/variants", params={"gene": first["name"]},
                      headers=nurse.headers).json()["total"] == sum(
        1 for v in dataset.variants if v.contig == first["chrom"]
        and first["start"] <= v.pos + len(v.ref) - 1 and v.pos <= first["end"])
    genes = client.put("/api/genomics/genes", content=b"chr1\t0\t3000\tgeneA\n",
                       headers=nurse.headers)
    assert genes.status_code == 200 and genes.json() == {"genes": 1}
    by_gene = client.get("/api/genomics/variants", params={"gene": "geneA"},
                         headers=nurse.headers).json()
    assert by_gene["total"] == sum(1 for v in dataset.variants
                                   if v.contig == "chr1" and v.pos <= 3000)
    own = client.get("/api/genomics/genes", headers=nurse.headers)
    assert own.headers["Gene-Table"] == "organisation" and len(own.json()) == 1
    assert client.delete("/api/genomics/genes", headers=nurse.headers).status_code == 204
    assert client.get("/api/genomics/genes",
                      headers=nurse.headers).headers["Gene-Table"] == "default"
    bad = client.put("/api/genomics/genes", content=b"chr1\tx\t3\tg\n", headers=nurse.headers)
    assert bad.status_code == 422 and "line 1" in bad.json()["error"]["message"]
    assert client.get("/api/genomics/variants", params={"start": 10, "end": 5},
                      headers=nurse.headers).status_code == 422
    other = accounts.make("oscar", Role.clinician, org="org-b")
    assert client.get("/api/genomics/variants", headers=other.headers).json()["total"] == 0


def test_shipped_gene_table_answers_gene_queries_until_one_is_loaded(
        store: VariantStore, dataset: SimulatedDataset) -> None:
    from careplane.genomics.simulate import simulated_genes
    from careplane.genomics.variants import DEFAULT_GENES

    # The shipped table is exactly the documented generator's output.
    shipped = [line.split("\t") for line in DEFAULT_GENES.read_text().splitlines()
               if not line.startswith("#")]
    assert [(c, int(s), int(e), n) for c, s, e, n in shipped] == simulated_genes(
        {f"chr{i}": 250_000 for i in range(1, 5)})
    assert store.gene_table("orga") == "default"
    genes = store.genes("orga")
    assert len(genes) == len(shipped) and genes[0]["start"] == int(shipped[0][1]) + 1
    # Every gene with planted variants finds exactly the variants inside it.
    hits = 0
    for gene in genes:
        inside = [v for v in dataset.variants if v.contig == gene["chrom"]
                  and v.pos <= gene["end"] and v.pos + len(v.ref) - 1 >= gene["start"]]
        found = store.query("orga", VariantQuery(gene=gene["name"], limit=1000))
        assert found["total"] == len(inside), gene
        hits += bool(inside)
    assert hits > 5
    # An organisation's own table replaces it; dropping that brings the shipped one back.
    store.load_genes("chr1\t0\t5000\tgeneA\n", org_id="orga")
    assert store.gene_table("orga") == "organisation"
    assert store.query("orga", VariantQuery(gene="CHR1G001"))["total"] == 0
    store.reset_genes("orga")
    assert store.gene_table("orga") == "default" and len(store.genes("orga")) == len(shipped)


def _one_site_vcf(path: Path, genotype: tuple[int | None, ...] | None) -> Path:
    import pysam

    header = pysam.VariantHeader()
    header.contigs.add("chr1", length=1000)
    header.formats.add("GT", 1, "String", "Genotype")
    header.add_sample("S")
    with pysam.VariantFile(str(path), "w", header=header) as out:
        if genotype is not None:
            rec = out.new_record(contig="chr1", start=99, stop=100, alleles=("A", "G"),
                                 qual=50)
            rec.samples["S"]["GT"] = genotype
            out.write(rec)
    return path


def test_a_missing_call_counts_as_missing_not_reference(tmp_path: Path) -> None:
    store = VariantStore(tmp_path / "store")
    calls = {"a": (0, 1), "b": (None, None), "c": None, "d": (0, None), "e": (1, 1)}
    for name, gt in calls.items():
        vcf = _one_site_vcf(tmp_path / f"{name}.vcf", gt)
        store.load_vcf(vcf, org_id="orga", sample_id=name, sample_name=name.upper(),
                       run_id="r")
    rows = store.query("orga", VariantQuery(chrom="chr1"))["variants"]
    # Only the carriers are listed; b's ./. and d's 0/. are not variants of theirs.
    assert [(r["sample_name"], r["genotype"], r["zygosity"]) for r in rows] == [
        ("A", "0/1", "het"), ("E", "1/1", "hom")]
    # 5 samples, 10 alleles, of which 3 are missing (b: 2, d: 1): 3 alternate of 7 called;
    # c, with no record, counts as reference.
    assert {r["allele_count"] for r in rows} == {3} and {r["carriers"] for r in rows} == {2}
    assert {r["allele_number"] for r in rows} == {7}
    assert rows[0]["cohort_af"] == pytest.approx(3 / 7)
    assert store.query("orga", VariantQuery(max_cohort_af=0.4))["total"] == 0
    assert store.query("orga", VariantQuery(max_cohort_af=0.43))["total"] == 2
    summary = {r["sample_name"]: r["variants"] for r in store.summary("orga")}
    assert summary == {"A": 1, "E": 1}
