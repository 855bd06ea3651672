"""What a cohort's split resolves to: each scan's role, best label and class lookup table.

:func:`plan_export` turns (cohort, split, fold, classes) into :class:`ExportCase` records: the
scan's role, its image and best source label in the catalog, the lookup table that maps the
label's indices to the exported classes (:mod:`xds.labels.mapping`), the classes its label
map annotates, and the metadata columns stratified evaluation needs. Every exporter, the
trainers and the pseudo-label teachers read cases from here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from xds.catalog import Catalog, get_cohort
from xds.catalog.cohorts import Cohort, cohort_scans
from xds.labels.harmonization import resolve_class_set
from xds.labels.mapping import IGNORE, choose_classes, class_table
from xds.labels.selection import REFERENCE_ORIGINS, best_labels, label_maps
from xds.schemas.errors import ExportError
from xds.splits.store import Split, get_split

META_COLUMNS = (
    "subject_id",
    "dataset",
    "center",
    "sequence",
    "modality",
    "vendor",
    "scanner_model",
    "field_strength",
    "sex",
    "age",
    "age_bin",
)
"""scan_view columns every export carries per case, for stratified evaluation downstream."""


ROLE_ORDER = ("train", "val", "test", "unlabeled", "all")
"""Roles in the order exports list them (``all``: every scan, when no split is given)."""


LABELLED_ROLES = ("train", "val")
"""Roles whose scans must have a label (a test scan may lack one; unlabeled ones have none)."""


@dataclass(frozen=True)
class ExportCase:
    """One scan of an export."""

    scan_id: str
    role: str
    image: str  # absolute path of the image in the catalog
    label: str | None  # absolute path of its best source label, None when it has none
    label_id: str | None
    lut: tuple[int, ...] | None  # source index -> exported index
    annotated: tuple[str, ...]  # exported classes the label map annotates
    meta: dict = field(hash=False)  # META_COLUMNS
    fold: int | None = None  # k-fold splits: the fold whose validation set holds the case
    ready: bool = False  # written by xds harmonize in the exported classes: use as it is
    origin: str | None = None  # the label's origin: manual, revised, pseudo, synthetic...

    @property
    def remap(self) -> tuple[int, ...] | None:
        """The lookup table a file export applies to the label (None: link it as it is)."""
        return None if self.ready else self.lut


@dataclass
class ExportPlan:
    """A cohort's split resolved into cases, with the classes they are exported as."""

    cohort: Cohort
    split: Split | None
    fold: int
    classes: list[str]
    cases: list[ExportCase]

    @property
    def labels(self) -> dict[int, str]:
        """Exported index -> class name, background included."""
        return {0: "background", **{i + 1: c for i, c in enumerate(self.classes)}}

    @property
    def modalities(self) -> list[str]:
        """Modalities of the exported scans."""
        return sorted({c.meta["modality"] for c in self.cases if c.meta["modality"]})

    def by_role(self) -> dict[str, list[ExportCase]]:
        """Role -> cases (roles in :data:`ROLE_ORDER`, cases by scan id)."""
        out: dict[str, list[ExportCase]] = {}
        for case in self.cases:
            out.setdefault(case.role, []).append(case)
        return out

    def provenance(self) -> dict:
        """Where the export came from: cohort, catalog version, split, fold."""
        from importlib.metadata import version

        out = {
            "cohort": self.cohort.name,
            "cohort_id": self.cohort.cohort_id,
            "where": self.cohort.where_sql,
            "catalog_version": self.cohort.catalog_version,
            "xds_version": version("xds-toolkit"),
        }
        if self.split is not None:
            out |= {
                "split": self.split.name,
                "split_id": self.split.split_id,
                "strategy": self.split.strategy,
                "seed": self.split.seed,
                "fold": self.fold,
            }
        return out


