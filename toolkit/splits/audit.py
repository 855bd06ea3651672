"""Leakage audit: nothing of one subject, one image or one study on two sides of a split.

Checks, per fold of a split (or across a cohort, with ``audit_cohort``):

(a) ``subject_in_two_roles``: a subject with scans in two roles;
(b) ``same_image_in_two_roles``: equal decoded voxels (``image_hash``) in two roles, whatever
    the subject ids say;
(c) ``near_duplicate_in_two_roles``: the same scan resampled, cropped, re-quantized or with
    noise, found by its fingerprint (:mod:`xds.io.fingerprint`) under another subject id;
(d) ``study_under_two_subjects``: one study registered under two subject ids: one study id
    (the keyed pseudonym of the DICOM StudyInstanceUID) with subjects in two roles, or the
    same scanner and acquisition time of day with matching fingerprints (UIDs regenerated);
(e) ``teacher_trained_on_test``: a pseudo-label used in training whose teacher learned
    from a scan that is now a test case: the label's ``teacher_run`` names the teacher runs,
    whose splits say what they learned from, followed through the teachers of any
    pseudo-labels they learned from in turn (a split ``NAME@FOLD`` stands for a teacher
    trained outside xds).

(a), (b) and (d)'s study ids are metadata: DuckDB group-bys, a million scans in seconds. (c)
and (d)'s fingerprint check compare every pair of scans of one modality under different
subjects (quadratic; fine for tens of thousands of scans).

``fix`` proposes moves that remove every leak: the scans a leak ties together (and all
scans of their subjects) join the role most of them already have; a test case a teacher saw
moves to train.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from xds.catalog import Catalog, get_cohort
from xds.catalog.cohorts import cohort_scans
from xds.io.fingerprint import THRESHOLD, correlate, prepare

__all__ = ["THRESHOLD", "apply_fix", "audit_cohort", "audit_split", "propose_fix"]
from xds.splits.store import get_split

KINDS = (
    "subject_in_two_roles", "same_image_in_two_roles", "near_duplicate_in_two_roles",
    "study_under_two_subjects", "teacher_trained_on_test",
)  # fmt: skip
_META = ["scan_id", "subject_id", "image_hash", "study_id", "modality", "vendor",
         "scanner_model", "field_strength", "acquisition_time_key", "image_uri"]  # fmt: skip


@dataclass
class AuditReport:
    """Leaks found in one split or cohort (empty ``leaks`` means clean)."""

    split: str
    n_scans: int
    n_subjects: int
    leaks: list[dict] = field(default_factory=list)
    fix: list[dict] = field(default_factory=list)  # proposed moves: scan, fold, from, to
    checks: dict = field(default_factory=dict)  # what was compared

    @property
    def clean(self) -> bool:
        """True when no leak was found."""
        return not self.leaks

    def summary(self) -> dict:
        """JSON-ready report."""
        return {
            "split": self.split, "n_scans": self.n_scans, "n_subjects": self.n_subjects,
            "clean": self.clean, "leaks": self.leaks, "fix": self.fix, "checks": self.checks,
        }  # fmt: skip


# -- metadata checks (a, b, d by study id) ------------------------------------------------------

_GROUP_CHECKS = (
    ("subject_in_two_roles", "subject_id", ""),
    ("same_image_in_two_roles", "image_hash", ""),
    ("study_under_two_subjects", "study_id",
     "AND study_id IS NOT NULL AND count(DISTINCT subject_id) > 1"),
)  # fmt: skip


def metadata_leaks(rows: pa.Table) -> list[dict]:
    """Checks (a), (b) and (d)-by-study-id on a table of fold, role and scan metadata.

    ``rows`` needs ``fold``, ``role``, ``scan_id``, ``subject_id``, ``image_hash`` and
    ``study_id``. DuckDB groups them, so a million rows take about a second.
    """
    con = duckdb.connect()
    con.register("t", rows)
    leaks = []
    for kind, key, extra in _GROUP_CHECKS:
        query = f"""
            SELECT fold, {key} AS value, role, list(scan_id ORDER BY scan_id) AS scans
            FROM t WHERE ({key}, fold) IN (
                SELECT ({key}, fold) FROM t GROUP BY {key}, fold
                HAVING count(DISTINCT role) > 1 {extra})
            GROUP BY fold, {key}, role ORDER BY fold, value, role
        """
        grouped: dict[tuple, dict] = {}
        for r in con.sql(query).to_arrow_table().to_pylist():
            entry = grouped.setdefault((r["fold"], r["value"]), {})
            entry[r["role"]] = r["scans"]
        leaks += [
            {"kind": kind, "fold": fold, key: value, "roles": roles}
            for (fold, value), roles in grouped.items()
        ]
    con.close()
    return leaks


# -- image checks (c, d by acquisition) ----------------------------------------------------------


def duplicate_pairs(
    meta: list[dict], threshold: float = THRESHOLD
) -> list[tuple[int, int, str, float]]:
    """Pairs of scans under different subjects that hold the same image (by fingerprint).

    Returns (i, j, kind, correlation) with kind ``near_duplicate_in_two_roles``, or
    ``study_under_two_subjects`` when scanner and acquisition time of day also agree.
    Only scans of one modality are compared.
    """
    details = [prepare(m.get("fingerprint")) for m in meta]
    pairs = []
    by_modality: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(meta):
        if details[i] is not None:
            by_modality[str(m.get("modality"))].append(i)
    for members in by_modality.values():
        for a_pos, i in enumerate(members):
            for j in members[a_pos + 1 :]:
                if meta[i]["subject_id"] == meta[j]["subject_id"]:
                    continue
                r, _ = correlate(details[i], details[j])
                if r >= threshold:
                    pairs.append((i, j, _pair_kind(meta[i], meta[j]), r))
    return pairs


def fill_fingerprints(catalog: Catalog, meta: list[dict], jobs: int = 1) -> int:
    """Compute the fingerprints a scan row lacks (scans ingested before schema 3).

    They are used for this audit and not stored (an audit only reads); returns how many.
    """
    from xds.io.parallel import progress_map

    missing = [m for m in meta if not m.get("fingerprint")]
    paths = [str(catalog.resolve(m["image_uri"])) for m in missing]
    for m, blob in zip(missing, progress_map(_fingerprint_file, paths, jobs=jobs,
                                             description="fingerprints"), strict=True):  # fmt: skip
        m["fingerprint"] = blob
    return len(missing)


def _fingerprint_file(path: str) -> bytes | None:
    from xds.io.images import read_volume
    from xds.schemas.errors import IngestError

    try:
        return read_volume(path).fingerprint()
    except (IngestError, OSError):
        return None


def _pair_kind(a: dict, b: dict) -> str:
    same_scanner = all(
        a.get(k) is not None and a.get(k) == b.get(k)
        for k in ("vendor", "scanner_model", "acquisition_time_key")
    )
    return "study_under_two_subjects" if same_scanner else "near_duplicate_in_two_roles"


# -- teacher check (e) -----------------------------------------------------------------------------


def teacher_leaks(catalog: Catalog, rows: list[dict]) -> list[dict]:
    """Pseudo-labels used in training whose teacher saw one of this fold's test cases."""
    by_fold: dict[int, dict[str, str]] = defaultdict(dict)
    for r in rows:
        by_fold[r["fold"]][r["scan_id"]] = r["role"]
    scan_ids = sorted({r["scan_id"] for r in rows})
    pseudo = [
        r for r in catalog.rows_for("labels", scan_ids, ["scan_id", "origin", "teacher_run"])
        .to_pylist() if r["origin"] == "pseudo" and r["teacher_run"]
    ]  # fmt: skip
    teachers: dict[str, set[str]] = {}
    leaks = []
    for label in pseudo:
        run = label["teacher_run"]
        if run not in teachers:
            teachers[run] = _teacher_training_scans(catalog, run)
        for fold, roles in sorted(by_fold.items()):
            if roles.get(label["scan_id"]) in (None, "test"):
                continue  # not used in training in this fold
            seen = sorted(s for s in teachers[run] if roles.get(s) == "test")
            if seen:
                leaks.append({
                    "kind": "teacher_trained_on_test", "fold": fold, "teacher_run": run,
                    "pseudo_labelled_scan": label["scan_id"], "roles": {"test": seen},
                })  # fmt: skip
    return leaks


