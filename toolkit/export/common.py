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
import gzip
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
from xds.harmonize import IGNORE, resolve_class_set
from xds.labels import REFERENCE_ORIGINS, best_labels, label_maps
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


@dataclass(kw_only=True)
class ExportResult:
    """Where an export went and what it holds (each exporter adds its own fields)."""

    path: str
    classes: list[str]
    files: dict[str, int] = field(default_factory=dict)  # linked/copied/converted -> count

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


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
        index = {c: i + 1 for i, c in enumerate(classes)}
        luts = {m: _lut(mapping, index) for m, mapping in maps.items()}
        annotated = {
            m: tuple(c for c in classes if c in mapping.values()) for m, mapping in maps.items()
        }
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


def choose_classes(
    maps: dict[str, dict[int, str]],
    wanted: list[str] | None,
    *,
    partial: bool = False,
    usage: Counter | None = None,
) -> list[str]:
    """The exported classes: ``wanted`` checked against the label maps, or the default."""
    named = [{n for i, n in m.items() if i != 0 and n != "ignore"} for m in maps.values()]
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
    """Source index -> exported index; ``ignore`` voxels stay :data:`IGNORE`."""
    lut = [0] * (max(mapping) + 1)
    for i, name in mapping.items():
        lut[i] = IGNORE if name == "ignore" else index.get(name, 0)
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

    Refuses a non-empty target unless ``force`` (which clears it first), or unless the
    target is the partial output of an export that was killed before it finished: a
    marker beside each target (``.<name>.xds-incomplete``, holding the writer's process
    id) says so until the export completes, and a re-run replaces such a target without
    ``--force``. A target whose writer still runs is refused.

    Raises:
        ExportError: a target exists and is not empty, without ``force``, or another
            export is writing it now.
    """
    from xds.imageio import process_alive

    markers = [_marker(path) for path in paths]
    for path, marker in zip(paths, markers, strict=True):
        writer = _writer_of(marker)
        if writer and writer != os.getpid() and process_alive(writer):
            raise ExportError(f"{path} is being written by another export (process {writer})")
        busy = path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))
        if busy and not force and writer is None:
            raise ExportError(f"{path} exists and is not empty (use --force to replace it)")
    for path, marker in zip(paths, markers, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{os.getpid()}\n")
        _remove(path)
    try:
        yield
    except BaseException:
        for path in paths:
            _remove(path)
        for marker in markers:
            marker.unlink(missing_ok=True)
        raise
    for marker in markers:
        marker.unlink(missing_ok=True)


def _marker(path: Path) -> Path:
    return path.parent / f".{path.name}.xds-incomplete"


def _writer_of(marker: Path) -> int | None:
    """The process id a marker names, or None when there is no marker."""
    try:
        text = marker.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else 0


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
    """Place the files; return counts of what was done (linked, copied, converted...).

    Links and copies run here, one after the other (they cost a system call or a disk-bound
    copy); labels that need remapping go to ``workers`` processes with a progress bar, and
    to this process when there are too few to pay for a pool.
    """
    for parent in {Path(j.dst).parent for j in jobs}:
        parent.mkdir(parents=True, exist_ok=True)
    done, converting = Counter(), []
    for job in jobs:
        if job.lut is not None and not _identity_label(job.src, job.lut):
            converting.append(job)
        else:
            done[_place(job)] += 1
    workers = workers if len(converting) >= MIN_POOL_JOBS else 1
    progress_map(_convert, converting, jobs=workers, description=description)
    done["converted"] += len(converting)
    return dict(sorted((k, n) for k, n in done.items() if n))


MIN_POOL_JOBS = 16
"""Fewer conversions than this run in this process: starting workers costs about a second."""


def _convert(job: FileJob) -> None:
    Path(job.dst).unlink(missing_ok=True)
    convert_label(job.src, job.dst, job.lut)


def _place(job: FileJob) -> str:
    """Link or copy one file that needs no conversion; say which."""
    dst = Path(job.dst)
    dst.unlink(missing_ok=True)
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
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:  # the 348-byte header only (nib.load sniffs much more)
        header = nib.Nifti1Header.from_fileobj(fh, check=False)
    if header["sizeof_hdr"] != 348:  # NIfTI-2
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
