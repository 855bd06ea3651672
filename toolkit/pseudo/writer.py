"""Accepted pseudo-labels written as files and ``labels`` rows (one transaction per round)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from xds.catalog import Catalog, utcnow
from xds.io.images import write_volume
from xds.labels.mapping import IGNORE
from xds.pseudo.gates import CaseResult
from xds.schemas.ids import stable_id


def pseudo_label_map(classes: list[str], unreliable: str) -> dict:
    """The ``label_maps`` row pseudo-labels over ``classes`` use (ignore at 255 if marked)."""
    names = {0: "background", **{i: c for i, c in enumerate(classes, start=1)}}
    if unreliable == "ignore":
        names[IGNORE] = "ignore"
    suffix = ":ignore" if unreliable == "ignore" else ""
    return {
        "label_map_id": "xds:pseudo:" + "+".join(classes) + suffix,
        "dataset": "xds", "indices": list(names), "names": list(names.values()),
        "source": json.dumps({"pseudo_labels": classes, "unreliable": unreliable}),
        "created_at": utcnow(),
    }  # fmt: skip


def pseudo_label_id(scan_id: str, name: str, round_: int, teachers: list[str], digest: str):
    """The id a round gives a scan's pseudo-label: same round, same settings, same id."""
    return stable_id("lbl", scan_id, "pseudo", name, round_, ",".join(teachers), digest)


class PseudoLabelWriter:
    """A round's accepted labels, written as they are judged and registered at the end.

    A round over a whole center holds one label volume at a time, not one per candidate:
    :meth:`add` writes an accepted case's file at once (under a temporary name, then
    renamed, so no reader sees half a file) to ``pseudo/<name>/r<round>/<label_id>.nii.gz``
    in the catalog folder, keeps only its row and drops the case's voxels. :meth:`commit`
    appends every row in one transaction: until then the catalog is unchanged, and a round
    cut short leaves unregistered files that the next run writes again. A label the catalog
    already holds is neither written nor added again.

    Args:
        catalog: the catalog.
        name: the pseudo-labelling's name.
        round_: the round (1, 2, ...).
        teachers: run ids of the teachers.
        digest: a digest of the round's settings (part of the label ids).
        classes: foreground classes.
        unreliable: ``reject`` or ``ignore``.
        scan_ids: the round's candidates.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        name: str,
        round_: int,
        teachers: list[str],
        digest: str,
        classes: list[str],
        unreliable: str,
        scan_ids: Iterable[str],
    ):
        self.catalog, self.name, self.round, self.classes = catalog, name, round_, list(classes)
        self.teachers = list(teachers)
        self.label_map = pseudo_label_map(classes, unreliable)
        self.folder = Path("pseudo") / name / f"r{round_}"
        scan_ids = list(scan_ids)
        ids = [pseudo_label_id(s, name, round_, teachers, digest) for s in scan_ids]
        self._ids = dict(zip(scan_ids, ids, strict=True))
        self._present = set(catalog.read("labels", "list_contains(?, label_id)", [sorted(ids)])
                            .column("label_id").to_pylist()) if ids else set()  # fmt: skip
        self.accepted: dict[str, str] = {}  # scan id -> label id of every accepted case
        self._rows: list[dict] = []
        self._now = utcnow()

    def add(self, result: CaseResult, affine: np.ndarray) -> None:
        """Write ``result``'s label if it was accepted; its voxels are dropped either way."""
        label, result.label = result.label, None
        if not result.accepted:
            return
        label_id = self._ids[result.scan_id]
        self.accepted[result.scan_id] = label_id
        if label_id in self._present:
            return
        uri = (self.folder / f"{label_id}.nii.gz").as_posix()
        target = self.catalog.root / uri
        tmp = target.with_name(f".{label_id}.{os.getpid()}.part.nii.gz")
        volume = write_volume(label, affine, tmp)
        os.replace(tmp, target)
        values = set(np.unique(label).tolist())
        self._rows.append({
            "label_id": label_id, "scan_id": result.scan_id, "uri": uri, "hash": volume.hash,
            "label_map": self.label_map["label_map_id"], "origin": "pseudo",
            "classes_present": [c for i, c in enumerate(self.classes, start=1) if i in values],
            "classes_annotated": list(self.classes), "round": self.round,
            "teacher_run": ",".join(self.teachers),
            "quality": {k: float(v) for k, v in result.figures.items() if v is not None},
            "created_at": self._now, "source": f"pseudo-label {self.name} r{self.round}",
        })  # fmt: skip

    def commit(self) -> int:
        """Append the rows of the labels written; how many label rows were added."""
        if not self._rows:
            return 0
        with self.catalog.transaction(f"pseudo-label {self.name} round {self.round}") as txn:
            txn.append("label_maps", [self.label_map], unique_by=["label_map_id"])
            txn.append("labels", self._rows, unique_by=["label_id"])
        self._rows = []
        return txn.written.get("labels", 0)
