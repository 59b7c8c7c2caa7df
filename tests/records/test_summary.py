from careplane.records.summary import elements_of, shape

OBS = {"resourceType": "Observation", "id": "o", "meta": {"versionId": "1"},
       "text": {"status": "generated", "div": "<div/>"}, "status": "final",
       "code": {"text": "x"}, "valueQuantity": {"value": 1}, "note": [{"text": "n"}]}


def test_summary_sets_come_from_the_models() -> None:
    keep = elements_of("Observation", "true") or frozenset()
    assert {"status", "code", "subject", "valueQuantity"} <= keep
    assert "note" not in keep


def test_shapes_are_tagged_subsetted_and_leave_the_input_alone() -> None:
    summary = shape(OBS, "true", ())
    assert "note" not in summary and "text" not in summary and summary["status"] == "final"
    assert summary["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert "text" not in shape(OBS, "data", ())
    assert set(shape(OBS, "text", ())) == {"resourceType", "id", "meta", "text", "status",
                                           "code"}
    elements = shape(OBS, None, ("value",))
    assert set(elements) == {"resourceType", "id", "meta", "valueQuantity"}
    assert shape(OBS, None, ()) is OBS
    assert "tag" not in OBS["meta"]
