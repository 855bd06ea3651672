"""What every ingest path shares: the run report, name checks and quarantine rows."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import utcnow
from xds.schemas.errors import IngestError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class IngestReport:
    """What one ingest run did. ``problems`` holds (source path, one-line reason)."""

    dataset: str
    center: str
    source: str
    layout: str
    catalog_version: int = 0
    files_found: int = 0
    subjects_added: int = 0
    scans_added: int = 0
    labels_added: int = 0
    already_present: int = 0
    quarantined: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def record(self, txn, version: int, candidates: int) -> None:
        """Counts from a committed ingest transaction (``candidates``: scans offered)."""
        self.catalog_version = version
        self.subjects_added = txn.written.get("subjects", 0)
        self.scans_added = txn.written.get("scans", 0)
        self.labels_added = txn.written.get("labels", 0)
        self.already_present = candidates - self.scans_added
        self.quarantined = len(self.problems)

    def summary(self) -> dict:
        """JSON-ready counts (problems as ``{"file", "error"}``)."""
        out = {k: v for k, v in self.__dict__.items() if k != "problems"}
        out["problems"] = [{"file": f, "error": e} for f, e in self.problems]
        return out


def check_source(root: str | Path, center: str, dataset: str | None) -> tuple[Path, str]:
    """The resolved source folder and the dataset name (default: the center's).

    Raises:
        IngestError: a name with characters other than letters, digits, '.', '_', '-', or a
            source that is not a directory.
    """
    root = Path(root).resolve()
    dataset = dataset or center
    for what, value in (("center", center), ("dataset", dataset)):
        if not _NAME.match(value):
            raise IngestError(f"invalid {what} name {value!r}: use letters, digits, '.', '_', '-'")
    if not root.is_dir():
        raise IngestError(f"{root}: not a directory")
    return root, dataset


def run_id() -> str:
    """A new ingest run id (the ``source`` column of the rows it writes)."""
    return f"ingest-{utcnow():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def quarantine_row(uri: str, dataset: str, center: str, stage: str, error: str, run: str) -> dict:
    """A ``quarantine`` row; ``uri`` must already be free of PHI."""
    return {
        "uri": uri,
        "dataset": dataset,
        "center": center,
        "stage": stage,
        "error": error,
        "at": utcnow(),
        "source": run,
    }
