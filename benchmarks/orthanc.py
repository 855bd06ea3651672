"""A real PACS for tests and benchmarks: Debian's Orthanc with its DICOMweb plugin.

Each :class:`OrthancServer` runs on free localhost ports with its own configuration file
and storage folder (``.ci/run`` installs the packages; the Debian service is not used).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """One Orthanc on free localhost ports with its own configuration and storage."""

    def __init__(self, folder: Path, *, limit_find_results: int = 0, move_aet: str = "XDS",
                 move_port: int | None = None, users: dict[str, str] | None = None):  # fmt: skip
        for needed in (ORTHANC, DICOMWEB_PLUGIN):
            assert Path(needed).exists(), "install orthanc, orthanc-dicomweb (.ci/run does)"
        self.folder = folder
        folder.mkdir(parents=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.aet = "ORTHANC"
        self.move_port = move_port or free_port()
        config = {
            "Name": "xds-test", "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LimitFindResults": limit_find_results, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {"xds": [move_aet, "127.0.0.1", self.move_port]},
            "HttpCompressionEnabled": False, "StorageCompression": False,
        }  # fmt: skip
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = self.url + "/dicom-web"
        self.http = requests.Session()
        self.http.auth = next(iter((users or {}).items()), None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (folder / "orthanc.log").read_text()[-2000:]
            try:
                if self.http.get(self.url + "/system", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("Orthanc did not start within 60 s")

    def upload(self, paths) -> int:
        """Store files through the REST API; how many Orthanc took (non-DICOM is refused)."""
        taken = 0
        for path in paths:
            answer = self.http.post(self.url + "/instances", data=Path(path).read_bytes())
            taken += answer.ok
        return taken

    def get(self, path: str):
        return self.http.get(self.url + path, timeout=30).json()

    def delete(self, path: str) -> None:
        self.http.delete(self.url + path, timeout=30).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
