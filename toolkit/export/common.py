"""What every export shares: which scans go where, with which label, and placing the files.

:func:`plan_export` turns (cohort, split, fold, classes) into :class:`ExportCase` records: the
scan's role, its image and best source label in the catalog, the lookup table that maps the
label's indices to the exported classes, the classes its label map annotates, and the
metadata columns stratified evaluation needs. Each exporter (nnU-Net, MONAI datalist,
Hugging Face, TorchIO) only decides where the files go and what index file describes them.

:func:`place_files` writes the files: a label whose lookup table is the identity and whose
voxels are stored as integers needs no conversion, so it is hard-linked like the images
(symlinked across file systems, copied with ``copy=True``); the others are remapped to uint8
in worker processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, get_cohort
from xds.catalog.cohorts import Cohort, cohort_scans
from xds.executors import progress_map
from xds.labels import best_labels, label_maps
from xds.schemas.errors import ExportError
from xds.splits import Split, get_split

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

    def counts(self, *columns: str) -> dict[str, int]:
        """Cases per role and per value of ``columns`` (e.g. center, sequence)."""
        keys = Counter(
            "/".join([c.role, *(str(c.meta.get(col)) for col in columns)]) for c in self.cases
        )
        return dict(sorted(keys.items()))


def plan_export(
    catalog: Catalog,
    cohort: str,
    *,
    split: str | None,
    fold: int = 0,
    classes: list[str] | None = None,
    partial: bool = False,
    roles: tuple[str, ...] | None = None,
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

    Raises:
        ExportError: the split belongs to another cohort, the fold does not exist, a
            train/val scan has no label, or a class is not labelled everywhere.
    """
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
    labels = best_labels(catalog, wanted, derived=False)
    unlabeled = [s for r in LABELLED_ROLES for s in assignment.get(r, []) if s not in labels]
    if unlabeled:
        raise ExportError(
            f"{len(unlabeled)} train/val scan(s) have no label (e.g. {unlabeled[0]}); "
            "build the cohort with --where 'has_label'"
        )
    # The classes come from the whole split, so every role of it (and every export of one
    # role, as cohort_subjects(role=...) makes) numbers them the same way.
    use = Counter(labels[s]["label_map"] for s in wanted if s in labels)
    maps = label_maps(catalog, set(use))
    classes = choose_classes(maps, classes, partial=partial, usage=use)
    if roles is not None:
        assignment = {r: ids for r, ids in assignment.items() if r in roles}
    index = {c: i + 1 for i, c in enumerate(classes)}
    luts = {m: _lut(mapping, index) for m, mapping in maps.items()}
    annotated = {
        m: tuple(c for c in classes if c in mapping.values()) for m, mapping in maps.items()
    }

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
                    annotated=annotated[label_map] if label else (),
                    meta={c: scan.get(c) for c in META_COLUMNS},
                    fold=val_fold.get(scan_id),
                )
            )
    cases.sort(key=lambda c: (ROLE_ORDER.index(c.role), c.scan_id))
    return ExportPlan(found, the_split, fold, classes, cases)


def choose_classes(
    maps: dict[str, dict[int, str]],
    wanted: list[str] | None,
    *,
    partial: bool = False,
    usage: Counter | None = None,
) -> list[str]:
    """The exported classes: ``wanted`` checked against the label maps, or the default."""
    named = [{n for i, n in m.items() if i != 0} for m in maps.values()]
    common = set.intersection(*named) if named else set()
    anywhere = set.union(*named) if named else set()
    if wanted is None:
        pool = anywhere if partial else common
        if not pool:
            raise ExportError("the cohort's label maps share no class; pass --classes")
        usage = usage or Counter(dict.fromkeys(maps, 1))
        main = maps[max(maps, key=lambda m: (usage[m], m))]
        first = [n for _, n in sorted(main.items()) if n in pool]
        return first + sorted(pool - set(first))
    lacking = [c for c in wanted if c not in (anywhere if partial else common)]
    if lacking:
        where = "in any" if partial else "in every"
        hint = "" if partial else " (or pass --partial and mask them per case)"
        raise ExportError(
            f"class(es) {lacking} are not labelled {where} label map of the cohort; "
            f"classes labelled everywhere: {sorted(common)}{hint}"
        )
    if len(set(wanted)) != len(wanted):
        raise ExportError(f"--classes names a class twice: {wanted}")
    return list(wanted)


