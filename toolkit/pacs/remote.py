"""One interface to a PACS, whatever it speaks: find, read a header, retrieve a series.

:class:`Remote` is what the index and the pull use; :mod:`~xds.pacs.dicomweb` (QIDO-RS,
WADO-RS through dicomweb-client) and :mod:`~xds.pacs.dimse` (C-FIND, C-GET or C-MOVE
through pynetdicom) implement it. Every network call has a timeout and is retried with
exponential backoff; what still fails becomes one :class:`PacsError` line that names the
PACS and what was asked, never a URL with UIDs in it or a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset

from xds.pacs.store import Connection
from xds.schemas.errors import PacsError

T = TypeVar("T")

# Both libraries log the UIDs of what they query and retrieve at INFO level; an application
# that logs at INFO would write them out. Only their warnings pass.
for _name in ("dicomweb_client", "pynetdicom"):
    logging.getLogger(_name).setLevel(logging.WARNING)

STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "NumberOfStudyRelatedSeries")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")
INSTANCE_KEYS = ("SOPInstanceUID", "InstanceNumber", "SeriesInstanceUID")
SERIES_LEVEL = frozenset({"Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
                          "ProtocolName", "SeriesDate", "SeriesTime"})  # fmt: skip
"""Attributes of ``--where-tags`` asked of series; any other is asked of studies."""


class Transient(Exception):
    """A failure worth another try (timeouts, refused or reset connections, 5xx, 429)."""


class Remote:
    """A PACS as the index and the pull see it. Subclasses implement the five calls."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def find_studies(self, filters: dict[str, str]) -> list[dict]:
        """Study records (:data:`STUDY_KEYS`) matching ``filters`` (as the PACS caps them)."""
        raise NotImplementedError

    def find_series(self, study_uid: str, filters: dict[str, str]) -> list[dict]:
        """Series records (:data:`SERIES_KEYS`) of one study."""
        raise NotImplementedError

    def find_instances(self, study_uid: str, series_uid: str | None) -> list[dict]:
        """Instance records (:data:`INSTANCE_KEYS`) of one series (or of the whole study)."""
        raise NotImplementedError

    def header(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """One instance's header, without pixel data."""
        raise NotImplementedError

    def retrieve(self, study_uid: str, series_uid: str, store: Callable) -> None:
        """Send every instance of a series to ``store`` as it arrives.

        Each is its Part-10 bytes where the protocol gives them, else a dataset.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (idempotent)."""

    # -- shared --------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with the connection's retries and backoff; failures as one PacsError."""
        delay = 0.5
        for attempt in range(self.conn.retries + 1):
            try:
                return fn()
            except Transient as exc:
                if attempt == self.conn.retries:
                    raise PacsError(
                        f"PACS {self.conn.name} ({self.conn.address}): {what} failed after "
                        f"{attempt + 1} tries: {exc}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")


def record(ds: Dataset, keys: tuple[str, ...]) -> dict:
    """The values of ``keys`` in ``ds`` as plain strings ('' where absent)."""
    out = {}
    for key in keys:
        value = ds.get(key)
        out[key] = "" if value is None else str(value).strip()
    return out


def open_remote(conn: Connection, *, workdir: Path | None = None) -> Remote:
    """A :class:`Remote` for a stored connection (nothing is sent yet)."""
    if conn.kind == "dicomweb":
        from xds.pacs.dicomweb import DicomWebRemote

        return DicomWebRemote(conn)
    from xds.pacs.dimse import DimseRemote

    return DimseRemote(conn)
