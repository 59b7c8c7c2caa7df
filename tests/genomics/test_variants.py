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
    genes = client.put("/api/genomics/genes", content=b"chr1\t0\t3000\tgeneA\n",
                       headers=nurse.headers)
    assert genes.status_code == 200 and genes.json() == {"genes": 1}
    by_gene = client.get("/api/genomics/variants", params={"gene": "geneA"},
                         headers=nurse.headers).json()
    assert by_gene["total"] == sum(1 for v in dataset.variants
                                   if v.contig == "chr1" and v.pos <= 3000)
    bad = client.put("/api/genomics/genes", content=b"chr1\tx\t3\tg\n", headers=nurse.headers)
    assert bad.status_code == 422 and "line 1" in bad.json()["error"]["message"]
    assert client.get("/api/genomics/variants", params={"start": 10, "end": 5},
                      headers=nurse.headers).status_code == 422
    other = accounts.make("oscar", Role.clinician, org="org-b")
    assert client.get("/api/genomics/variants", headers=other.headers).json()["total"] == 0