def _teacher_training_scans(catalog: Catalog, teacher: str) -> set[str]:
    """Every scan a teacher learned from, through the teachers of its own pseudo-labels.

    ``teacher`` is a ``labels.teacher_run`` value: run ids (comma-separated for an
    ensemble), or a split ``NAME`` / ``NAME@FOLD`` for teachers trained outside xds. A
    run learned from the train and val roles of its split's fold; where those hold
    pseudo-labels, from whatever their teachers learned from, and so on.
    """
    seen: set[str] = set()
    pending, visited = [t for t in teacher.split(",") if t], set()
    while pending:
        current = pending.pop()
        if current in visited:
            continue
        visited.add(current)
        learned = _learned_from(catalog, current)
        seen |= learned
        if learned:
            rows = catalog.rows_for("labels", sorted(learned), ["origin", "teacher_run"])
            pending += [
                t for r in rows.to_pylist() if r["origin"] == "pseudo" and r["teacher_run"]
                for t in r["teacher_run"].split(",")
            ]  # fmt: skip
    return seen


def _learned_from(catalog: Catalog, teacher: str) -> set[str]:
    """The train and val scans of a run's fold, or of a split named NAME[@FOLD]."""
    runs = catalog.read("runs", "run_id = ? OR name = ?", [teacher, teacher]).to_pylist()
    if runs:
        name, fold = runs[0]["split_id"], runs[0]["fold"]
    else:
        name, _, number = teacher.partition("@")
        fold = int(number) if number.isdigit() else 0
    try:
        split = get_split(catalog, name)
    except Exception:  # noqa: BLE001 - a teacher we cannot resolve has no known training set
        return set()
    roles = split.roles(fold)
    return set(roles.get("train", [])) | set(roles.get("val", []))