def _lut(mapping: dict[int, str], index: dict[str, int]) -> tuple[int, ...]:
    lut = [0] * (max(mapping) + 1)
    for i, name in mapping.items():
        lut[i] = index.get(name, 0)
    return tuple(lut)


def _val_folds(split: Split) -> dict[str, int]:
    """k-fold splits: scan id -> the fold whose validation set holds it."""
    if split.strategy != "kfold":
        return {}
    rows = split.rows.to_pylist()
    return {r["scan_id"]: r["fold"] for r in rows if r["role"] == "val"}


# -- the target and its files ------------------------------------------------------------------


@contextlib.contextmanager
def writing_target(*paths: Path, force: bool):
    """Write an export into ``paths``; a failure removes what was written, not half of it.

    Refuses a non-empty target unless ``force`` (which clears it first).

    Raises:
        ExportError: a target exists and is not empty, without ``force``.
    """
    for path in paths:
        busy = path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))
        if busy and not force:
            raise ExportError(f"{path} exists and is not empty (use --force to replace it)")
    for path in paths:
        _remove(path)
    try:
        yield
    except BaseException:
        for path in paths:
            _remove(path)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class FileJob:
    """Place one file: link (or copy) ``src`` to ``dst``, remapping labels through ``lut``."""

    src: str
    dst: str
    lut: tuple[int, ...] | None = None  # None: an image, placed as it is
    copy: bool = False


def place_files(jobs: list[FileJob], *, workers: int = 1, description: str = "export") -> dict:
    """Run the jobs in parallel with a progress bar; return counts of what each did."""
    for parent in {Path(j.dst).parent for j in jobs}:
        parent.mkdir(parents=True, exist_ok=True)
    done = progress_map(place_file, jobs, jobs=workers, description=description)
    return dict(sorted(Counter(done).items()))


def place_file(job: FileJob) -> str:
    """Place one file; return what was done: linked, symlinked, copied or converted."""
    dst = Path(job.dst)
    dst.unlink(missing_ok=True)
    if job.lut is not None and not _identity_label(job.src, job.lut):
        convert_label(job.src, job.dst, job.lut)
        return "converted"
    if job.copy:
        shutil.copyfile(job.src, dst)
        return "copied"
    try:
        os.link(job.src, dst)
        done = "linked"
    except OSError:  # another file system, or links not allowed there
        os.symlink(os.path.abspath(job.src), dst)
        done = "symlinked"
    # The export and the catalog now share one file: editing it in place would change the
    # catalog's content behind its hash. Take the write bits off (a tool that saves a new
    # file replaces the link and is unaffected; --copy gives independent files).
    mode = os.stat(job.src).st_mode
    os.chmod(job.src, mode & ~0o222)
    return done


def _identity_label(path: str, lut: tuple[int, ...]) -> bool:
    """The label can be used as it is: an identity lookup and integer voxels, unscaled."""
    if any(i != v for i, v in enumerate(lut)):
        return False
    header = nib.load(path).header
    slope, inter = header.get_slope_inter()
    return (
        np.issubdtype(header.get_data_dtype(), np.integer)
        and slope in (None, 1)
        and (inter in (None, 0))
    )


def remap_label(path: str, lut: tuple[int, ...]) -> nib.Nifti1Image:
    """A label map with its indices sent through ``lut``, as uint8, same grid and affine.

    Raises:
        ExportError: the label holds an index its label map does not declare.
    """
    label = nib.load(path)
    data = np.asanyarray(label.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    data = data.astype(np.int64, copy=False)
    if data.size and (data.min() < 0 or data.max() >= len(lut)):
        raise ExportError(
            f"{path}: label value {int(data.max())} is not in its label map "
            f"(indices 0-{len(lut) - 1})"
        )
    image = nib.Nifti1Image(
        np.asarray(lut, np.uint8)[data], label.affine, header=label.header.copy()
    )
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    return image


def convert_label(src: str, dst: str, lut: tuple[int, ...]) -> None:
    """Write ``src`` remapped through ``lut`` to ``dst`` (see :func:`remap_label`)."""
    nib.save(remap_label(src, lut), dst)
