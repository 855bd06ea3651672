"""TotalSegmentator: one folder per subject, one mask file per class.

``sNNNN/ct.nii.gz`` (or ``mri.nii.gz``, the MR release) + ``sNNNN/segmentations/<class>.nii.gz``
combined in the v2 (or total_mr) index order; ``meta.csv`` (``;``) gives age, gender,
institute (the center), manufacturer, scanner model and split.
"""

from __future__ import annotations

import re
from pathlib import Path

from xds.ingest.datasets.base import Case, _files


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name)):
        mr = (folder / "mri.nii.gz").exists()
        image = folder / ("mri.nii.gz" if mr else "ct.nii.gz")
        if not image.exists():
            continue
        masks = tuple(
            (p.name[: -len(".nii.gz")], p.relative_to(root).as_posix())
            for p in _files(folder / "segmentations", "*.nii.gz")
        )
        cases.append(
            Case(
                key=folder.name,
                image=image.relative_to(root).as_posix(),
                masks=masks,
                label_map="totalsegmentator_mr" if mr else "totalsegmentator",
                modality="MR" if mr else "CT",
                sequence="UNKNOWN" if mr else "CT",
            )
        )
    return cases