# -- the audits ------------------------------------------------------------------------------------


def audit_split(
    catalog: Catalog,
    name: str,
    *,
    images: bool = True,
    threshold: float = THRESHOLD,
    jobs: int = 1,
) -> AuditReport:
    """Every leak (a)-(e) of a stored split, per fold, with a proposed fix.

    Args:
        catalog: the catalog.
        name: the split.
        images: also compare fingerprints (c, and d without study ids).
        threshold: fingerprint correlation from which two scans are one image.
        jobs: worker processes for fingerprints older catalogs lack.
    """
    split = get_split(catalog, name)
    rows = split.rows.to_pylist()
    scan_ids = sorted({r["scan_id"] for r in rows})
    columns = _META + (["fingerprint"] if images else [])
    scans = catalog.rows_for("scans", scan_ids, columns)
    table = split.rows.join(
        scans.select(["scan_id", "image_hash", "study_id"]), "scan_id", join_type="left outer"
    )
    report = AuditReport(name, len(scan_ids), len({r["subject_id"] for r in rows}))
    report.leaks = metadata_leaks(table)
    if images:
        order = scans.to_pylist()  # sorted by scan_id, as rows_for returns them
        report.checks["fingerprints_computed_now"] = fill_fingerprints(catalog, order, jobs)
        pairs = duplicate_pairs(order, threshold)
        report.checks["fingerprints_compared"] = sum(1 for m in order if m.get("fingerprint"))
        report.leaks += _pair_leaks(pairs, order, rows)
    report.leaks += teacher_leaks(catalog, rows)
    report.fix = propose_fix(rows, report.leaks)
    return report


def _pair_leaks(pairs, order, rows) -> list[dict]:
    roles: dict[int, dict[str, str]] = defaultdict(dict)
    for r in rows:
        roles[r["fold"]][r["scan_id"]] = r["role"]
    leaks = []
    for fold, of in sorted(roles.items()):
        for i, j, kind, r in pairs:
            a, b = order[i]["scan_id"], order[j]["scan_id"]
            if a in of and b in of and of[a] != of[b]:
                leaks.append({
                    "kind": kind, "fold": fold, "correlation": round(r, 4),
                    "subjects": [order[i]["subject_id"], order[j]["subject_id"]],
                    "roles": {of[a]: [a], of[b]: [b]},
                })  # fmt: skip
    return leaks


