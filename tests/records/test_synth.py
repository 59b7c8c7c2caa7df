"""Synthetic patients: reproducible, valid FHIR R4, clinically plausible, and loadable."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import func, select
from typer.testing import CliRunner

from careplane.platform.db import Database
from careplane.records.models import resource as stored_resource
from careplane.records.synth import (
    HEART_FAILURE_DRUGS,
    MRN_SYSTEM,
    PENICILLINS,
    generate,
    load_bundles,
    synth_command,
    write_ndjson,
)
from careplane.security import Role
from careplane.security.identity import create_org, create_user, resolve_token
from tests.records.conftest import Fhir

TODAY = date(2025, 6, 1)
VITALS = {  # LOINC -> UCUM unit the vital-signs profile asks for
    "8867-4": "/min", "9279-1": "/min", "8310-5": "Cel", "29463-7": "kg", "8302-2": "cm",
    "39156-5": "kg/m2", "2708-6": "%", "9843-4": "cm",
}
STATINS = {"617310", "617311", "312961", "859747"}


@pytest.fixture(scope="module")
def population() -> list[dict[str, Any]]:
    return list(generate(600, 11, start=TODAY))


def resources(bundle: dict[str, Any], rtype: str | None = None) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]
            if rtype is None or e["resource"]["resourceType"] == rtype]


def patient_of(bundle: dict[str, Any]) -> dict[str, Any]:
    (patient,) = resources(bundle, "Patient")
    return patient


def age_on(patient: dict[str, Any], when: str) -> float:
    return (date.fromisoformat(when[:10]) - date.fromisoformat(patient["birthDate"])).days \
        / 365.25


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def codes(resource: dict[str, Any], field: str = "code") -> set[str]:
    return {c["code"] for c in resource.get(field, {}).get("coding", [])}


def test_same_seed_same_patients_and_patients_do_not_depend_on_the_population_size() -> None:
    first = [orjson.dumps(b) for b in generate(6, 42, start=TODAY)]
    again = [orjson.dumps(b) for b in generate(6, 42, start=TODAY)]
    fewer = [orjson.dumps(b) for b in generate(3, 42, start=TODAY)]
    assert first == again
    assert fewer == first[:3]
    other = [orjson.dumps(b) for b in generate(6, 43, start=TODAY)]
    assert all(a != b for a, b in zip(first, other, strict=True))
    later = [orjson.dumps(b) for b in generate(1, 42, start=date(2026, 6, 1))]
    assert later[0] != first[0]


def test_bundles_are_transactions_whose_references_resolve_inside(
        population: list[dict[str, Any]]) -> None:
    for bundle in population[:200]:
        assert bundle["type"] == "transaction"
        urls = [e["fullUrl"] for e in bundle["entry"]]
        assert len(urls) == len(set(urls))
        assert all(u.startswith("urn:uuid:") for u in urls)
        assert len(bundle["entry"]) < 1000   # a server's default bundle limit
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["request"]["method"] == "POST"
            assert entry["request"]["url"] == resource["resourceType"]
            assert "id" not in resource
            if resource["resourceType"] in ("Organization", "Practitioner"):
                ident = resource["identifier"][0]
                assert entry["request"]["ifNoneExist"] == \
                    f"identifier={ident['system']}|{ident['value']}"
            for ref in references(resource):
                assert ref in urls, (resource["resourceType"], ref)
        patient_url = next(e["fullUrl"] for e in bundle["entry"]
                           if e["resource"]["resourceType"] == "Patient")
        for resource in resources(bundle):
            subject = resource.get("subject") or resource.get("patient")
            if subject is not None:
                assert subject["reference"] == patient_url


def test_every_resource_validates_against_the_r4b_models(
        population: list[dict[str, Any]]) -> None:
    checked = Counter[str]()
    for bundle in population[:50]:
        for resource in resources(bundle):
            rtype = resource["resourceType"]
            model = get_fhir_model_class(rtype)
            model.model_validate(resource)
            checked[rtype] += 1
    Bundle.model_validate(population[0])
    assert {"Patient", "Encounter", "Condition", "Observation", "MedicationRequest",
            "DiagnosticReport", "ServiceRequest", "Organization", "Practitioner"} <= set(checked)
    assert checked["Patient"] == 50


def test_demographics_look_like_a_population(population: list[dict[str, Any]]) -> None:
    patients = [patient_of(b) for b in population]
    mrns = [p["identifier"][0]["value"] for p in patients]
    assert {p["identifier"][0]["system"] for p in patients} == {MRN_SYSTEM}
    assert len(set(mrns)) == len(mrns)
    ages = [age_on(p, TODAY.isoformat()) for p in patients]
    assert min(ages) >= 0 and max(ages) < 101
    assert 0.12 < sum(a < 18 for a in ages) / len(ages) < 0.30
    assert 0.10 < sum(a >= 65 for a in ages) / len(ages) < 0.28
    genders = Counter(p["gender"] for p in patients)
    assert 0.4 < genders["female"] / len(patients) < 0.6
    deceased = [p for p in patients if "deceasedDateTime" in p]
    assert 0.01 <= len(deceased) / len(patients) <= 0.06
    languages = {p["communication"][0]["language"]["coding"][0]["code"] for p in patients}
    assert len(languages) >= 6
    for p in patients:
        name = p["name"][0]
        assert name["family"] and name["given"]
        assert p["address"][0]["city"] and p["telecom"][0]["value"]
        if "deceasedDateTime" in p:
            assert p["deceasedDateTime"][:10] <= TODAY.isoformat()


def test_nothing_happens_after_death_or_after_today(population: list[dict[str, Any]]) -> None:
    for bundle in population:
        patient = patient_of(bundle)
        last = patient.get("deceasedDateTime", TODAY.isoformat())[:10]
        for r in resources(bundle):
            for when in (r.get("effectiveDateTime"), r.get("authoredOn"),
                         r.get("onsetDateTime"), r.get("period", {}).get("start")):
                if when is not None:
                    assert when[:10] <= last, (r["resourceType"], when, last)
                    assert when[:10] >= patient["birthDate"]


def test_a_shorter_history_keeps_visits_and_deaths_within_its_years() -> None:
    one_year = list(generate(150, 11, start=TODAY, years=1))
    window = date(2024, 6, 1).isoformat()
    for bundle in one_year:
        patient = patient_of(bundle)
        assert patient.get("deceasedDateTime", TODAY.isoformat())[:10] >= window
        for r in resources(bundle, "Encounter") + resources(bundle, "Observation"):
            when = r.get("effectiveDateTime") or r["period"]["start"]
            assert when[:10] >= window, (r["resourceType"], when)
    five_years = list(generate(150, 11, start=TODAY))
    shorter = sum(len(b["entry"]) for b in one_year)
    assert shorter < 0.4 * sum(len(b["entry"]) for b in five_years)
    with pytest.raises(ValueError, match="years"):
        next(generate(1, 11, start=TODAY, years=0))


def test_vital_signs_follow_the_fhir_profile(population: list[dict[str, Any]]) -> None:
    seen = Counter[str]()
    for bundle in population[:150]:
        for obs in resources(bundle, "Observation"):
            category = obs["category"][0]["coding"][0]
            if category["code"] != "vital-signs":
                continue
            assert category["system"] == \
                "http://terminology.hl7.org/CodeSystem/observation-category"
            assert obs["status"] == "final" and obs["effectiveDateTime"]
            assert obs["meta"]["profile"][0].startswith("http://hl7.org/fhir/StructureDefinition/")
            code = obs["code"]["coding"][0]["code"]
            seen[code] += 1
            if code == "85354-9":
                parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"]
                         for c in obs["component"]}
                systolic, diastolic = parts["8480-6"], parts["8462-4"]
                assert systolic["code"] == diastolic["code"] == "mm[Hg]"
                assert systolic["value"] > diastolic["value"] > 25
                assert 60 < systolic["value"] < 230
                continue
            quantity = obs["valueQuantity"]
            assert quantity["system"] == "http://unitsofmeasure.org"
            assert quantity["code"] == quantity["unit"] == VITALS[code]
            if code == "2708-6":
                assert "59408-5" in codes(obs)
                assert 80 <= quantity["value"] <= 100
            if code == "8310-5":
                assert 35.5 < quantity["value"] < 41
    assert set(seen) >= {"85354-9", *VITALS} - {"9843-4"}


def test_labs_carry_reference_ranges_and_matching_interpretations(
        population: list[dict[str, Any]]) -> None:
    labs = 0
    for bundle in population[:150]:
        for obs in resources(bundle, "Observation"):
            if obs["category"][0]["coding"][0]["code"] != "laboratory":
                continue
            labs += 1
            value = obs["valueQuantity"]["value"]
            ref = obs["referenceRange"][0]
            flag = obs["interpretation"][0]["coding"][0]["code"]
            high = ref.get("high", {}).get("value")
            low = ref.get("low", {}).get("value")
            if high is not None and value > high:
                assert flag in ("H", "HH")
            elif low is not None and value < low:
                assert flag in ("L", "LL")
            else:
                assert flag == "N"
        for report in resources(bundle, "DiagnosticReport"):
            assert report["result"] and report["status"] == "final"
    assert labs > 1000


def test_clinical_plausibility(population: list[dict[str, Any]]) -> None:
    a1c: dict[bool, list[float]] = {True: [], False: []}
    mammograms = 0
    for bundle in population:
        patient = patient_of(bundle)
        conditions = {c["code"]["coding"][0]["code"]: c for c in resources(bundle, "Condition")}
        diabetic = "44054006" in conditions
        allergic_to_penicillin = any("7980" in codes(a)
                                     for a in resources(bundle, "AllergyIntolerance"))
        if "84114007" in conditions:
            assert age_on(patient, conditions["84114007"]["onsetDateTime"]) >= 45
        for med in resources(bundle, "MedicationRequest"):
            drug = codes(med, "medicationCodeableConcept")
            age = age_on(patient, med["authoredOn"])
            if drug & HEART_FAILURE_DRUGS:
                assert age >= 18, "a child with heart failure medicines"
            if drug & STATINS:
                assert age >= 18
            if allergic_to_penicillin:
                assert not drug & PENICILLINS
        for obs in resources(bundle, "Observation"):
            if "4548-4" in codes(obs):
                value = obs["valueQuantity"]["value"]
                assert 4.0 <= value <= 14.0
                a1c[diabetic].append(value)
            if "62238-1" in codes(obs):
                assert 5 < obs["valueQuantity"]["value"] < 200
        for order in resources(bundle, "ServiceRequest"):
            if "24606-6" in codes(order):
                mammograms += 1
                assert patient["gender"] == "female"
                assert 50 <= age_on(patient, order["authoredOn"]) < 75
    assert mammograms > 20
    assert statistics.mean(a1c[True]) > 6.5 > statistics.mean(a1c[False])


def test_treatment_brings_blood_pressure_and_hba1c_down(
        population: list[dict[str, Any]]) -> None:
    """Patients diagnosed during the record show the disease, then the effect of the drug."""
    drops: dict[str, list[float]] = defaultdict(list)
    for bundle in population:
        conditions = {c["code"]["coding"][0]["code"]: c for c in resources(bundle, "Condition")}
        for condition_code, loinc in (("38341003", "8480-6"), ("44054006", "4548-4")):
            condition = conditions.get(condition_code)
            if condition is None or "encounter" not in condition:
                continue     # diagnosed before the record window
            started = min((m["authoredOn"] for m in resources(bundle, "MedicationRequest")
                           if m["reasonReference"][0]["reference"] in
                           {e["fullUrl"] for e in bundle["entry"]
                            if e["resource"] is condition}), default=None)
            if started is None:
                continue
            values: list[tuple[str, float]] = []
            for obs in resources(bundle, "Observation"):
                if loinc == "8480-6" and "85354-9" in codes(obs):
                    values.append((obs["effectiveDateTime"],
                                   obs["component"][0]["valueQuantity"]["value"]))
                elif loinc in codes(obs):
                    values.append((obs["effectiveDateTime"], obs["valueQuantity"]["value"]))
            at_diagnosis = [v for when, v in sorted(values) if when <= started][-1:]
            after = [v for when, v in values
                     if (datetime.fromisoformat(when[:10]) -
                         datetime.fromisoformat(started[:10])).days > 150]
            if at_diagnosis and after:
                drops[loinc].append(at_diagnosis[0] - statistics.mean(after))
    assert len(drops["8480-6"]) >= 5 and len(drops["4548-4"]) >= 3
    assert statistics.mean(drops["8480-6"]) > 6
    assert statistics.mean(drops["4548-4"]) > 0.4


def test_orders_for_imaging_and_genomics(population: list[dict[str, Any]]) -> None:
    orders = [o for b in population for o in resources(b, "ServiceRequest")]
    by_code = Counter(o["code"]["coding"][0]["code"] for o in orders)
    assert by_code["36643-5"] > 10 and by_code["24606-6"] > 10 and by_code["86206-0"] >= 2
    accessions = [o["identifier"][0]["value"] for o in orders]
    assert len(set(accessions)) == len(accessions)
    assert all(len(a) <= 16 for a in accessions)   # fits a DICOM Accession Number
    assert {o["status"] for o in orders} == {"active", "completed"}
    for o in orders:
        assert o["intent"] == "order" and o["subject"] and o["requester"]
        if o["status"] == "active":
            assert (TODAY - date.fromisoformat(o["authoredOn"][:10])).days < 45


def test_write_ndjson_gives_bulk_data_files(tmp_path: Path) -> None:
    counts = write_ndjson(tmp_path / "out", 12, 3, start=TODAY)
    files = {p.stem: p for p in (tmp_path / "out").glob("*.ndjson")}
    assert set(files) == set(counts)
    assert counts["Patient"] == 12 and counts["Organization"] == 1
    ids: dict[str, set[str]] = {}
    lines: dict[str, list[dict[str, Any]]] = {}
    for rtype, path in files.items():
        lines[rtype] = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines[rtype]) == counts[rtype]
        assert all(r["resourceType"] == rtype for r in lines[rtype])
        ids[rtype] = {r["id"] for r in lines[rtype]}
        assert len(ids[rtype]) == counts[rtype]
    for rtype, rs in lines.items():
        for resource in rs:
            for ref in references(resource):
                target, rid = ref.split("/")
                assert rid in ids[target], (rtype, ref)
    bundles = list(generate(12, 3, start=TODAY))
    assert counts["Observation"] == sum(len(resources(b, "Observation")) for b in bundles)


def test_a_bulk_load_refreshes_the_statistics_each_time_the_store_doubles(
        db: Database, accounts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.records import maintenance, synth

    account = accounts.make("bulk", Role.clinician, org="org-a")
    with db.session() as session:
        principal = resolve_token(session, account.token, kind="bearer")
    assert principal is not None
    sizes: list[int] = []

    def counting_analyze(database: Database) -> None:
        with database.session() as session:
            sizes.append(session.scalar(select(func.count()).select_from(stored_resource)) or 0)

    monkeypatch.setattr(maintenance, "analyze", counting_analyze)
    monkeypatch.setattr(synth, "_FIRST_ANALYZE", 50)
    counts = load_bundles(db, principal, generate(8, 5, start=TODAY), base="http://t/fhir")
    total = sum(counts.values())
    assert total > 800 and len(sizes) >= 2
    assert sizes[0] >= 50 and all(b >= 2 * a for a, b in pairwise(sizes))
    assert sizes[-1] <= total


def test_bundles_load_into_the_fhir_store(db: Database, fhir: Fhir, accounts: Any) -> None:
    account = accounts.make("loader", Role.clinician, org="org-a")
    with db.session() as session:
        principal = resolve_token(session, account.token, kind="bearer")
    assert principal is not None
    bundles = list(generate(3, 8, start=TODAY))
    counts = load_bundles(db, principal, bundles[:2], base="http://testserver/fhir")
    assert counts["Patient"] == 2 and counts["Organization"] == 1
    response = fhir.post("", bundles[2])        # the same over HTTP, as a client would
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "transaction-response"
    assert len(fhir.ids("Patient")) == 3
    assert len(fhir.ids("Organization")) == 1     # conditional create made it once
    staff = {r["identifier"][0]["value"] for b in bundles for r in resources(b, "Practitioner")}
    assert len(fhir.ids("Practitioner", {"_count": "100"})) == len(staff)
    mrn = patient_of(bundles[2])["identifier"][0]["value"]
    (pid,) = fhir.ids("Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"})
    expected = len(resources(bundles[2], "Observation"))
    found = fhir.search("Observation", {"subject": f"Patient/{pid}", "_summary": "count"})
    assert found["total"] == expected


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(synth_command)
    return app


def test_command_prints_bundles_or_writes_files(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(_cli(), ["-n", "2", "--seed", "4", "--start", "2025-06-01"])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == [json.loads(orjson.dumps(b)) for b in generate(2, 4, start=TODAY)]
    result = runner.invoke(_cli(), ["-n", "2", "--seed", "4", "--start", "2025-06-01",
                                    "--years", "1.5"])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == [json.loads(orjson.dumps(b))
                       for b in generate(2, 4, start=TODAY, years=1.5)]
    result = runner.invoke(_cli(), ["-n", "2", "--out", str(tmp_path), "--start", "2025-06-01"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ndjson"]["resources"]["Patient"] == 2
    assert (tmp_path / "Patient.ndjson").exists()


def test_command_loads_into_the_store(db_url: str, db: Database, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", db_url)
    monkeypatch.setenv("CAREPLANE_ENV", "test")
    args = ["-n", "1", "--load", "--as", "filer", "--data-dir", str(tmp_path)]
    runner = CliRunner()
    missing = runner.invoke(_cli(), args)
    assert missing.exit_code == 2 and "no user 'filer'" in missing.output
    with db.session() as session:
        org = create_org(session, "st-marys", "St Mary's")
        create_user(session, "filer", "a-long-enough-password", org=org,
                    roles=[Role.clinician])
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)["loaded"]
    assert loaded["Patient"] == 1 and loaded["Observation"] > 0
