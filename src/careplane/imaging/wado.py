"""Retrieving what is stored: instances, frames and bulk data for WADO-RS (PS3.18 10.4).

Every retrieval starts from a study, found in the caller's organisation (or, if it only exists
in another one, handed to the access policy, which refuses unless consent or break-the-glass
allows it). Files go out as stored unless the client asks for a transfer syntax; then they are
transcoded through pydicom (decompressing with the pylibjpeg plugins).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.imaging.models import DicomInstance, DicomSeries, DicomStudy
from careplane.imaging.multipart import media_params
from careplane.platform.blobs import BlobStore
from careplane.security import Principal
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["FRAME_MEDIA_TYPES", "InstanceRef", "NotAcceptable", "NotFound", "RetrieveError",
           "accepted", "bulk_value", "frame_bytes", "instance_refs", "locate_study",
           "transcoded"]

# The media type a compressed frame travels as, per transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class RetrieveError(Exception):
    status = 400


class NotFound(RetrieveError):
    status = 404


class NotAcceptable(RetrieveError):
    status = 406


@dataclass(frozen=True)
class InstanceRef:
    pk: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_sha256: str
    size: int
    number_of_frames: int | None
    metadata_json: str


def locate_study(session: Session, principal: Principal, study_uid: str,
                 action: Action = Action.read) -> DicomStudy:
    """The study, after the access decision (audited); NotFound if no one has it."""
    study = session.scalars(select(DicomStudy).where(
        DicomStudy.org_id == principal.org_id,
        DicomStudy.study_instance_uid == study_uid)).first()
    if study is None:
        study = session.scalars(select(DicomStudy).where(
            DicomStudy.study_instance_uid == study_uid).order_by(DicomStudy.id)).first()
    if study is None:
        raise NotFound(f"no study {study_uid}")
    authorize(session, principal, action, study_target(study))
    return study


def study_target(study: DicomStudy) -> Target:
    """The study as the access policy sees it: a research copy is de-identified data of the
    project (the workspace) it was made for."""
    return Target(kind="imaging:study", org_id=study.org_id, id=study.study_instance_uid,
                  deidentified=study.research_project is not None,
                  workspace_id=study.research_project)


def instance_refs(session: Session, study: DicomStudy, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[InstanceRef]:
    query = (select(DicomInstance, DicomSeries.series_instance_uid)
             .join(DicomSeries, DicomInstance.series_pk == DicomSeries.id)
             .where(DicomInstance.study_pk == study.id))
    if series_uid is not None:
        query = query.where(DicomSeries.series_instance_uid == series_uid)
    if sop_uid is not None:
        query = query.where(DicomInstance.sop_instance_uid == sop_uid)
    query = query.order_by(DicomSeries.id, DicomInstance.instance_number.is_(None),
                           DicomInstance.instance_number, DicomInstance.id)
    refs = [InstanceRef(i.id, study.study_instance_uid, s, i.sop_instance_uid, i.sop_class_uid,
                        i.transfer_syntax_uid, i.blob_sha256, i.size, i.number_of_frames,
                        i.metadata_json)
            for i, s in session.execute(query).all()]
    if not refs:
        what = (f"instance {sop_uid}" if sop_uid else f"series {series_uid}" if series_uid
                else "instances")
        raise NotFound(f"no {what} in study {study.study_instance_uid}")
    return refs


@dataclass(frozen=True)
class Accepted:
    media_type: str  # the type of each part (or of the whole body when not multipart)
    transfer_syntax: str | None  # None: the default of the media type; "*": as stored
    multipart: bool


def _split_accept(header: str) -> list[str]:
    return [item.strip() for item in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", header)
            if item.strip()]


def accepted(header: str | None, offers: list[str], *, single: bool) -> Accepted:
    """The first acceptable representation among ``offers`` (part media types, best first).

    ``single``: the resource is one instance or frame, so a bare (non-multipart) media type
    is acceptable too.
    """
    if not header or header.strip() in ("*/*", "multipart/related"):
        return Accepted(offers[0], None, True)
    for item in _split_accept(header):
        media, params = media_params(item)
        if media == "multipart/related" or media == "*/*":
            part = params.get("type", offers[0]).lower()
            if part in offers or part in ("*/*", "*"):
                chosen = offers[0] if part in ("*/*", "*") else part
                return Accepted(chosen, params.get("transfer-syntax"), True)
        elif single and media in offers:
            return Accepted(media, params.get("transfer-syntax"), False)
    raise NotAcceptable(f"none of the accepted media types ({header[:200]}) can be served; "
                        f"this resource is offered as {', '.join(offers)}")


def _read(blobs: BlobStore, ref: InstanceRef, **kwargs: object) -> Dataset:
    with blobs.open(ref.blob_sha256) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fh, force=True, **kwargs)  # type: ignore[arg-type]


def transcoded(blobs: BlobStore, ref: InstanceRef, syntax: str | None) -> Iterator[bytes] | None:
    """The chunks of the file in ``syntax``; None when it can be sent as stored.

    ``syntax`` None means the media type's default, Explicit VR Little Endian (PS3.18
    8.7.3.5.2); ``*`` means as stored.
    """
    target = ExplicitVRLittleEndian if syntax is None else syntax
    if target in ("*", ref.transfer_syntax_uid):
        return None
    if target not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise NotAcceptable(f"instance {ref.sop_instance_uid} is stored as "
                            f"{ref.transfer_syntax_uid} and can be sent as stored, or as "
                            f"1.2.840.10008.1.2.1 / 1.2.840.10008.1.2, not as {target}")
    ds = _read(blobs, ref)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if UID(ref.transfer_syntax_uid).is_compressed:
                ds.decompress()
            ds.file_meta.TransferSyntaxUID = UID(target)
            out = io.BytesIO()
            ds.save_as(out, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True,
                       enforce_file_format=True)
    except Exception as exc:  # a decoder that cannot decompress: say so, don't 500
        raise NotAcceptable(f"instance {ref.sop_instance_uid} cannot be converted to {target}: "
                            f"{exc}") from None
    return iter([out.getvalue()])


def _native_frame(ds: Dataset, index: int) -> bytes:
    pixel = ds.PixelData
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    if bits == 1:
        raise NotAcceptable("single-bit frames are only available through bulk data")
    size = rows * cols * spp * bits // 8
    return bytes(pixel[index * size:(index + 1) * size])


def frame_bytes(blobs: BlobStore, ref: InstanceRef, numbers: list[int], *, as_stored: bool
                ) -> tuple[str, list[bytes]]:
    """The frames (1-based ``numbers``) as (part media type, bytes per frame).

    ``as_stored``: compressed frames go out as they are, in their own media type; otherwise
    every frame is decompressed to native little-endian pixel bytes (application/octet-stream).
    """
    from careplane.imaging.render import frame_count  # decoding stack loads on demand

    ds = _read(blobs, ref)
    if "PixelData" not in ds:
        raise NotFound(f"instance {ref.sop_instance_uid} has no pixel data")
    count = frame_count(ds)
    for number in numbers:
        if number < 1 or number > count:
            raise NotFound(f"frame {number} does not exist; instance {ref.sop_instance_uid} "
                           f"has {count}")
    syntax = ref.transfer_syntax_uid
    compressed = syntax not in _NATIVE
    if compressed and as_stored:
        media = FRAME_MEDIA_TYPES.get(syntax, "application/octet-stream")
        return media, [get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in numbers]
    if not compressed and syntax != "1.2.840.10008.1.2.2":
        return "application/octet-stream", [_native_frame(ds, n - 1) for n in numbers]
    from pydicom.pixels import pixel_array

    frames = []
    for number in numbers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                array = pixel_array(ds, index=number - 1, raw=True)
        except Exception as exc:  # undecodable: say which frame and why
            raise NotAcceptable(f"frame {number} cannot be decompressed: {exc}") from None
        frames.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return "application/octet-stream", frames


_PATH_ITEM = re.compile(r"^[0-9A-Fa-f]{8}$|^\d+$")


def bulk_value(blobs: BlobStore, ref: InstanceRef, path: str) -> bytes:
    """The value of the element at a BulkDataURI path (``7FE00010``, ``00540016/0/00181072``)."""
    steps = [p for p in path.split("/") if p]
    if not steps or len(steps) % 2 == 0 or not all(_PATH_ITEM.match(s) for s in steps):
        raise NotFound(f"{path!r} is not a bulk data path of this instance")
    ds: Dataset = _read(blobs, ref)
    for i in range(0, len(steps) - 1, 2):
        tag, item = int(steps[i], 16), int(steps[i + 1])
        if tag not in ds or ds[tag].VR != "SQ" or item >= len(ds[tag].value):
            raise NotFound(f"{path!r} is not a bulk data path of this instance")
        ds = ds[tag].value[item]
    tag = int(steps[-1], 16)
    if tag not in ds:
        raise NotFound(f"{path!r} is not a bulk data path of this instance")
    value = ds[tag].value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise NotFound(f"{path!r} does not hold binary data")


def opener(blobs: BlobStore, ref: InstanceRef) -> Callable[[], BinaryIO]:
    return lambda: blobs.open(ref.blob_sha256)
