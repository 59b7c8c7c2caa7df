"""The DICOM JSON model (PS3.18 F.2) of stored headers, with bulk data by reference.

Instance metadata is rendered once, at ingest, and kept as text: WADO-RS metadata of a whole
series is then a concatenation rather than a re-parse of every file. Binary values are not
inlined but referenced by a BulkDataURI whose base (the instance's retrieve URL) is only known
per request, so the stored text carries :data:`BULK_BASE` where that URL goes.
"""

from __future__ import annotations

import warnings
from typing import Any

import orjson
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

__all__ = ["BULK_BASE", "BULK_VRS", "bulk_path", "dataset_to_json", "person_name_json",
           "with_base"]

BULK_BASE = "careplane-instance:"  # replaced by the instance URL when served
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_INLINE_LIMIT = 64  # small binary values (a few bytes of private data) are inlined


def bulk_path(path: list[str]) -> str:
    """The bulk data path of an element: tags and item numbers, ``00540016/0/00181072``."""
    return "/".join(path)


def person_name_json(value: str) -> dict[str, str]:
    """A PN value as its JSON object: alphabetic, ideographic and phonetic groups."""
    groups = value.split("=")
    out: dict[str, str] = {}
    for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[key] = group
    return out


def _element_json(elem: DataElement, path: list[str]) -> dict[str, Any] | None:
    vr = elem.VR
    if vr == "SQ":
        items = []
        for index, item in enumerate(elem.value or []):
            items.append(_dataset_json(item, [*path, str(index)]))
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if vr in BULK_VRS:
        value = elem.value
        if value is None or (isinstance(value, bytes | bytearray) and len(value) == 0):
            return {"vr": vr}
        if isinstance(value, bytes | bytearray) and len(value) <= _INLINE_LIMIT:
            return elem.to_json_dict(None, _INLINE_LIMIT + 1)
        return {"vr": vr, "BulkDataURI": f"{BULK_BASE}/bulk/{bulk_path(path)}"}
    try:
        return elem.to_json_dict(None, 1 << 30)
    except Exception:  # an unencodable value is left out, not fatal
        return None


def _dataset_json(ds: Dataset, path: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag.element == 0x0000:
            continue  # file meta information and group lengths are not part of the model
        tag = f"{elem.tag:08X}"
        rendered = _element_json(elem, [*path, tag])
        if rendered is not None:
            out[tag] = rendered
    return out


def dataset_to_json(ds: Dataset, transfer_syntax_uid: str, *,
                    pixel: tuple[int, str] | None = None) -> str:
    """The header of ``ds`` as DICOM JSON text, bulk data referenced under :data:`BULK_BASE`.

    ``pixel``: (tag, VR) of a pixel data element that follows the header in the file but was
    not read into ``ds``; it is referenced like any other bulk data.
    """
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        body = _dataset_json(ds, [])
    if pixel is not None:
        tag = f"{pixel[0]:08X}"
        body[tag] = {"vr": pixel[1], "BulkDataURI": f"{BULK_BASE}/bulk/{tag}"}
    body["00083002"] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    return orjson.dumps(dict(sorted(body.items()))).decode()


def with_base(metadata_json: str, instance_url: str) -> str:
    """Stored metadata with its bulk data references made absolute for this request."""
    return metadata_json.replace(BULK_BASE, instance_url)