def audit_cohort(
    catalog: Catalog,
    cohort: str,
    *,
    images: bool = True,
    threshold: float = THRESHOLD,
    jobs: int = 1,
) -> AuditReport:
    """Duplicates inside a cohort, before any split.

    One image, one study, or a near-duplicate under two subject ids: each would leak as
    soon as the two subjects land in different roles.
    """
    found = get_cohort(catalog, cohort)
    scans = cohort_scans(catalog, found)
    ids = scans.column("scan_id").to_pylist()
    columns = _META + (["fingerprint"] if images else [])
    meta = catalog.rows_for("scans", ids, columns).to_pylist()
    # every scan its own role: any group with two subjects is a duplicate
    rows = [{"fold": 0, "role": m["subject_id"], **{k: m[k] for k in _META[:4]}} for m in meta]
    report = AuditReport(f"cohort:{found.name}", len(meta), len({m["subject_id"] for m in meta}))
    report.leaks = [
        {**leak, "kind": leak["kind"].replace("_in_two_roles", "_under_two_subjects"),
         "subjects": sorted(leak["roles"])}
        for leak in metadata_leaks(pa.Table.from_pylist(rows))
        if leak["kind"] != "subject_in_two_roles"
    ]  # fmt: skip
    if images:
        report.checks["fingerprints_computed_now"] = fill_fingerprints(catalog, meta, jobs)
        for i, j, kind, r in duplicate_pairs(meta, threshold):
            report.leaks.append({
                "kind": kind.replace("_in_two_roles", "_under_two_subjects"),
                "correlation": round(r, 4),
                "subjects": [meta[i]["subject_id"], meta[j]["subject_id"]],
                "scans": [meta[i]["scan_id"], meta[j]["scan_id"]],
            })  # fmt: skip
    return report


def propose_fix(rows: list[dict], leaks: list[dict]) -> list[dict]:
    """Moves that remove every leak, per fold (see the module docstring)."""
    moves = []
    for fold in sorted({r["fold"] for r in rows}):
        mine = [r for r in rows if r["fold"] == fold]
        role = {r["scan_id"]: r["role"] for r in mine}
        ties: dict[str, list[str]] = defaultdict(list)  # scans that must share a role
        for r in mine:
            ties[r["subject_id"]].append(r["scan_id"])
        forced: dict[str, str] = {}
        for n, leak in enumerate(x for x in leaks if x.get("fold") == fold):
            scans = [s for group in leak["roles"].values() for s in group if s in role]
            if leak["kind"] == "teacher_trained_on_test":
                forced.update({s: "train" for s in scans})
            else:
                ties[f"leak {n}"] = scans
        for members in _components(sorted(role), ties.values()):
            present = [role[s] for s in members]
            target = next((forced[s] for s in members if s in forced), None)
            if target is None:
                if len(set(present)) == 1:
                    continue
                counts = {r: present.count(r) for r in set(present)}
                target = max(sorted(counts), key=lambda r: (counts[r], r == "train"))
            moves += [
                {"fold": fold, "scan_id": s, "from": role[s], "to": target}
                for s in sorted(members) if role[s] != target
            ]  # fmt: skip
    return moves


def _components(nodes: list[str], groups) -> list[list[str]]:
    """Connected components of ``nodes`` when each group's members are joined."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = {s: i for i, s in enumerate(nodes)}
    src, dst = [], []
    for group in groups:
        ids = [index[s] for s in group if s in index]
        src += ids[:-1]
        dst += ids[1:]
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    out: dict[int, list[str]] = defaultdict(list)
    for s, c in zip(nodes, label, strict=True):
        out[int(c)].append(s)
    return list(out.values())


def apply_fix(catalog: Catalog, name: str, fix: list[dict], new_name: str):
    """Store the split ``name`` with the proposed moves applied, as ``new_name``."""
    from xds.splits.store import _store

    split = get_split(catalog, name)
    moved = {(m["fold"], m["scan_id"]): m["to"] for m in fix}
    assignments = [
        (r["scan_id"], r["subject_id"], r["fold"], moved.get((r["fold"], r["scan_id"]), r["role"]))
        for r in split.rows.to_pylist()
    ]
    params = {**split.params, "fixed_from": split.name, "moves": len(fix)}
    return _store(catalog, new_name, split.cohort_id, split.strategy, params, split.seed,
                  assignments)  # fmt: skip
