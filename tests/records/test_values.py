from datetime import UTC, datetime

import pytest

from careplane.records.values import (
    DATE_MAX,
    date_range,
    fold,
    format_instant,
    parse_reference,
)


def test_date_precision_sets_the_interval() -> None:
    year = date_range("2021")
    assert (year.low, year.high) == (datetime(2021, 1, 1, tzinfo=UTC),
                                     datetime(2022, 1, 1, tzinfo=UTC))
    month = date_range("2021-12")
    assert month.high == datetime(2022, 1, 1, tzinfo=UTC)
    day = date_range("2024-02-29")
    assert day.high == datetime(2024, 3, 1, tzinfo=UTC)
    second = date_range("2021-03-04T10:00:00+01:00")
    assert second.low == datetime(2021, 3, 4, 9, 0, 0, tzinfo=UTC)
    assert (second.high - second.low).total_seconds() == 1
    tenth = date_range("2021-03-04T10:00:00.5Z")
    assert (tenth.high - tenth.low).total_seconds() == pytest.approx(0.1)
    assert date_range("9999").high == DATE_MAX


@pytest.mark.parametrize("text", ["2021-02-30", "2021-13", "2021-00-10", "yesterday",
                                  "2021-01-01T25:00:00Z", "0000", "2021-01-01T10:00:00+15:00"])
def test_impossible_dates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        date_range(text)


def test_fold_ignores_case_accents_and_spacing() -> None:
    assert fold("  Zoë   ÅSTRÖM ") == "zoe astrom"
    assert len(fold("x" * 1000)) == 255


def test_format_instant_is_utc_milliseconds() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert format_instant(moment) == "2024-01-02T03:04:05.678Z"


def test_references_are_parsed_like_search_compares_them() -> None:
    assert parse_reference("Patient/123") == parse_reference("Patient/123/_history/4")
    ref = parse_reference("Patient/123")
    assert ref is not None and (ref.type, ref.id, ref.url) == ("Patient", "123", None)
    absolute = parse_reference("http://example.org/fhir/Observation/abc")
    assert absolute is not None
    assert (absolute.type, absolute.id) == ("Observation", "abc")
    assert absolute.url == "http://example.org/fhir/Observation/abc"
    canonical = parse_reference("http://hl7.org/fhir/ValueSet/example|4.0.1")
    assert canonical is not None and canonical.url == "http://hl7.org/fhir/ValueSet/example"
    assert parse_reference("#contained") is None
    assert parse_reference("not a reference") is None
    urn = parse_reference("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0")
    assert urn is not None and urn.type is None