def plan_export(
    catalog: Catalog,
    cohort: str,
    *,
    split: str | None,
    fold: int = 0,
    classes: list[str] | None = None,
    partial: bool = False,
    roles: tuple[str, ...] | None = None,
    class_set: str | None = None,
) -> ExportPlan:
    """Resolve a cohort's split into export cases.

    Args:
        catalog: the catalog.
        cohort: cohort name.
        split: split name; None exports every scan of the cohort with role ``all``.
        fold: which fold of the split.
        classes: classes to export, in this order (label 1, 2, ...). Default: the classes
            every label map names (every class any map names, with ``partial``), in the
            order of the label map most cases use, so a cohort with one label map keeps
            its indices.
        partial: allow classes that some label maps do not annotate. Each case then lists
            the classes its map annotates (``annotated``); a trainer must not read the
            others as background there. Without it, such a class is an error.
        roles: keep only these roles (default: all).
        class_set: use the labels ``xds harmonize`` wrote for this class set (a named set
            or comma-separated classes, as given to harmonize) instead of remapping the
            source labels here: the classes are the set's, merged through the vocabulary
            (kidney = left + right), and the files are linked as they are.

    Raises:
        ExportError: the split belongs to another cohort, the fold does not exist, a
            train/val scan has no label (or none harmonized to ``class_set``), or a class
            is not labelled everywhere.
    """
    if class_set is not None and classes is not None:
        raise ExportError("give --classes or --class-set, not both")
    found = get_cohort(catalog, cohort)
    the_split = get_split(catalog, split) if split is not None else None
    if the_split is None:
        assignment = {"all": list(found.scan_ids)}
    else:
        if the_split.cohort_id != found.cohort_id:
            raise ExportError(f"split {split!r} belongs to another cohort than {cohort!r}")
        folds = sorted({f["fold"] for f in the_split.params.get("folds", [{"fold": 0}])})
        if fold not in folds:
            raise ExportError(f"split {split!r} has no fold {fold}; its folds are {folds}")
        assignment = the_split.roles(fold)
    val_fold = _val_folds(the_split) if the_split is not None else {}

    scans = {r["scan_id"]: r for r in cohort_scans(catalog, found).to_pylist()}
    wanted = [s for ids in assignment.values() for s in ids]
    set_name = resolve_class_set(class_set)[0] if class_set is not None else None
    labels = best_labels(catalog, wanted, derived=set_name is not None, class_set=set_name)
    # a test scan is scored against a human (or generator's) label, never a pseudo-label
    tested = assignment.get("test", [])
    reference = best_labels(catalog, tested, derived=set_name is not None, class_set=set_name,
                            origins=REFERENCE_ORIGINS)  # fmt: skip
    for scan_id in tested:
        labels.pop(scan_id, None)
        if scan_id in reference:
            labels[scan_id] = reference[scan_id]
    pinned = _pinned_labels(catalog, the_split)
    if pinned and set_name is not None:
        raise ExportError(f"split {split!r} pins pseudo-labels, which are not harmonized; "
                          "export it with --classes instead of --class-set")  # fmt: skip
    labels.update({s: row for s, row in pinned.items() if s not in tested})
    unlabeled = [s for r in LABELLED_ROLES for s in assignment.get(r, []) if s not in labels]
    if unlabeled:
        raise ExportError(
            f"{len(unlabeled)} train/val scan(s) have no label (e.g. {unlabeled[0]}); "
            + (
                f"run `xds harmonize {cohort} --classes {class_set}` first"
                if set_name
                else "build the cohort with --where 'has_label'"
            )
        )
    # The classes come from the whole split, so every role of it (and every export of one
    # role, as cohort_subjects(role=...) makes) numbers them the same way.
    use = Counter(labels[s]["label_map"] for s in wanted if s in labels)
    maps = label_maps(catalog, set(use))
    if set_name is None:
        classes = choose_classes(maps, classes, partial=partial, usage=use)
        tables = {m: class_table(mapping, classes) for m, mapping in maps.items()}
        luts = {m: lut for m, (lut, _) in tables.items()}
        annotated = {m: has for m, (_, has) in tables.items()}
        annotated_of = {s: annotated[row["label_map"]] for s, row in labels.items()}
    else:
        classes, luts, annotated_of = _harmonized(maps, labels, partial, set_name)
    if roles is not None:
        assignment = {r: ids for r, ids in assignment.items() if r in roles}

    cases = []
    for role, ids in assignment.items():
        for scan_id in ids:
            scan, label = scans[scan_id], labels.get(scan_id)
            label_map = label["label_map"] if label else None
            cases.append(
                ExportCase(
                    scan_id=scan_id,
                    role=role,
                    image=str(catalog.resolve(scan["image_uri"])),
                    label=str(catalog.resolve(label["uri"])) if label else None,
                    label_id=label["label_id"] if label else None,
                    lut=luts[label_map] if label else None,
                    annotated=annotated_of[scan_id] if label else (),
                    meta={c: scan.get(c) for c in META_COLUMNS},
                    fold=val_fold.get(scan_id),
                    ready=set_name is not None,
                    origin=label.get("origin") if label else None,
                )
            )
    cases.sort(key=lambda c: (ROLE_ORDER.index(c.role), c.scan_id))
    return ExportPlan(found, the_split, fold, classes, cases)


def _pinned_labels(catalog: Catalog, split: Split | None) -> dict[str, dict]:
    """The labels a split names for some of its scans (``params["labels"]``: scan -> label).

    A pseudo-label round's student split pins that round's labels, so re-training it later
    reads the same labels even after newer rounds added others.
    """
    pins = (split.params.get("labels") or {}) if split is not None else {}
    if not pins:
        return {}
    rows = catalog.read("labels", "list_contains(?, label_id)", [sorted(set(pins.values()))])
    found = {r["label_id"]: r for r in rows.to_pylist()}
    missing = sorted(set(pins.values()) - set(found))
    if missing:
        raise ExportError(f"split {split.name!r} pins label {missing[0]}, which the catalog lacks")
    return {scan_id: found[label_id] for scan_id, label_id in pins.items()}


def _harmonized(maps, labels, partial, set_name):
    """Classes, lookup tables (identity) and annotated classes of harmonized labels."""
    first = maps[min(maps)]
    classes = [n for i, n in sorted(first.items()) if 0 < i < IGNORE]
    luts = {m: tuple(range(max(mapping) + 1)) for m, mapping in maps.items()}
    annotated_of = {
        s: tuple(c for c in classes if c in (row["classes_annotated"] or ()))
        for s, row in labels.items()
    }
    lacking = Counter(c for a in annotated_of.values() for c in classes if c not in a)
    if lacking and not partial:
        raise ExportError(
            f"class(es) of {set_name} not annotated in every label: "
            + ", ".join(f"{c} ({n} scans)" for c, n in sorted(lacking.items()))
            + "; pass --partial and mask them per case"
        )
    return classes, luts, annotated_of


def _val_folds(split: Split) -> dict[str, int]:
    """k-fold splits: scan id -> the fold whose validation set holds it."""
    if split.strategy != "kfold":
        return {}
    rows = split.rows.to_pylist()
    return {r["scan_id"]: r["fold"] for r in rows if r["role"] == "val"}
