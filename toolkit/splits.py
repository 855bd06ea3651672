"""Patient-level splits of a cohort, stored in the catalog's ``splits`` table.

The holdout protocol follows CrossPan (seed 000, Appendix C): within every stratum
(by default center x sequence) subjects are divided 70/10/20 into train/val/test, then the
strata are pooled. A subject is one unit everywhere, so its scans never sit in two roles
even when it appears in several strata (one scan per sequence): subjects are placed one at a
time into the role their strata need most, which keeps every stratum within one subject of
its target in practice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from xds.catalog import Catalog, get_cohort, utcnow
from xds.catalog.cohorts import cohort_scans
from xds.schemas.errors import SplitError
from xds.schemas.ids import stable_id

ROLE_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """A stored split: one row per (scan, fold) with its role."""

    split_id: str
    name: str
    cohort_id: str
    strategy: str
    params: dict
    seed: int
    rows: pa.Table  # scan_id, subject_id, fold, role

    def roles(self, fold: int = 0) -> dict[str, list[str]]:
        """Role -> sorted scan ids, for one fold."""
        out: dict[str, list[str]] = defaultdict(list)
        for r in self.rows.to_pylist():
            if r["fold"] == fold:
                out[r["role"]].append(r["scan_id"])
        return {role: sorted(ids) for role, ids in out.items()}

    def summary(self) -> dict:
        """JSON-ready description with scan and subject counts per role."""
        counts: dict[str, dict[str, set]] = defaultdict(lambda: {"scans": set(), "subjects": set()})
        for r in self.rows.to_pylist():
            counts[r["role"]]["scans"].add(r["scan_id"])
            counts[r["role"]]["subjects"].add(r["subject_id"])
        return {
            "split_id": self.split_id,
            "name": self.name,
            "cohort_id": self.cohort_id,
            "strategy": self.strategy,
            "params": self.params,
            "seed": self.seed,
            "roles": {role: {k: len(v) for k, v in c.items()} for role, c in counts.items()},
        }


def parse_ratios(text: str | tuple) -> tuple[float, float, float]:
    """Parse "70,10,20" (train, val, test) or "80,20" (train, test) into fractions summing to 1.

    Raises:
        SplitError: not 2 or 3 non-negative numbers with a positive sum.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SplitError(f"--ratios {text!r}: expected numbers like 70,10,20") from None
    if len(values) == 2:
        values = [values[0], 0.0, values[1]]
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise SplitError(f"--ratios {text!r}: expected 2 or 3 non-negative numbers")
    total = sum(values)
    return tuple(v / total for v in values)


def holdout_assign(
    subject_cells: dict[str, list[tuple]],
    ratios: tuple[float, float, float],
    seed: int,
) -> dict[str, str]:
    """Assign each subject one role so every cell's subjects follow ``ratios``.

    Args:
        subject_cells: subject id -> the strata (cells) it has scans in.
        ratios: train, val, test fractions.
        seed: the same seed gives the same assignment.
    """
    cell_subjects: dict[tuple, int] = defaultdict(int)
    for cells in subject_cells.values():
        for cell in set(cells):
            cell_subjects[cell] += 1
    target = {cell: _largest_remainder(n, ratios) for cell, n in cell_subjects.items()}
    count = {cell: np.zeros(3) for cell in target}
    total_target = np.sum(list(target.values()), axis=0)
    total = np.zeros(3)
    rng = np.random.default_rng(seed)
    order = sorted(subject_cells)
    order = [order[i] for i in rng.permutation(len(order))]
    # Most constrained first: subjects spanning many strata, then those in small strata.
    # Single-stratum subjects come last, when they can fill exactly what each stratum lacks.
    order.sort(
        key=lambda s: (-len(set(subject_cells[s])), min(cell_subjects[c] for c in subject_cells[s]))
    )
    assignment = {}
    for subject in order:
        cells = sorted(set(subject_cells[subject]))
        need = np.array([(target[c] - count[c]) / max(cell_subjects[c], 1) for c in cells])
        # Score each role by the stratum that needs it least, so a subject spanning strata
        # does not overfill one of them to please the others (summing the needs would).
        demand = need.min(0) + 1e-3 * need.sum(0)
        # Break ties toward the role furthest below its overall target, then at random.
        overall = (total_target - total) / max(total_target.sum(), 1)
        score = demand * 1e6 + overall * 1e3 + rng.random(3)
        score[np.array(ratios) == 0] = -np.inf
        role = int(np.argmax(score))
        assignment[subject] = ROLE_ORDER[role]
        for c in cells:
            count[c][role] += 1
        total[role] += 1
    return _repair(assignment, subject_cells, ratios)


