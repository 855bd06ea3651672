"""What every ingest path shares: the run report, name checks, quarantine rows and labels."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog, utcnow
from xds.io.deid import matches_scrubbed, scrub_message, scrub_path
from xds.io.images import Volume, store_volume
from xds.schemas.errors import IngestError
from xds.schemas.ids import stable_id

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class IngestReport:
    """What one ingest run did.

    ``problems`` holds (file, one-line reason) with the file's path relative to the source
    folder and scrubbed of identifiers (:func:`xds.io.deid.scrub_path`), as the quarantine
    table stores it; ``sources`` holds the same files' real paths, for a user who asks to
    see them on their own machine (``--show-paths``) and never stored.
    """

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
    sources: list[str] = field(default_factory=list, repr=False)

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
        out = {k: v for k, v in self.__dict__.items() if k not in ("problems", "sources")}
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
    # no date in it: a run id is stored in every row it writes, and xds verify flags dates
    return f"ingest-{secrets.token_hex(6)}"


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


class Quarantine:
    """The quarantine rows of one ingest run, and its report's problems.

    Every file named here passes through one scrubbing: its path relative to the source
    folder with subject keys replaced by pseudonyms (``shown``), then every component that
    is not plainly structural replaced by a keyed hash; the error text gets the same path
    in place of the real one, and any other path, UID or date in it is masked.
    """

    def __init__(self, catalog: Catalog, report: IngestReport, root: Path, run: str):
        self.secret = catalog.secret()
        self.report, self.root, self.run = report, root, run
        self.keep = frozenset({report.dataset.lower(), report.center.lower()})
        self.rows: list[dict] = []

    def uri(self, shown: str, source: str | None = None) -> str:
        """How a file is stored.

        ``shown`` is its relative path with subject keys already pseudonymized, ``source``
        the same path as found (what hashed components are hashes of).
        """
        return scrub_path(self.secret, shown, self.keep, source=source)

    def add(
        self,
        rel: str,
        stage: str,
        error: str,
        *,
        shown: str | None = None,
        center: str | None = None,
    ) -> None:
        """Quarantine ``rel`` (relative to the source folder) at ``stage`` for ``error``."""
        uri = self.uri(shown if shown is not None else rel, rel)
        real = str(self.root / rel)
        message = scrub_message(error, {real: uri, rel: uri, str(self.root): "<source>"})
        self.report.problems.append((uri, message))
        self.report.sources.append(real)
        self.rows.append(
            quarantine_row(
                uri, self.report.dataset, center or self.report.center, stage, message, self.run
            )
        )

    def take(self) -> list[dict]:
        """The rows gathered since the last call (for a transaction)."""
        rows, self.rows = self.rows, []
        return rows


def locate_quarantined(catalog: Catalog, root: str | Path, rows: list[dict]) -> list[list[str]]:
    """The files under ``root`` that quarantine ``rows`` name, for a user on their own machine.

    A stored ``uri`` keeps structural components as they are, pseudonyms where subject
    keys were, and keyed hashes of the rest; each is matched against the folder's real
    names with the catalog's key. Returns, per row, the matching real paths (several when a
    pseudonym stands for a name that more than one folder matches).
    """
    secret = catalog.secret()
    root = Path(root)
    out = []
    for row in rows:
        parts = [p for p in row["uri"].split(" [series ")[0].split("/") if p]
        level = [root]
        for part in parts:
            level = [
                Path(entry.path)
                for folder in level
                if folder.is_dir()
                for entry in os.scandir(folder)
                if matches_scrubbed(secret, part, entry.name)
            ]
        out.append(sorted(str(p) for p in level) if parts else [])
    return out


def label_map_id(dataset: str, mapping: dict[int, str] | None) -> str:
    """The id of a dataset's label map: the same map always gets the same id."""
    text = json.dumps(sorted((mapping or {}).items()))
    return f"{dataset}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def label_map_row(map_id: str, dataset: str, names: dict[int, str], source: str, now) -> dict:
    """A ``label_maps`` row: index -> class name (background included)."""
    return {"label_map_id": map_id, "dataset": dataset, "indices": list(names),
            "names": list(names.values()), "source": source, "created_at": now}  # fmt: skip


def store_label(
    catalog_root: Path, volume: Volume, *, dataset: str, subject_id: str, scan_id: str,
    link: bool = True,
) -> tuple[str, str]:  # fmt: skip
    """Store a scan's label beside its image; returns (label_id, uri).

    The id is the scan's and the voxels' (a re-run stores the same file under the same
    name); the file goes under ``data/<dataset>/<subject>/``.
    """
    label_id = stable_id("lbl", scan_id, volume.hash)
    uri = (Path("data") / dataset / subject_id / f"{label_id}.nii.gz").as_posix()
    store_volume(volume, Path(catalog_root) / uri, link=link)
    return label_id, uri
