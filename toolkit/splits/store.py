"""Patient-level splits of a cohort, stored in the catalog's ``splits`` table.

:func:`make_split` reads the cohort's scans, hands integer codes to a protocol of
:mod:`xds.splits.protocols` (holdout, k-fold, leave-one-out, single-source, cross-dataset,
semi-supervised) and stores one row per (scan, fold) with its role. The holdout protocol
follows CrossPan (Appendix C): within every stratum (by default center x sequence)
subjects are divided 70/10/20 into train/val/test, then the strata are pooled; a subject is
one unit everywhere, so its scans never sit in two roles even when it appears in several
strata (one scan per sequence), and every stratum ends within one subject of its target.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
            "folds": self.params.get("folds", [{"fold": 0}]),
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


def make_split(
    catalog: Catalog,
    cohort: str,
    strategy: str = "holdout",
    *,
    ratios: str | tuple = (70, 10, 20),
    stratify: tuple[str, ...] = ("center", "sequence"),
    column: str | None = None,
    group: str | None = None,
    k: int = 5,
    test_share: float = 0.0,
    fractions: tuple[float, ...] = (5, 10, 20, 40),
    external: str | None = None,
    external_fraction: float = 0.0,
    seed: int = 0,
    name: str | None = None,
) -> Split:
    """Make and store a split of a cohort by one of the seeds' protocols.

    Every protocol assigns whole subjects (or whole ``group`` units: subjects sharing a
    group value, and groups sharing a subject, form one unit), so no subject is ever in
    two roles of one fold. Same seed, same split.

    Args:
        catalog: the catalog.
        cohort: cohort name.
        strategy: ``holdout``, ``kfold``, ``leave-one-out``, ``single-source``,
            ``cross-dataset`` or ``semi-supervised`` (see :mod:`xds.splits.protocols`).
        ratios: train, val, test proportions ("70,10,20"); in leave-one-out and
            single-source, the test share decides the side of a subject with scans on both.
        stratify: ``scan_view`` columns whose combinations are the strata.
        column: the column a leave-one-out / single-source / cross-dataset protocol varies
            (default: ``sequence``, ``sequence``, ``dataset``).
        group: a ``scan_view`` column coarser than the subject to keep together.
        k: folds of ``kfold``.
        test_share: ``kfold``: share of units held out as a fixed test set.
        fractions: ``semi-supervised``: labelled percentages of the train role (nested).
        external: a ``scan_view`` clause selecting a fixed external test set, held out of
            every fold's training (e.g. ``"center = 'Delta'"``).
        external_fraction: or that share of units, drawn stratified.
        seed: the random seed.
        name: split name (default ``<cohort>-<strategy>-s<seed>``).

    Raises:
        SplitError: unknown strategy or column, bad ratios or fractions, or a taken name.
    """
    found = get_cohort(catalog, cohort)
    name = name or f"{found.name}-{strategy}-s{seed}"
    if name in {s["name"] for s in list_splits(catalog)}:
        raise SplitError(f"split {name!r} already exists; choose another --name")
    scans = cohort_scans(catalog, found)
    if external and external_fraction:
        raise SplitError("give --external or --external-fraction, not both")
    mask = _external_where(catalog, scans, external) if external else None
    result, params = plan_split(
        scans, strategy, ratios=ratios, stratify=stratify, column=column, group=group, k=k,
        test_share=test_share, fractions=fractions, external_mask=mask,
        external_fraction=external_fraction, seed=seed,
    )  # fmt: skip
    params["external"] = external
    return _store(catalog, name, found.cohort_id, strategy, params, seed, _rows(scans, result))


def plan_split(
    scans: pa.Table,
    strategy: str = "holdout",
    *,
    ratios: str | tuple = (70, 10, 20),
    stratify: tuple[str, ...] = ("center", "sequence"),
    column: str | None = None,
    group: str | None = None,
    k: int = 5,
    test_share: float = 0.0,
    fractions: tuple[float, ...] = (5, 10, 20, 40),
    external_mask: np.ndarray | None = None,
    external_fraction: float = 0.0,
    seed: int = 0,
):
    """The assignment of :func:`make_split` for a table of scans, without a catalog.

    ``scans`` needs ``scan_id``, ``subject_id`` and the columns the protocol uses.
    Returns the :class:`xds.splits.protocols.Assignment` and the split's params.
    """
    import xds.splits.protocols as st

    if strategy not in st.STRATEGIES:
        raise SplitError(f"unknown strategy {strategy!r}; choose from: {', '.join(st.STRATEGIES)}")
    shares = parse_ratios(ratios)
    column = column or {"cross-dataset": "dataset"}.get(strategy, "sequence")
    uses_column = strategy in ("leave-one-out", "single-source", "cross-dataset")
    wanted = [*stratify, *([column] if uses_column else []), *([group] if group else [])]
    missing = [c for c in wanted if c not in scans.column_names]
    if missing:
        raise SplitError(
            f"unknown column(s) {missing}; choose from: {', '.join(scans.column_names)}"
        )
    strata_columns = list(stratify) + ([column] if strategy == "cross-dataset" else [])
    table = _scans_for(scans, strata_columns, column if uses_column else None, group)
    rng = np.random.default_rng(seed)
    ext = external_mask
    if external_fraction:
        ext = _external_share(table, external_fraction, rng)
    if strategy == "holdout":
        result = st.holdout(table, shares, rng, ext)
    elif strategy == "kfold":
        if k < 2:
            raise SplitError(f"--k {k}: k-fold needs at least 2 folds")
        result = st.kfold(table, k, rng, test_share, ext)
    elif strategy in ("leave-one-out", "single-source"):
        if len(table.column_names) < 2:
            raise SplitError(f"{strategy} needs two or more values of {column!r}")
        single = strategy == "single-source"
        result = st.leave_one_out(table, shares, rng, ext, single_source=single)
    elif strategy == "cross-dataset":
        result = st.cross_dataset(table, shares, rng, ext)
    else:
        levels = sorted(float(f) / 100 if float(f) > 1 else float(f) for f in fractions)
        if not levels or levels[0] <= 0 or levels[-1] > 1:
            raise SplitError(f"--fractions {fractions}: percentages in (0, 100]")
        result = st.semi_supervised(table, shares, levels, rng, ext)
    params = {
        "ratios": [round(f, 6) for f in shares], "stratify": list(stratify), "group": group,
        "external_fraction": external_fraction, "folds": result.fold_info,
    }  # fmt: skip
    if uses_column:
        params["column"] = column
    if strategy == "kfold":
        params.update(k=k, test_share=test_share)
    return result, params


def _rows(scans: pa.Table, result) -> pa.Table:
    """scan_id, subject_id, fold, role columns of every fold, as one Arrow table."""
    from xds.splits.protocols import ROLES

    parts = []
    for (idx, roles), info in zip(result.folds, result.fold_info, strict=True):
        taken = scans.select(["scan_id", "subject_id"]).take(pa.array(idx))
        fold = pa.array(np.full(len(idx), info["fold"]), pa.int32())
        role = pa.array(np.asarray(ROLES, object)[roles], pa.string())
        parts.append(taken.append_column("fold", fold).append_column("role", role))
    return pa.concat_tables(parts)


def split_cohort(
    catalog: Catalog,
    cohort: str,
    *,
    ratios: str | tuple = (70, 10, 20),
    stratify: tuple[str, ...] = ("center", "sequence"),
    seed: int = 0,
    name: str | None = None,
) -> Split:
    """Make and store a patient-level stratified holdout split (CrossPan's protocol).

    The same as ``make_split(catalog, cohort, "holdout", ...)``, named
    ``<cohort>-holdout-s<seed>`` by default.
    """
    return make_split(
        catalog, cohort, "holdout", ratios=ratios, stratify=stratify, seed=seed, name=name
    )


def _codes(table: pa.Table, columns: list[str]) -> np.ndarray:
    """One integer code per row for the combination of ``columns`` (0 when none)."""
    if not columns:
        return np.zeros(table.num_rows, np.int64)
    parts = [pc.cast(table.column(c), pa.string()).fill_null("\x00") for c in columns]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")
    encoded = pc.dictionary_encode(joined).combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64)


def _scans_for(scans: pa.Table, strata: list[str], column: str | None, group: str | None):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from xds.splits.protocols import Scans

    subject = _codes(scans, ["subject_id"])
    if group is None:
        unit = subject
    else:
        # subjects and group values as one graph: its components are the units
        grp = _codes(scans, [group]) + subject.max() + 1
        n = int(grp.max()) + 1
        graph = coo_matrix((np.ones(len(subject)), (subject, grp)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        _, unit = np.unique(labels[subject], return_inverse=True)
    names: tuple[str, ...] = ()
    codes = None
    if column is not None:
        values = pc.cast(scans.column(column), pa.string()).fill_null("null")
        names = tuple(sorted(set(values.to_pylist())))
        codes = np.searchsorted(
            np.array(names, dtype=object), values.to_numpy(zero_copy_only=False)
        )
    return Scans(unit=unit, stratum=_codes(scans, strata), column=codes, column_names=names)


def _external_where(catalog, scans: pa.Table, where: str) -> np.ndarray:
    from xds.catalog.cohorts import select_scans

    chosen = select_scans(catalog, where).column("scan_id")
    mask = pc.is_in(scans.column("scan_id"), chosen).to_numpy(zero_copy_only=False)
    if not mask.any():
        raise SplitError(f"--external {where!r} selects no scan of the cohort")
    return mask


def _external_share(table, fraction: float, rng) -> np.ndarray:
    from xds.splits.protocols import allocate, unit_signatures

    if not 0 < fraction < 1:
        raise SplitError(f"--external-fraction {fraction}: expected a share in (0, 1)")
    held = allocate(unit_signatures(table), [1 - fraction, fraction], rng) == 1
    return held[table.unit]


def _store(catalog, name, cohort_id, strategy, params, seed, assignments) -> Split:
    """Append a split's rows in one transaction.

    ``assignments`` is an Arrow table (scan_id, subject_id, fold, role) or a list of
    (scan, subject, fold, role) tuples.
    """
    if not isinstance(assignments, pa.Table):
        scan, subject, fold, role = zip(*assignments, strict=True) if assignments else ([],) * 4
        assignments = pa.table({"scan_id": pa.array(scan, pa.string()),
                                "subject_id": pa.array(subject, pa.string()),
                                "fold": pa.array(fold, pa.int32()),
                                "role": pa.array(role, pa.string())})  # fmt: skip
    text = json.dumps(params, sort_keys=True)
    split_id = stable_id("spl", name, cohort_id, strategy, text, seed)
    n = assignments.num_rows
    constant = {"split_id": split_id, "name": name, "cohort_id": cohort_id,
                "strategy": strategy, "params": text}  # fmt: skip
    table = pa.table({
        **{k: pa.array([v] * n, pa.string()) for k, v in constant.items()},
        "seed": pa.array(np.full(n, seed), pa.int64()),
        **{k: assignments.column(k) for k in ("scan_id", "subject_id", "fold", "role")},
        "created_at": pa.array([utcnow()] * n, pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    with catalog.transaction(f"split {name}") as txn:
        txn.append("splits", table)
    rows = assignments.select(["scan_id", "subject_id", "fold", "role"])
    return Split(split_id, name, cohort_id, strategy, params, seed, rows)


def derive_split(
    catalog: Catalog,
    base: Split,
    fold: int,
    *,
    name: str,
    cohort_id: str,
    roles: dict[str, str],
    params: dict,
) -> Split:
    """A one-fold split that is fold ``fold`` of ``base`` with some scans' roles set anew.

    ``roles`` maps scan ids (of ``base`` or not) to their role here; the other scans keep
    the role ``base`` gives them. Storing it again with the same content returns the stored
    split, so a re-run adds nothing.

    Raises:
        SplitError: a split called ``name`` exists with other content.
    """
    assignment = {r["scan_id"]: [r["subject_id"], r["role"]]
                  for r in base.rows.to_pylist() if r["fold"] == fold}  # fmt: skip
    new = sorted(set(roles) - set(assignment))
    if new:
        subjects = catalog.rows_for("scans", new, ["scan_id", "subject_id"]).to_pylist()
        assignment |= {r["scan_id"]: [r["subject_id"], None] for r in subjects}
    for scan_id, role in roles.items():
        assignment[scan_id][1] = role
    params = {"base": base.name, "base_fold": fold, **params}
    rows = [(s, subject, 0, role) for s, (subject, role) in sorted(assignment.items())]
    try:
        stored = get_split(catalog, name)
    except SplitError:
        stored = None
    if stored is not None:
        same = sorted(
            (r["scan_id"], r["subject_id"], r["fold"], r["role"]) for r in stored.rows.to_pylist()
        )
        if stored.cohort_id == cohort_id and stored.params == params and same == rows:
            return stored
        raise SplitError(f"split {name!r} already exists with other content; choose another name")
    return _store(catalog, name, cohort_id, "derived", params, base.seed, rows)


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