def _repair(
    assignment: dict[str, str], subject_cells: dict[str, list[tuple]], ratios, max_passes: int = 200
) -> dict[str, str]:
    """Move or swap subjects until every cell is within one subject of its exact share.

    Greedy placement can leave a cell 1.2 subjects off when subjects span cells with
    competing needs; a short local search removes that. A change (one subject to another
    role, or two subjects of two roles swapped) is taken when it lowers the excess over one
    subject, then the squared error; only the touched cells are re-scored.
    """
    subjects = sorted(assignment)
    cells = sorted({c for s in subjects for c in subject_cells[s]})
    cell_index = {c: i for i, c in enumerate(cells)}
    member = [np.array(sorted({cell_index[c] for c in subject_cells[s]})) for s in subjects]
    role = np.array([ROLE_ORDER.index(assignment[s]) for s in subjects])
    counts = np.zeros((len(cells), 3))
    for i, idx in enumerate(member):
        counts[idx, role[i]] += 1
    exact = counts.sum(1, keepdims=True) * np.asarray(ratios)[None, :]
    allowed = [int(b) for b in np.flatnonzero(np.asarray(ratios) > 0)]
    in_cell = [[] for _ in cells]
    for i, idx in enumerate(member):
        for k in idx:
            in_cell[k].append(i)

    def cost(rows: np.ndarray) -> float:
        dev = np.abs(counts[rows] - exact[rows])
        return float(1e3 * np.maximum(dev - 1 - 1e-9, 0).sum() + (dev**2).sum())

    def apply(moves) -> None:
        for i, b in moves:
            counts[member[i], role[i]] -= 1
            counts[member[i], b] += 1
            role[i] = b

    def try_moves(moves, rows) -> bool:
        undo = [(i, int(role[i])) for i, _ in moves]
        before = cost(rows)
        apply(moves)
        if cost(rows) < before - 1e-9:
            return True
        apply(reversed([(i, a) for (i, _), (_, a) in zip(moves, undo, strict=True)]))
        return False

    # First the cheap, always-good move: a subject in only this stratum, from the role the
    # stratum has too many of to the one it lacks most. Subjects spanning strata come after.
    single = [[i for i in members if len(member[i]) == 1] for members in in_cell]
    for k in range(len(cells)):
        while True:
            dev = counts[k] - exact[k]
            a = int(np.argmax(dev))
            b = allowed[int(np.argmin(dev[allowed]))]
            if max(dev[a], -dev[b]) <= 1 + 1e-9 or dev[a] - dev[b] <= 1 + 1e-9:
                break
            mover = next((i for i in single[k] if role[i] == a), None)
            if mover is None:
                break
            apply([(mover, b)])

    for _ in range(max_passes):
        bad = np.flatnonzero((np.abs(counts - exact) > 1 + 1e-9).any(1))
        if bad.size == 0:
            break
        improved = False
        for i in sorted({i for k in bad for i in in_cell[k]}):
            for b in allowed:
                a = int(role[i])
                if b == a:
                    continue
                if try_moves([(i, b)], member[i]):
                    improved = True
                    break
                partners = {j for k in member[i] for j in in_cell[k] if role[j] == b}
                for j in sorted(partners):
                    rows = np.union1d(member[i], member[j])
                    if try_moves([(i, b), (j, a)], rows):
                        improved = True
                        break
                if improved:
                    break
            if improved:
                break
        if not improved:
            break
    return {s: ROLE_ORDER[r] for s, r in zip(subjects, role, strict=True)}


