"""CrossPan: ``<center>/<T1W|T2W|OOP>/{images,labels}/<case>.nii.gz``."""

from __future__ import annotations

from pathlib import Path

from xds.ingest.datasets.base import Case, _files
from xds.ingest.sequences import sequence_from_name


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    cases = []
    for image in _files(root, "*.nii*"):
        parts = image.relative_to(root).parts
        if len(parts) != 4 or parts[2] != "images":
            continue
        center, sequence_folder = parts[0], parts[1]
        label = root / center / sequence_folder / "labels" / image.name
        cases.append(
            Case(
                key=image.name.split(".")[0],
                image=image.relative_to(root).as_posix(),
                label=label.relative_to(root).as_posix() if label.exists() else None,
                label_map="crosspan",
                modality="MR",
                sequence=sequence_from_name(sequence_folder)[0],
                center=center,
            )
        )
    return cases
