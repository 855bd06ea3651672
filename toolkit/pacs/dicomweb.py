"""A DICOMweb PACS: QIDO-RS to find, WADO-RS to read headers and retrieve (dicomweb-client).

Every request carries the connection's timeout (dicomweb-client's own, which bounds the
wait for each chunk of a streamed answer), and is tried as the connection says, no more.
Credentials are put on the session, never in the URL. Requests errors are reduced to their
kind and status: their text holds the request's URL, and WADO URLs hold Study and Series
Instance UIDs.
"""

from __future__ import annotations

from collections.abc import Callable

import requests
from pydicom.dataset import Dataset

from xds.pacs.remote import INSTANCE_KEYS, SERIES_KEYS, STUDY_KEYS, Remote, Transient, record
from xds.pacs.store import Connection, credentials
from xds.schemas.errors import PacsError

_ANY_SYNTAX = (("application/dicom", "*"),)  # the instances as stored: no transcoding
_MULTIPART_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class DicomWebRemote(Remote):
    """:class:`~xds.pacs.remote.Remote` over DICOMweb."""

    def __init__(self, conn: Connection):
        from dicomweb_client.api import DICOMwebClient

        super().__init__(conn)
        session = requests.Session()
        found = credentials(conn)
        if isinstance(found, str):
            session.auth = _BearerAuth(found)
        elif found:
            session.auth = found
        self.session = session
        self.client = DICOMwebClient(conn.url.rstrip("/"), session=session,
                                     timeout=(min(10.0, conn.timeout), conn.timeout))  # fmt: skip
        # Its own retries (five, with waits of up to 8 s, on any exception) would multiply
        # ours: a silent server held an index for 70 s with --timeout 1 --retries 1.
        self.client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def _web(self, what: str, fn: Callable):
        def attempt():
            try:
                return fn()
            except requests.exceptions.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status == 429 or status >= 500:
                    raise Transient(f"HTTP {status}") from None
                if status in (401, 403):
                    raise PacsError(
                        f"PACS {self.conn.name}: {what} refused (HTTP {status}): check the "
                        "credentials (XDS_PACS_<NAME>_USER/_PASSWORD/_TOKEN or netrc)"
                    ) from None
                raise PacsError(f"PACS {self.conn.name}: {what} failed (HTTP {status})") from None
            except requests.exceptions.Timeout:
                raise Transient(f"no answer within {self.conn.timeout:g} s") from None
            except requests.exceptions.ConnectionError:
                raise Transient(f"cannot connect to {self.conn.address}") from None
            except requests.exceptions.RequestException as exc:
                raise Transient(type(exc).__name__) from None

        return self.call(what, attempt)

    def _search(self, what: str, fn: Callable, keys: tuple[str, ...]) -> list[dict]:
        found = self._web(what, fn) or []
        return [record(Dataset.from_json(item), keys) for item in found]

    def find_studies(self, filters: dict[str, str]) -> list[dict]:
        """QIDO-RS ``/studies`` with ``filters``."""
        return self._search(
            "study search",
            lambda: self.client.search_for_studies(fields=list(STUDY_KEYS),
                                                   search_filters=dict(filters)),  # fmt: skip
            STUDY_KEYS,
        )

    def find_series(self, study_uid: str, filters: dict[str, str]) -> list[dict]:
        """QIDO-RS ``/studies/{study}/series``."""
        return self._search(
            "series search",
            lambda: self.client.search_for_series(study_uid, fields=list(SERIES_KEYS),
                                                  search_filters=dict(filters)),  # fmt: skip
            SERIES_KEYS,
        )

    def find_instances(self, study_uid: str, series_uid: str | None) -> list[dict]:
        """QIDO-RS ``/studies/{study}[/series/{series}]/instances``."""
        return self._search(
            "instance search",
            lambda: self.client.search_for_instances(study_uid, series_uid,
                                                     fields=list(INSTANCE_KEYS)),  # fmt: skip
            INSTANCE_KEYS,
        )

    def header(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """WADO-RS instance metadata (DICOM JSON, no bulk data)."""
        meta = self._web(
            "instance metadata",
            lambda: self.client.retrieve_instance_metadata(study_uid, series_uid, sop_uid),
        )
        meta = {tag: v for tag, v in meta.items() if "BulkDataURI" not in v}  # pixels stay
        return Dataset.from_json(meta)

    def retrieve(self, study_uid: str, series_uid: str, store: Callable) -> None:
        """WADO-RS ``/studies/{study}/series/{series}``, one part at a time into ``store``.

        The parts go to ``store`` as the bytes the PACS sent (dicomweb-client's multipart
        reader, without its decoding: parsing each instance whole and writing it again
        took a third of a pull's time); an older client without that reader gives datasets.
        """
        url = f"{self.conn.url.rstrip('/')}/studies/{study_uid}/series/{series_uid}"
        get = getattr(self.client, "_http_get", None)
        parts = getattr(self.client, "_decode_multipart_message", None)

        def stream():
            if get is not None and parts is not None:
                answer = get(url, headers={"Accept": _MULTIPART_ANY}, stream=True)
                for part in parts(answer, stream=True):
                    store(part)
                return
            for ds in self.client.iter_series(study_uid, series_uid, media_types=_ANY_SYNTAX):
                store(ds)

        self._web("series retrieval", stream)