def _largest_remainder(n: int, ratios) -> np.ndarray:
    exact = np.asarray(ratios) * n
    base = np.floor(exact)
    rest = int(n - base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def split_cohort(
    catalog: Catalog,
    cohort: str,
    *,
    ratios: str | tuple = (70, 10, 20),
    stratify: tuple[str, ...] = ("center", "sequence"),
    seed: int = 0,
    name: str | None = None,
) -> Split:
    """Make and store a patient-level stratified holdout split of a cohort.

    Args:
        catalog: the catalog.
        cohort: cohort name.
        ratios: train, val, test proportions ("70,10,20").
        stratify: ``scan_view`` columns whose combinations are the strata.
        seed: the same seed gives the same split.
        name: split name (default ``<cohort>-holdout-s<seed>``).

    Raises:
        SplitError: unknown stratify column, bad ratios, or a taken name.
    """
    fractions = parse_ratios(ratios)
    found = get_cohort(catalog, cohort)
    name = name or f"{found.name}-holdout-s{seed}"
    scans = cohort_scans(catalog, found)
    missing = [c for c in stratify if c not in scans.column_names]
    if missing:
        raise SplitError(
            f"unknown --stratify column(s) {missing}; choose from: {', '.join(scans.column_names)}"
        )
    if name in {s["name"] for s in list_splits(catalog)}:
        raise SplitError(f"split {name!r} already exists; choose another --name")
    rows = scans.select(["scan_id", "subject_id", *stratify]).to_pylist()
    subject_cells: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        subject_cells[r["subject_id"]].append(tuple(str(r[c]) for c in stratify))
    assignment = holdout_assign(subject_cells, fractions, seed)
    params = {"ratios": [round(f, 6) for f in fractions], "stratify": list(stratify)}
    return _store(
        catalog,
        name,
        found.cohort_id,
        "holdout",
        params,
        seed,
        [(r["scan_id"], r["subject_id"], 0, assignment[r["subject_id"]]) for r in rows],
    )


def _store(catalog, name, cohort_id, strategy, params, seed, assignments) -> Split:
    text = json.dumps(params, sort_keys=True)
    split_id = stable_id("spl", name, cohort_id, strategy, text, seed)
    now = utcnow()
    rows = [
        {
            "split_id": split_id,
            "name": name,
            "cohort_id": cohort_id,
            "strategy": strategy,
            "params": text,
            "seed": seed,
            "scan_id": scan,
            "subject_id": subject,
            "fold": fold,
            "role": role,
            "created_at": now,
        }
        for scan, subject, fold, role in assignments
    ]
    with catalog.transaction(f"split {name}") as txn:
        txn.append("splits", rows)
    table = pa.Table.from_pylist(
        [{k: r[k] for k in ("scan_id", "subject_id", "fold", "role")} for r in rows]
    )
    return Split(split_id, name, cohort_id, strategy, params, seed, table)


def list_splits(catalog: Catalog) -> list[dict]:
    """One summary per stored split: name, cohort, strategy, seed, counts per role."""
    query = """
        SELECT name, split_id, any_value(cohort_id) AS cohort_id, any_value(strategy) AS strategy,
               any_value(params) AS params, any_value(seed) AS seed,
               min(created_at) AS created_at, count(DISTINCT scan_id) AS n_scans,
               count(DISTINCT subject_id) AS n_subjects, count(DISTINCT fold) AS n_folds
        FROM splits GROUP BY name, split_id ORDER BY created_at
    """
    with catalog.connect() as con:
        rows = con.sql(query).to_arrow_table().to_pylist()
    for r in rows:
        r["params"] = json.loads(r["params"])
        r["created_at"] = r["created_at"].isoformat()
    return rows


def get_split(catalog: Catalog, name: str) -> Split:
    """The stored split called ``name`` (or with that split_id).

    Raises:
        SplitError: no such split.
    """
    table = catalog.read("splits", "name = ? OR split_id = ?", (name, name))
    if table.num_rows == 0:
        known = ", ".join(s["name"] for s in list_splits(catalog)) or "none yet"
        raise SplitError(f"no split named {name!r} (known: {known})")
    first = table.slice(0, 1).to_pylist()[0]
    rows = table.select(["scan_id", "subject_id", "fold", "role"])
    return Split(
        first["split_id"],
        first["name"],
        first["cohort_id"],
        first["strategy"],
        json.loads(first["params"]),
        first["seed"],
        rows,
    )
