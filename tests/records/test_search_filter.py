"""_filter expressions, near on Location, and their refusals."""

from __future__ import annotations

import math

import pytest

from tests.records.conftest import Fhir, observation, patient


@pytest.fixture
def people(fhir: Fhir) -> dict[str, str]:
    ids = {}
    ids["peter"] = fhir.create(patient("Chalmers", "Peter", birthDate="1974-12-25",
                                       gender="male"))["id"]
    ids["ann"] = fhir.create(patient("Chalmers-Smith", "Ann", birthDate="2001-02-03",
                                     gender="female"))["id"]
    ids["zoe"] = fhir.create(patient("Ødegård", "Zoë", birthDate="1990-06-01",
                                     gender="female"))["id"]
    ids["hr"] = fhir.create(observation(f"Patient/{ids['peter']}", value=72))["id"]
    ids["hr2"] = fhir.create(observation(f"Patient/{ids['ann']}", value=130))["id"]
    return ids


def test_filter_expressions(fhir: Fhir, people: dict[str, str]) -> None:
    p = people
    ids = fhir.ids

    def f(expr: str, rtype: str = "Patient") -> set[str]:
        return set(ids(rtype, {"_filter": expr}))

    assert f("family eq chalmers") == {p["peter"]}        # the whole value, folded
    assert f("family sw chalmers") == {p["peter"], p["ann"]}
    assert f('family co "MERS-SM"') == {p["ann"]}
    assert f("family ew smith") == {p["ann"]}
    assert f("family ne chalmers") == {p["ann"], p["zoe"]}
    assert f("family eq odegard") == {p["zoe"]}
    assert f("gender eq female and birthdate lt 2000") == {p["zoe"]}
    assert f("gender eq male or birthdate ge 2001-01-01") == {p["peter"], p["ann"]}
    assert f("not (gender eq female)") == {p["peter"]}
    assert f("(family sw chalmers and gender eq female) or given eq zoe") \
        == {p["ann"], p["zoe"]}
    assert f("gender eq female and (birthdate ap 1990-06-01 or family ew smith)") \
        == {p["ann"], p["zoe"]}
    assert f("telecom pr true") == set() and f("birthdate pr false") == set()
    assert f("birthdate pr true") == {p["peter"], p["ann"], p["zoe"]}
    assert f("value-quantity gt 100", "Observation") == {p["hr2"]}
    assert f("code eq http://loinc.org|8867-4 and value-quantity le 72", "Observation") \
        == {p["hr"]}
    assert f(f"subject eq Patient/{p['ann']}", "Observation") == {p["hr2"]}
    assert f("subject.name eq peter", "Observation") == {p["hr"]}
    assert f(f"_id eq {p['zoe']} or _id eq {p['ann']}") == {p["zoe"], p["ann"]}
    # combined with ordinary parameters (AND)
    assert set(ids("Patient", {"_filter": "family sw chalmers", "gender": "female"})) \
        == {p["ann"]}
    # refusals name what is wrong, whatever Prefer: handling says
    for expr, needle in (("family po x", "'po'"), ("name[use eq official] eq x", "[use"),
                         ("gender co ma", "token"), ("nope eq 1", "nope"),
                         ("(gender eq male", "'('"), ("gender eq", "ends"),
                         ("birthdate eq yesterday", "yesterday"), ("", "empty"),
                         ("gender eq male xor x", "xor")):
        r = fhir.get("Patient", params={"_filter": expr})
        assert r.status_code == 400, (expr, r.text)
        assert needle in r.text, (expr, r.text)


def _location(fhir: Fhir, name: str, lat: float, lon: float) -> str:
    return str(fhir.create({"resourceType": "Location", "name": name,
                            "position": {"latitude": lat, "longitude": lon}})["id"])


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * \
        math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(a))


def test_near_on_location(fhir: Fhir, other_org: Fhir) -> None:
    oslo = _location(fhir, "Oslo", 59.9139, 10.7522)
    drammen = _location(fhir, "Drammen", 59.7439, 10.2045)   # ~35 km from Oslo
    bergen = _location(fhir, "Bergen", 60.3913, 5.3221)       # ~305 km
    fhir.create({"resourceType": "Location", "name": "Nowhere"})
    their = _location(other_org, "Theirs", 59.9139, 10.7522)
    assert 30 < _km(59.9139, 10.7522, 59.7439, 10.2045) < 40
    ids = fhir.ids
    assert ids("Location", {"near": "59.9139|10.7522|10|km"}) == [oslo]
    assert set(ids("Location", {"near": "59.9139|10.7522|40|km"})) == {oslo, drammen}
    assert set(ids("Location", {"near": "59.9139|10.7522|40000|m"})) == {oslo, drammen}
    assert set(ids("Location", {"near": "59.9139|10.7522|200|[mi_i]"})) \
        == {oslo, drammen, bergen}
    assert ids("Location", {"near": "59.9139|10.7522"}) == [oslo]  # within 5 km by default
    assert set(ids("Location", {"near": "60.3913|5.3221|1,59.7439|10.2045|1"})) \
        == {bergen, drammen}
    assert ids("Location", {"near": "59.9139|10.7522|10", "name": "oslo"}) == [oslo]
    assert ids("Location", {"near": "0|0|1"}) == []
    assert other_org.ids("Location", {"near": "59.9139|10.7522|10"}) == [their]
    for bad in ("91|0|1", "x|0", "1|2|3|parsec", "1", "1|2|-3"):
        r = fhir.get("Location", params={"near": bad})
        assert r.status_code == 400, (bad, r.text)


