"""A cohort as TorchIO subjects: ``xds.cohort_subjects(catalog, cohort, split=..., role=...)``.

Nothing is written: each :class:`torchio.Subject` reads its image and label from the catalog
lazily (when a transform, a ``SubjectsDataset`` or a ``Queue`` asks), through a picklable
nibabel reader that maps the label's indices to the exported classes on the fly, so
``DataLoader`` workers can load them. Each subject carries the scan's metadata (``scan_id``,
``role``, ``center``, ``sequence``, ``sex``, ``age``...) as attributes, and ``annotated``: a
bool tensor over [background, *classes] that says which classes its label map annotates,
for losses that must not read an unannotated organ as background.

torchio is imported when the function runs, so ``import xds`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog
from xds.export.files import remap_label
from xds.io.optional import optional
from xds.labels.cases import plan_export
from xds.schemas.errors import ExportError

_MISSING_TEXT = "unknown"
_NUMBERS = ("age", "field_strength")


@dataclass(frozen=True)
class NiftiReader:
    """TorchIO reader: a NIfTI file as (channels-first array, affine), labels remapped by ``lut``.

    nibabel reads both images and labels, so their affines agree exactly with the catalog's.
    """

    lut: tuple[int, ...] | None = None  # None: an intensity image, read as float32

    def __call__(self, path) -> tuple[np.ndarray, np.ndarray]:
        """Read ``path``."""
        if self.lut is None:
            image = nib.load(str(path))
            data = image.get_fdata(dtype=np.float32)
        else:
            image = remap_label(str(path), self.lut)
            data = np.asanyarray(image.dataobj).astype(np.int16)
        data = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
        return np.ascontiguousarray(data), image.affine


def cohort_subjects(
    catalog: Catalog | str | Path,
    cohort: str,
    *,
    split: str | None = None,
    role: str | None = None,
    fold: int = 0,
    classes: list[str] | None = None,
    class_set: str | None = None,
    partial: bool = False,
) -> list:
    """The scans of a cohort (one role of a split, or all of them) as ``torchio.Subject``s.

    Args:
        catalog: a catalog or its path.
        cohort: cohort name.
        split: split name; None gives every scan of the cohort (``role`` must be None).
        role: train, val, test or unlabeled; None gives every role of the split.
        fold: which fold of the split.
        classes: classes of the ``label`` images (see :func:`xds.labels.plan_export`);
            the subjects' ``classes`` attribute names them.
        class_set: read the labels ``xds harmonize`` wrote for this class set, as they
            are (see :func:`xds.labels.plan_export`).
        partial: allow classes some label maps do not annotate (see ``annotated``).

    Returns:
        Subjects sorted by role and scan id, each with ``image`` (ScalarImage), ``label``
        (LabelMap, when the scan has one) and the metadata attributes.

    Raises:
        ExportError: as :func:`xds.labels.plan_export`, or a role without a split.
    """
    torch = optional("torch", "cohort_subjects", "train")
    tio = optional("torchio", "cohort_subjects", "train")

    if role is not None and split is None:
        raise ExportError(f"role {role!r} needs a split (--split)")
    if not isinstance(catalog, Catalog):
        catalog = Catalog.open(catalog)
    roles = (role,) if role is not None else None
    plan = plan_export(
        catalog,
        cohort,
        split=split,
        fold=fold,
        classes=classes,
        class_set=class_set,
        partial=partial,
        roles=roles,
    )
    names = list(plan.labels.values())
    subjects = []
    for case in plan.cases:
        images = {"image": tio.ScalarImage(case.image, reader=NiftiReader())}
        if case.label is not None:
            images["label"] = tio.LabelMap(case.label, reader=NiftiReader(case.lut))
        # default_collate takes no None: text -> "unknown", numbers -> NaN
        meta = {k: _MISSING_TEXT if v is None else v for k, v in case.meta.items()}
        meta |= {k: float("nan") if case.meta[k] is None else case.meta[k] for k in _NUMBERS}
        annotated = torch.tensor([i == 0 or n in case.annotated for i, n in enumerate(names)])
        subjects.append(
            tio.Subject(
                **images,
                scan_id=case.scan_id,
                role=case.role,
                fold=-1 if case.fold is None else case.fold,
                has_label=case.label is not None,
                label_origin=case.origin or _MISSING_TEXT,
                annotated=annotated if case.label is not None else torch.zeros_like(annotated),
                classes=names,
                **meta,
            )
        )
    return subjects
