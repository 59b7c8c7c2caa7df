"""Reading what senders send: DICOM Part-10 files, checked before anything is stored.

A received instance is kept byte for byte. What this module decides is whether the bytes are
a whole, understandable DICOM object: parseable, not truncated, carrying the four UIDs that
place it in the index, in a transfer syntax this server can hand back. A dataset sent without
the 128-byte preamble and file meta information (some STOW-RS clients do this) is wrapped into
a proper Part-10 file, leaving the dataset's own bytes untouched.

Failures carry the DICOM failure reason codes of PS3.18 / PS3.4 so STOW-RS and C-STORE can
report them as the standard says.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from careplane._version import __version__

__all__ = [
    "SUPPORTED_TRANSFER_SYNTAXES",
    "FailureReason",
    "InvalidInstance",
    "PixelElement",
    "ReceivedInstance",
    "read_instance",
]


class FailureReason:
    """Failure reason codes of the Store Instances response (PS3.18 Table 10.5.3-2)."""

    processing_failure = 0x0110
    duplicate_sop_instance = 0x0111
    sop_class_not_supported = 0x0122
    out_of_resources = 0xA700
    dataset_does_not_match_sop_class = 0xA900
    cannot_understand = 0xC000
    transfer_syntax_not_supported = 0xC122


class InvalidInstance(ValueError):
    """The bytes are not an instance this server will store; ``reason`` is a failure code."""

    def __init__(self, message: str, reason: int = FailureReason.cannot_understand,
                 sop_class_uid: str | None = None, sop_instance_uid: str | None = None
                 ) -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


# The transfer syntaxes stored and served as received: the native ones, deflate, and every
# standard compression (JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/HEVC video).
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
})
_IDENTIFYING = (("SOPClassUID", "SOP Class UID (0008,0016)"),
                ("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
                ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
                ("SeriesInstanceUID", "Series Instance UID (0020,000E)"))
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                    b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF


@dataclass
class ReceivedInstance:
    """A checked instance: its parsed dataset and the Part-10 bytes to keep."""

    dataset: Dataset  # the header: everything before the pixel data
    pixel: PixelElement | None
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    # Part-10 file bytes: the received file itself, or a header to put before its dataset.
    header: bytes
    body: BinaryIO
    body_offset: int
    size: int

    def chunks(self, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """The Part-10 file as it will be stored."""
        if self.header:
            yield self.header
        self.body.seek(self.body_offset)
        while data := self.body.read(chunk):
            yield data


def _meta_end(data: BinaryIO, start: int) -> int:
    """Offset just after the group 0002 elements that begin at ``start`` (explicit VR LE)."""
    data.seek(start)
    offset = start
    while True:
        head = data.read(8)
        if len(head) < 8:
            raise InvalidInstance("the file meta information is truncated")
        group, _elem = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            return offset
        vr = head[4:6]
        if vr in _LONG_LENGTH_VRS:
            extra = data.read(4)
            if len(extra) < 4:
                raise InvalidInstance("the file meta information is truncated")
            (length,) = struct.unpack("<I", extra)
            offset += 12 + length
        else:
            (length,) = struct.unpack("<H", head[6:8])
            offset += 8 + length
        data.seek(offset)


def _check_complete(ds: Dataset, end: int) -> None:
    """Refuse data sets whose elements claim more bytes than arrived.

    ``end``: where the elements read must stop (the pixel data element, or the end of file).
    """
    last: RawDataElement | None = None
    for elem in ds.elements():
        if not isinstance(elem, RawDataElement):
            continue
        if elem.length != _UNDEFINED and elem.value is not None \
                and len(elem.value) < elem.length:
            raise InvalidInstance(
                f"the file is truncated: element {elem.tag} declares {elem.length} bytes, "
                f"{len(elem.value)} arrived")
        last = elem
    if last is not None and last.length != _UNDEFINED and last.value_tell is not None:
        stop = last.value_tell + last.length
        if stop < end:
            raise InvalidInstance(
                f"the file is truncated: {end - stop} trailing bytes are not a whole element")


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element is in the file (it is not parsed into the data set)."""

    tag: int
    vr: str
    length: int | None  # None: undefined (encapsulated)
    value_offset: int


