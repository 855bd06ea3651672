"""A DIMSE PACS: C-FIND to find, C-GET or C-MOVE to retrieve (pynetdicom).

Each call opens its own association, with the connection's timeout on association,
DIMSE messages and the network, and releases it. C-MOVE needs a Storage SCP the PACS can
send to: xds starts one per process on ``move_port`` (the port the PACS knows for
``our_aet``) and routes what arrives to the pull waiting for that series. A headers-only
read is a C-GET or C-MOVE of one instance: DIMSE has no metadata-only retrieval.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pydicom.dataset import Dataset

from xds.pacs.remote import INSTANCE_KEYS, SERIES_KEYS, STUDY_KEYS, Remote, Transient, record
from xds.pacs.store import Connection
from xds.schemas.errors import PacsError

_SUCCESS, _CANCEL = 0x0000, 0xFE00
_PENDING = (0xFF00, 0xFF01)


def _storage_classes() -> list[str]:
    from pynetdicom import sop_class as s

    names = ("MRImageStorage", "EnhancedMRImageStorage", "CTImageStorage",
             "EnhancedCTImageStorage", "PositronEmissionTomographyImageStorage",
             "EnhancedPETImageStorage", "LegacyConvertedEnhancedMRImageStorage",
             "LegacyConvertedEnhancedCTImageStorage", "LegacyConvertedEnhancedPETImageStorage",
             "SecondaryCaptureImageStorage", "SegmentationStorage",
             "RTStructureSetStorage")  # fmt: skip
    return [getattr(s, n) for n in names if hasattr(s, n)]


class _MoveReceiver:
    """The process's Storage SCP for C-MOVE: datasets routed by Series Instance UID."""

    _lock = threading.Lock()
    _servers: dict[int, _MoveReceiver] = {}

    def __init__(self, conn: Connection):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.routes: dict[str, Callable[[Dataset], None]] = {}
        ae = AE(ae_title=conn.our_aet)
        for uid in _storage_classes():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = conn.timeout
        try:
            self.server = ae.start_server(
                ("0.0.0.0", conn.move_port), block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._store)],
            )  # fmt: skip
        except OSError as exc:
            raise PacsError(f"cannot listen on port {conn.move_port} for C-MOVE ({exc.strerror})"
                            ) from None  # fmt: skip

    @classmethod
    def on(cls, conn: Connection) -> _MoveReceiver:
        with cls._lock:
            if conn.move_port not in cls._servers:
                cls._servers[conn.move_port] = cls(conn)
            return cls._servers[conn.move_port]

    @classmethod
    def stop_all(cls) -> None:
        with cls._lock:
            for receiver in cls._servers.values():
                receiver.server.shutdown()
            cls._servers.clear()

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        sink = self.routes.get(str(ds.get("SeriesInstanceUID", "")))
        if sink is None:
            return 0xA801  # refused: no pull is waiting for this series
        sink(ds)
        return _SUCCESS


def stop_move_receivers() -> None:
    """Stop the Storage SCPs this process started for C-MOVE (none: nothing happens)."""
    _MoveReceiver.stop_all()


