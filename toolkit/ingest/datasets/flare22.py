"""FLARE22: ``*/FLARE22_Tr_NNNN_0000.nii.gz`` + ``labels*/FLARE22_Tr_NNNN.nii.gz``."""

from __future__ import annotations

from pathlib import Path

from xds.ingest.datasets.base import Case, _files


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    cases = []
    for image in _files(root, "*_0000.nii.gz"):
        case = image.name[: -len("_0000.nii.gz")]
        labels = [p for p in _files(root, f"{case}.nii.gz") if "label" in p.parent.name.lower()]
        cases.append(
            Case(
                key=case,
                image=image.relative_to(root).as_posix(),
                label=labels[0].relative_to(root).as_posix() if labels else None,
                label_map="flare22",
                split="train" if "_Tr_" in case else "val" if "Tuning" in str(image) else "test",
            )
        )
    return cases
