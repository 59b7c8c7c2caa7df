"""The DIMSE listener: modalities and PACS send (C-STORE), ask (C-FIND) and fetch (C-GET,
C-MOVE) over the DICOM upper layer protocol, via pynetdicom.

A peer may associate only if its calling AE title is on the allow-list (the ``dicom_remote_ae``
table, or ``CAREPLANE_DICOM_REMOTE_AES``); the organisation it is listed for is the one its
instances are stored in and the only one its queries see. Every instance goes through
:func:`careplane.imaging.store.store_instance`, committed one by one, so a C-STORE success
means the instance is durably stored; failures answer with the same reason codes as STOW-RS.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from careplane.imaging.attributes import Level, by_tag
from careplane.imaging.config import ImagingSettings, imaging_settings
from careplane.imaging.part10 import SUPPORTED_TRANSFER_SYNTAXES
from careplane.imaging.peers import Peer, add_remote_ae, peers
from careplane.imaging.qido import QidoRequest, render_rows
from careplane.imaging.query import Criteria, QueryError, build_select, matchable
from careplane.imaging.store import StoredInstance, discard_unreferenced, store_instance
from careplane.platform.blobs import BlobStore
from careplane.platform.db import Database
from careplane.security.audit import record as audit_record
from careplane.security.policy import Action, Target
from careplane.settings import Settings

__all__ = ["DimseServer", "Peer", "add_remote_ae", "peers", "start_dimse"]

log = logging.getLogger(__name__)

_FIND_MODELS = (PatientRootQueryRetrieveInformationModelFind,
                StudyRootQueryRetrieveInformationModelFind)
_GET_MODELS = (PatientRootQueryRetrieveInformationModelGet,
               StudyRootQueryRetrieveInformationModelGet)
_MOVE_MODELS = (PatientRootQueryRetrieveInformationModelMove,
                StudyRootQueryRetrieveInformationModelMove)
_LEVELS = {"PATIENT": Level.patient, "STUDY": Level.study, "SERIES": Level.series,
           "IMAGE": Level.instance}
_SKIP = {0x00080005, 0x00080052, 0x00080054, 0x00080056}  # charset, level, AE, availability


class DimseServer:
    """A running listener; ``stop()`` closes it and its associations."""

    def __init__(self, db: Database, blobs: BlobStore, config: ImagingSettings,
                 host: str, port: int) -> None:
        self.db = db
        self.blobs = blobs
        self.config = config
        self.ae_title = config.ae_title
        self._closed = secrets.token_hex(8)  # an allow-list nobody matches
        ae = AE(ae_title=config.ae_title)
        ae.maximum_pdu_size = 0
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        # pynetdicom accepts the first of these that the peer proposes. Compressed syntaxes come
        # first: a peer that offers one has such data (or wants it) and cannot always convert;
        # then explicit VR little endian, which keeps the VRs, before implicit and the rest.
        uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.1.99",
                        "1.2.840.10008.1.2.2"]
        syntaxes = [*sorted(SUPPORTED_TRANSFER_SYNTAXES - set(uncompressed)),
                    *(u for u in uncompressed if u in SUPPORTED_TRANSFER_SYNTAXES)]
        ae.add_supported_context(Verification)
        storage = [str(c.abstract_syntax) for c in AllStoragePresentationContexts]
        for sop_class in storage:
            # the peer as storage SCU (C-STORE), or as storage SCP by role selection (C-GET)
            ae.add_supported_context(sop_class, syntaxes, scp_role=True, scu_role=True)
        for model in (*_FIND_MODELS, *_GET_MODELS, *_MOVE_MODELS):
            ae.add_supported_context(model)
        for sop_class in storage[:120]:
            ae.add_requested_context(sop_class)  # for the sub-associations of C-MOVE
        ae.require_calling_aet = [self._closed]
        self.ae = ae
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, self._refresh_allow_list),
                    (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_FIND, self._on_find),
                    (evt.EVT_C_GET, self._on_get),
                    (evt.EVT_C_MOVE, self._on_move)]
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        assert server is not None
        self._server = server
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])
        self._lock = threading.Lock()
        log.info("DICOM listener %s on %s:%s", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self.ae.shutdown()

    # -- who is calling

    def _peers(self) -> dict[str, Peer]:
        with self.db.session() as session:
            return peers(session, self.config.remote_aes)

    def _refresh_allow_list(self, event: Any) -> None:
        titles = list(self._peers()) or [self._closed]
        with self._lock:
            self.ae.require_calling_aet = titles

    def _peer(self, event: Any) -> Peer | None:
        title = str(event.assoc.requestor.ae_title).strip()
        return self._peers().get(title)

    # -- services

    def _on_echo(self, event: Any) -> int:
        return 0x0000

    def _on_store(self, event: Any) -> int:
        peer = self._peer(event)
        if peer is None:
            return 0x0124  # refused: not authorised
        unused: list[str] = []
        try:
            data = event.encoded_dataset(include_meta=True)
            with self.db.session() as session:
                result = store_instance(session, self.blobs, peer.org_id, data,
                                        origin=f"dimse:{peer.ae_title}", unused=unused)
        except Exception:  # the sender gets a status, never a dropped association
            log.exception("C-STORE from %s failed", peer.ae_title)
            return 0x0110
        finally:
            if unused:
                discard_unreferenced(self.db, self.blobs, unused)
        if isinstance(result, StoredInstance):
            return 0x0000
        log.info("C-STORE from %s refused: %s", peer.ae_title, result.message)
        return int(result.reason)

    def _criteria(self, identifier: Dataset, root: str) -> tuple[Criteria, set[str]] | None:
        level_name = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        level = _LEVELS.get(level_name)
        if level is None or (root == "study" and level is Level.patient):
            return None
        criteria = Criteria(level)
        requested: set[str] = set()
        for elem in identifier:
            if elem.tag in _SKIP or elem.tag.group == 0x0002 or elem.VR == "SQ":
                continue
            tag = f"{elem.tag:08X}"
            requested.add(tag)
            attr = by_tag(tag)
            if attr is None or matchable(attr.keyword, level) is None:
                continue
            value = elem.value
            if value is None:
                continue
            if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
                text = "\\".join(str(v) for v in value)
            else:
                text = str(value)
            if text.strip():
                criteria.filters.append((attr, text))
        return criteria, requested

    def _matches(self, peer: Peer, identifier: Dataset, root: str
                 ) -> tuple[Level, list[dict[str, Any]], set[str]] | None:
        parsed = self._criteria(identifier, root)
        if parsed is None:
            return None
        criteria, requested = parsed
        with self.db.session() as session:
            audit_record(session, None, Action.search.value,
                         Target(kind="imaging:study", org_id=peer.org_id),
                         source=f"dimse:{peer.ae_title}")
            rows = session.execute(build_select(criteria, peer.org_id)).all()
            results = render_rows(session, QidoRequest(criteria, include=requested), rows, "")
        return criteria.level, results, requested

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        peer = self._peer(event)
        if peer is None:
            yield 0x0124, None
            return
        root = "patient" if event.request.AffectedSOPClassUID == \
            PatientRootQueryRetrieveInformationModelFind else "study"
        try:
            found = self._matches(peer, event.identifier, root)
        except QueryError as exc:
            log.info("C-FIND from %s refused: %s", peer.ae_title, exc)
            yield 0xA900, None
            return
        if found is None:
            yield 0xC000, None  # unable to process: no or unknown query level
            return
        level, results, requested = found
        level_name = next(k for k, v in _LEVELS.items() if v is level)
        for item in results:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            wanted = {t: v for t, v in item.items() if t in requested}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                answer = Dataset.from_json(wanted)
            answer.QueryRetrieveLevel = level_name
            answer.SpecificCharacterSet = "ISO_IR 192"
            answer.RetrieveAETitle = self.ae_title
            yield 0xFF00, answer

    def _datasets(self, peer: Peer, identifier: Dataset, root: str
                  ) -> list[tuple[str, str, str]] | None:
        """(blob key, SOP Class UID, transfer syntax) of the instances a C-GET / C-MOVE
        identifier selects."""
        parsed = self._criteria(identifier, root)
        if parsed is None:
            return None
        criteria, _ = parsed
        criteria.level = Level.instance
        with self.db.session() as session:
            audit_record(session, None, Action.read.value,
                         Target(kind="imaging:study", org_id=peer.org_id,
                                id=str(identifier.get("StudyInstanceUID", "")) or None),
                         source=f"dimse:{peer.ae_title}")
            rows = session.execute(build_select(criteria, peer.org_id)).all()
            return [(row[0].blob_sha256, row[0].sop_class_uid, row[0].transfer_syntax_uid)
                    for row in rows]

    def _read(self, sha: str) -> Dataset:
        """The stored instance, to be sent as it is stored.

        pynetdicom's C-GET and C-MOVE services take only a pydicom Dataset from the handler (a
        file path is refused as an invalid dataset), and encode it with pydicom. The dataset is
        therefore parsed lazily from the stored bytes: its elements stay raw, and pydicom writes
        a raw element back as the bytes it was read from. Sent in the transfer syntax it was
        stored in, the instance arrives byte for byte as stored (tests/imaging/test_dimse.py
        checks it with dcmtk's bit-preserving getscu and storescp).
        """
        with self.blobs.open(sha) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(fh.read()))

    @staticmethod
    def _move_contexts(found: list[tuple[str, str, str]]) -> list[Any]:
        """Presentation contexts for a C-MOVE sub-association: each SOP class in the transfer
        syntax its instances are stored in (so they go unchanged), and uncompressed as a
        fallback the destination may prefer."""
        contexts: dict[tuple[str, tuple[str, ...]], Any] = {}
        uncompressed = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        for _, sop_class, syntax in found:
            for offer in ((syntax,), uncompressed):
                if (sop_class, offer) not in contexts and len(contexts) < 128:
                    contexts[(sop_class, offer)] = build_context(sop_class, list(offer))
        return list(contexts.values())

    def _retrieve(self, event: Any, move: bool) -> Iterator[Any]:
        peer = self._peer(event)
        models = _MOVE_MODELS if move else _GET_MODELS
        root = "patient" if event.request.AffectedSOPClassUID == models[0] else "study"
        keys: list[tuple[str, str, str]] | None = None
        failure: int | None = None
        if peer is not None:
            try:
                keys = self._datasets(peer, event.identifier, root)
            except QueryError:
                failure = 0xA900
            else:
                failure = 0xC000 if keys is None else None
        if move:
            destination = str(event.move_destination).strip()
            target = self._peers().get(destination)
            if peer is None or target is None or target.org_id != peer.org_id \
                    or not target.host or not target.port:
                yield None, None  # unknown destination: 0xA801
                return
            yield target.host, target.port, {"contexts": self._move_contexts(keys or [])}
        if peer is None:
            yield 0x0124, None
            return
        if failure is not None or keys is None:
            yield failure or 0xC000, None
            return
        yield len(keys)
        for sha, _, _ in keys:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, self._read(sha)

    def _on_get(self, event: Any) -> Iterator[Any]:
        yield from self._retrieve(event, move=False)

    def _on_move(self, event: Any) -> Iterator[Any]:
        yield from self._retrieve(event, move=True)


def start_dimse(settings: Settings, db: Database, blobs: BlobStore, *,
                port: int | None = None, host: str | None = None,
                config: ImagingSettings | None = None) -> DimseServer:
    """Start the listener on ``settings.dicom_port`` (``port=0``: any free port)."""
    return DimseServer(db, blobs, config or imaging_settings(), host or settings.host,
                       settings.dicom_port if port is None else port)
