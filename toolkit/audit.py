"""Leakage audit of a stored split: nothing of one subject or one image on two sides.

Checks, per fold: (a) a subject with scans in two roles; (b) the same decoded voxels (equal
``image_hash``) in two roles, whatever the subject ids say.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from xds.catalog import Catalog
from xds.splits import get_split


@dataclass
class AuditReport:
    """Leaks found in one split (empty ``leaks`` means clean)."""

    split: str
    n_scans: int
    n_subjects: int
    leaks: list[dict] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when no leak was found."""
        return not self.leaks

    def summary(self) -> dict:
        """JSON-ready report."""
        return {
            "split": self.split,
            "n_scans": self.n_scans,
            "n_subjects": self.n_subjects,
            "clean": self.clean,
            "leaks": self.leaks,
        }


def audit_split(catalog: Catalog, name: str) -> AuditReport:
    """Find subjects and identical images that sit in two roles of a split."""
    split = get_split(catalog, name)
    rows = split.rows.to_pylist()
    scan_ids = sorted({r["scan_id"] for r in rows})
    hashes = {
        r["scan_id"]: r["image_hash"]
        for r in catalog.rows_for("scans", scan_ids, ["scan_id", "image_hash"]).to_pylist()
    }
    report = AuditReport(name, len(scan_ids), len({r["subject_id"] for r in rows}))
    for kind, key in (("subject_in_two_roles", "subject_id"), ("same_image_in_two_roles", None)):
        groups: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            value = r[key] if key else hashes.get(r["scan_id"])
            groups[(r["fold"], value)][r["role"]].append(r["scan_id"])
        for (fold, value), roles in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if len(roles) > 1:
                report.leaks.append(
                    {
                        "kind": kind,
                        "fold": fold,
                        (key or "image_hash"): value,
                        "roles": {role: sorted(ids) for role, ids in sorted(roles.items())},
                    }
                )
    return report