class DimseRemote(Remote):
    """:class:`~xds.pacs.remote.Remote` over DIMSE."""

    def _associate(self, contexts: list[str], *, storage: bool = False, handlers=()):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role

        ae = AE(ae_title=self.conn.our_aet)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.conn.timeout
        for uid in contexts:
            ae.add_requested_context(uid)
        roles = []
        if storage:
            for uid in _storage_classes():
                ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
                roles.append(build_role(uid, scp_role=True))
        assoc = ae.associate(self.conn.host, self.conn.port, ae_title=self.conn.aet,
                             ext_neg=roles or None, evt_handlers=list(handlers))  # fmt: skip
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            raise Transient(f"{self.conn.address} {why}")
        return assoc

    def _find(self, what: str, level: str, keys: tuple[str, ...], filters: dict) -> list[dict]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        def attempt():
            query = Dataset()
            query.QueryRetrieveLevel = level
            for key in keys:
                setattr(query, key, "")
            for key, value in filters.items():
                setattr(query, key, value)
            assoc = self._associate([FIND])
            found, status = [], None
            try:
                for status, identifier in assoc.send_c_find(query, FIND):
                    if status is None or "Status" not in status:
                        raise Transient("the association ended during a C-FIND")
                    if status.Status in _PENDING and identifier is not None:
                        found.append(record(identifier, keys))
            finally:
                assoc.release()
            code = status.Status if status is not None else None
            if code not in (_SUCCESS, _CANCEL):
                raise PacsError(f"PACS {self.conn.name}: {what} failed "
                                f"(C-FIND status 0x{code or 0:04X})")  # fmt: skip
            return found

        return self.call(what, attempt)

    def find_studies(self, filters: dict[str, str]) -> list[dict]:
        """C-FIND at STUDY level."""
        return self._find("study search", "STUDY", STUDY_KEYS, filters)

    def find_series(self, study_uid: str, filters: dict[str, str]) -> list[dict]:
        """C-FIND at SERIES level within one study."""
        return self._find("series search", "SERIES", SERIES_KEYS,
                          {**filters, "StudyInstanceUID": study_uid})  # fmt: skip

    def find_instances(self, study_uid: str, series_uid: str | None) -> list[dict]:
        """C-FIND at IMAGE level within one series (or study)."""
        filters = {"StudyInstanceUID": study_uid}
        if series_uid:
            filters["SeriesInstanceUID"] = series_uid
        return self._find("instance search", "IMAGE", INSTANCE_KEYS, filters)

    def header(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """One instance retrieved whole; its pixel data dropped."""
        got: list[Dataset] = []
        self._retrieve("instance retrieval", "IMAGE",
                       {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
                        "SOPInstanceUID": sop_uid}, got.append)  # fmt: skip
        if not got:
            raise PacsError(f"PACS {self.conn.name}: an indexed instance did not arrive")
        ds = got[0]
        for tag in [t for t in ds.keys() if t.group == 0x7FE0]:
            del ds[tag]
        return ds

    def retrieve(self, study_uid: str, series_uid: str, store: Callable[[Dataset], None]) -> None:
        """C-GET (or C-MOVE) at SERIES level."""
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        self._retrieve("series retrieval", "SERIES", keys, store)

    def _retrieve(self, what: str, level: str, keys: dict, store) -> None:
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        query = Dataset()
        query.QueryRetrieveLevel = level
        for key, value in keys.items():
            setattr(query, key, value)
        move = self.conn.retrieve == "move"

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            store(ds)
            return _SUCCESS

        def attempt():
            if move:
                receiver = _MoveReceiver.on(self.conn)
                receiver.routes[keys["SeriesInstanceUID"]] = store
                assoc = self._associate([MOVE])
                responses = assoc.send_c_move(query, self.conn.our_aet, MOVE)
            else:
                assoc = self._associate([GET], storage=True,
                                        handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
                responses = assoc.send_c_get(query, GET)
            status = None
            try:
                for status, _ in responses:
                    if status is None or "Status" not in status:
                        raise Transient("the association ended during the retrieval")
            finally:
                assoc.release()
                if move:
                    receiver.routes.pop(keys["SeriesInstanceUID"], None)
            code = status.Status if status is not None else None
            if code == 0xA701 or code == 0xA702:
                raise Transient(f"the PACS is out of resources (0x{code:04X})")
            if code not in (_SUCCESS, 0xB000):  # B000: some sub-operations failed
                raise PacsError(f"PACS {self.conn.name}: {what} failed "
                                f"(status 0x{code or 0:04X})")  # fmt: skip

        self.call(what, attempt)

    def close(self) -> None:
        """Nothing is held between calls."""