_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def _pixel_element(data: BinaryIO, start: int, total: int, implicit: bool,
                   little: bool) -> PixelElement | None:
    """Read the header of the pixel data element at ``start`` and check it is whole.

    Reading the value itself (megabytes) is left to whoever renders the image; here only
    the lengths are checked: a defined length must fit in the file, and the items of
    encapsulated pixel data must lead to their sequence delimiter.
    """
    if start >= total:
        return None
    order = "<" if little else ">"
    data.seek(start)
    head = data.read(12)
    if len(head) < 8:
        raise InvalidInstance("the file is truncated inside the pixel data element")
    group, elem = struct.unpack(order + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack(order + "I", head[4:8])
        vr, offset = "OW", start + 8
    else:
        if len(head) < 12:
            raise InvalidInstance("the file is truncated inside the pixel data element")
        vr = head[4:6].decode("latin-1")
        (length,) = struct.unpack(order + "I", head[8:12])
        offset = start + 12
    if length != _UNDEFINED:
        if offset + length > total:
            raise InvalidInstance(
                f"the file is truncated: element ({group:04X},{elem:04X}) declares {length} "
                f"bytes, {total - offset} arrived")
        return PixelElement(tag, vr, length, offset)
    position = offset
    while True:
        data.seek(position)
        item = data.read(8)
        if len(item) < 8:
            raise InvalidInstance("the file is truncated: the encapsulated pixel data has no "
                                  "sequence delimiter")
        item_group, item_elem, item_length = struct.unpack("<HHI", item)
        if (item_group, item_elem) == (0xFFFE, 0xE0DD):
            return PixelElement(tag, vr, None, offset)
        if (item_group, item_elem) != (0xFFFE, 0xE000) or item_length == _UNDEFINED:
            raise InvalidInstance("the encapsulated pixel data is not a sequence of items")
        position += 8 + item_length
        if position > total:
            raise InvalidInstance("the file is truncated inside the encapsulated pixel data")


def _expected_native_length(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    pixels = rows * cols * spp * frames
    if bits == 1:
        return (pixels + 7) // 8
    return pixels * (bits // 8)


def _uid(ds: Dataset, keyword: str, label: str, meta: dict[str, str | None]) -> str:
    value = ds.get(keyword)
    text = str(value).strip().rstrip("\0") if value is not None else ""
    if not text:
        raise InvalidInstance(f"the instance has no {label}",
                              FailureReason.dataset_does_not_match_sop_class, **meta)
    if len(text) > 64 or not UID(text).is_valid:
        raise InvalidInstance(f"{label} {text[:70]!r} is not a valid UID",
                              FailureReason.dataset_does_not_match_sop_class, **meta)
    return text


def _safe_uid(ds: Dataset, keyword: str) -> str | None:
    """A UID for the failure report, if one can be read at all."""
    try:
        text = str(ds.get(keyword, "") or "").strip().rstrip("\0")
    except Exception:  # an unreadable value is reported as absent
        return None
    return text if text and len(text) <= 64 and UID(text).is_valid else None


def _guess_syntax(ds: Dataset) -> str:
    if ds.original_encoding[0]:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if ds.original_encoding[1] else ExplicitVRBigEndian


def _build_header(syntax: str, sop_class: str, sop_instance: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CAREPLANE_{__version__}"[:16]
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


def _looks_like_dataset(first: bytes) -> bool:
    """A bare data set begins with an even, low group number (little or big endian)."""
    if len(first) < 4:
        return False
    for order in ("<", ">"):
        group, _ = struct.unpack(order + "HH", first)
        if group % 2 == 0 and 0x0004 <= group <= 0x0028:
            return True
    return False


def read_instance(data: BinaryIO) -> ReceivedInstance:
    """Check the instance in ``data`` (seekable) and say how to store it as Part-10.

    Raises :class:`InvalidInstance` with the reason; never lets a parser error escape.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read(data)
        finally:
            for warning in caught:
                if "End of file" in str(warning.message) or "delimiter" in str(warning.message):
                    raise InvalidInstance(f"the file is truncated: {warning.message}")


def _read(data: BinaryIO) -> ReceivedInstance:
    data.seek(0, io.SEEK_END)
    total = data.tell()
    data.seek(0)
    if total == 0:
        raise InvalidInstance("the part is empty")
    lead = data.read(132)
    has_preamble = len(lead) == 132 and lead[128:132] == b"DICM"
    data.seek(132 if has_preamble else 0)
    first = data.read(4)
    has_meta = first[:2] == b"\x02\x00"
    data.seek(0)
    if not has_preamble and not has_meta and not _looks_like_dataset(first):
        raise InvalidInstance("not a DICOM file: no preamble, no file meta information, and the "
                              "data does not begin like a DICOM data set")
    try:
        ds = pydicom.dcmread(data, force=True, stop_before_pixels=True)
        stopped = data.tell()
        if not any(elem.tag.group != 0x0002 for elem in ds.elements()):
            raise InvalidInstance("not a DICOM file: no data elements were found")
        meta_ids: dict[str, str | None] = {
            "sop_class_uid": _safe_uid(ds, "SOPClassUID"),
            "sop_instance_uid": _safe_uid(ds, "SOPInstanceUID")}
        try:
            implicit, little = ds.original_encoding
            pixel = _pixel_element(data, stopped, total, bool(implicit), little is not False)
            _check_complete(ds, stopped if pixel is not None else total)
        except InvalidInstance as exc:
            exc.sop_class_uid = meta_ids["sop_class_uid"]
            exc.sop_instance_uid = meta_ids["sop_instance_uid"]
            raise
        ts = ds.file_meta.get("TransferSyntaxUID") if has_meta else None
        uids = [_uid(ds, kw, label, meta_ids) for kw, label in _IDENTIFYING]
    except InvalidInstance:
        raise
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidInstance(f"not a DICOM file: {exc}") from None
    except Exception as exc:  # any parser failure means the same: unreadable
        raise InvalidInstance(f"the DICOM data cannot be parsed: {exc}") from None
    if ts is None:
        if pixel is not None and pixel.length is None:
            raise InvalidInstance(
                "the transfer syntax of a dataset sent without file meta information cannot "
                "be known for encapsulated pixel data",
                FailureReason.transfer_syntax_not_supported, uids[0], uids[1])
        syntax = _guess_syntax(ds)
    else:
        syntax = str(ts).strip().rstrip("\0")
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise InvalidInstance(f"transfer syntax {syntax[:70]!r} is not supported",
                              FailureReason.transfer_syntax_not_supported, uids[0], uids[1])
    if pixel is not None and pixel.length is not None and pixel.tag == 0x7FE00010 \
            and not UID(syntax).is_compressed:
        expected = _expected_native_length(ds)
        have = pixel.length
        if expected is not None and have < expected:
            raise InvalidInstance(
                f"the pixel data holds {have} bytes where Rows, Columns, Samples per Pixel, "
                f"Bits Allocated and Number of Frames need {expected}",
                FailureReason.cannot_understand, uids[0], uids[1])
    if has_preamble and ts is not None:
        header, offset = b"", 0
    else:
        start = 132 if has_preamble else 0
        offset = _meta_end(data, start) if has_meta else start
        header = _build_header(syntax, uids[0], uids[1])
    return ReceivedInstance(dataset=ds, pixel=pixel, transfer_syntax_uid=syntax,
                            sop_class_uid=uids[0],
                            sop_instance_uid=uids[1], study_instance_uid=uids[2],
                            series_instance_uid=uids[3], header=header, body=data,
                            body_offset=offset, size=len(header) + total - offset)