def test_text_and_content_search(fhir: Fhir, other_org: Fhir, db_url: str,
                                 client: object) -> None:
    narrative = {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Crushing '
                        '<b>chest</b> pain since morning</p></div>'}
    pain = fhir.create({"resourceType": "Condition", "text": narrative,
                        "subject": {"reference": "Patient/x"},
                        "code": {"text": "Angina pectoris"},
                        "note": [{"text": "Referred by the ambulance crew"}]})["id"]
    rash = fhir.create({"resourceType": "Condition", "subject": {"reference": "Patient/x"},
                        "code": {"text": "Rash on the left arm"}})["id"]
    other_org.create({"resourceType": "Condition", "subject": {"reference": "Patient/y"},
                      "code": {"text": "Angina pectoris"}})
    ids = fhir.ids
    assert ids("Condition", {"_text": "chest"}) == [pain]
    assert ids("Condition", {"_text": "chest pain"}) == [pain]        # every word
    assert ids("Condition", {"_text": "angina"}) == []                # not in the narrative
    assert ids("Condition", {"_content": "angina"}) == [pain]         # but in the content
    assert ids("Condition", {"_content": "AMBULANCE"}) == [pain]
    assert set(ids("Condition", {"_content": "ambulance,rash"})) == {pain, rash}  # OR
    assert ids("Condition", {"_content": "rash arm"}) == [rash]
    assert ids("Condition", {"_content": "rash ambulance"}) == []
    assert ids("Condition", {"_content": "chest"}) == [pain]          # the narrative's words
    assert ids("Condition", {"_content": "angina", "_text": "morning"}) == [pain]
    assert set(ids("Condition", {"_filter": "_content eq rash or _text co morning"})) \
        == {pain, rash}
    assert fhir.ids("", {"_content": "pectoris"}) == [pain]            # across types
    assert ids("Condition", {"_content": "pector"}) == []              # whole words only
    assert ids("Condition", {"_content": '"or" and'}) == []            # no query syntax
    # a later version replaces the words of the earlier one
    r = fhir.put(f"Condition/{rash}", {"resourceType": "Condition", "id": rash,
                                        "subject": {"reference": "Patient/x"},
                                        "code": {"text": "Eczema"}})
    assert r.status_code == 200, r.text
    assert ids("Condition", {"_content": "rash"}) == []
    assert ids("Condition", {"_content": "eczema"}) == [rash]
    if db_url.startswith("postgresql"):
        from sqlalchemy import text

        engine = client.app.state.platform.db.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            names = set(conn.execute(text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'fhir_resource_version'"
            )).scalars())
        assert {"ix_fhir_resource_version_content_words",
                "ix_fhir_resource_version_text_words"} <= names


def test_three_part_composites_match_on_the_same_variant(fhir: Fhir) -> None:
    chrom = "http://terminology.hl7.org/CodeSystem/chromosome-human"

    def sequence(chromosome: str, window: tuple[int, int],
                 variants: list[tuple[int, int]]) -> str:
        return str(fhir.create({
            "resourceType": "MolecularSequence", "type": "dna", "coordinateSystem": 0,
            "referenceSeq": {"chromosome": {"coding": [{"system": chrom,
                                                         "code": chromosome}]},
                             "referenceSeqId": {"coding": [{"code": "NC_000001.11"}]},
                             "windowStart": window[0], "windowEnd": window[1]},
            "variant": [{"start": s, "end": e} for s, e in variants]})["id"])

    one = sequence("1", (100, 500), [(120, 130), (400, 420)])
    two = sequence("2", (100, 500), [(150, 160)])
    ids = fhir.ids
    assert ids("MolecularSequence", {"chromosome-variant-coordinate": "1$120$130"}) == [one]
    # start of one variant with the end of another is no match
    assert ids("MolecularSequence", {"chromosome-variant-coordinate": "1$120$420"}) == []
    assert ids("MolecularSequence", {"chromosome-variant-coordinate": "1$ge400$le420"}) \
        == [one]
    assert ids("MolecularSequence", {"chromosome-variant-coordinate": "2$gt100$lt200"}) \
        == [two]
    assert set(ids("MolecularSequence", {"chromosome-variant-coordinate":
                                         "1$gt100$lt200,2$gt100$lt200"})) == {one, two}
    assert set(ids("MolecularSequence", {"chromosome-window-coordinate": f"{chrom}|1$100$500"
                                         })) == {one}
    assert set(ids("MolecularSequence", {"chromosome-window-coordinate": "$le100$ge500"})) \
        == {one, two}
    assert ids("MolecularSequence", {"referenceseqid-variant-coordinate":
                                     "NC_000001.11$150$160"}) == [two]
    r = fhir.get("MolecularSequence", params={"chromosome-variant-coordinate": "1$120"})
    assert r.status_code == 400 and "chromosome$variant-start$variant-end" in r.text
