"""Orthanc's change feed: what arrived since the last index, exactly, by arrival.

An Orthanc serving a DICOMweb URL is recognised by its REST root's ``/system`` answer (the
URL without its ``/dicom-web`` suffix). Its ``/changes`` feed numbers every event; an
index records the number it started at, and ``--since last`` asks for the studies that got
a new series after it. Any other PACS falls back to dates (:mod:`xds.pacs.index`).
"""

from __future__ import annotations

import requests

from xds.pacs.store import Connection, credentials
from xds.schemas.errors import PacsError


class _Rest:
    """GETs against one Orthanc's REST root, with the connection's timeout and login."""

    def __init__(self, conn: Connection):
        found = credentials(conn)
        self.session = requests.Session()
        self.session.auth = found if isinstance(found, tuple) else None
        self.timeout = conn.timeout
        root = conn.url.rstrip("/")
        self.root = root[: -len("/dicom-web")] if root.endswith("/dicom-web") else root

    def get(self, path: str, **params):
        """The JSON answer, or None for a resource that is gone (404)."""
        answer = self.session.get(self.root + path, params=params, timeout=self.timeout)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()


def _orthanc(conn: Connection) -> _Rest | None:
    """The REST root of the Orthanc behind this connection, or None when it is none."""
    if conn.kind != "dicomweb":
        return None
    rest = _Rest(conn)
    try:
        facts = rest.get("/system")
    except (requests.RequestException, ValueError):
        return None
    ok = isinstance(facts, dict) and "DicomAet" in facts and "Version" in facts
    return rest if ok else None


def last_change(conn: Connection) -> int | None:
    """The newest change number of the Orthanc behind ``conn`` (None: not an Orthanc)."""
    rest = _orthanc(conn)
    if rest is None:
        return None
    try:
        return int(rest.get("/changes", last="")["Last"])
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def changed_studies(conn: Connection, mark: dict) -> tuple[list[str], int] | None:
    """Study UIDs that got a new series after ``mark["change_seq"]``, and the feed's end.

    None when the PACS is no Orthanc or no index recorded a change number yet.
    """
    rest = _orthanc(conn)
    if rest is None or "change_seq" not in mark:
        return None
    seq, parents, uids = int(mark["change_seq"]), set(), set()
    try:
        while True:
            page = rest.get("/changes", since=seq, limit=1000)
            for change in page["Changes"]:
                if change["ChangeType"] == "NewSeries":
                    series = rest.get(f"/series/{change['ID']}")
                    if series is not None:  # deleted since: nothing to index
                        parents.add(series["ParentStudy"])
            seq = int(page["Last"])
            if page["Done"]:
                break
        for parent in sorted(parents):
            study = rest.get(f"/studies/{parent}")
            if study is not None:
                uids.add(study["MainDicomTags"]["StudyInstanceUID"])
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise PacsError(f"PACS {conn.name}: Orthanc's change feed failed "
                        f"({type(exc).__name__})") from None  # fmt: skip
    return sorted(uids), seq
