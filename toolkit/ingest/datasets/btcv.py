"""BTCV: ``{Training,Testing}/img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz``."""

from __future__ import annotations

import re
from pathlib import Path

from xds.ingest.datasets.base import _SPLITS, Case, _files


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    cases = []
    for image in _files(root, "img*.nii.gz"):
        if image.parent.name != "img":
            continue
        number = re.search(r"img(\d+)", image.name).group(1)
        label = image.parent.parent / "label" / f"label{number}.nii.gz"
        cases.append(
            Case(
                key=f"btcv_{number}",
                image=image.relative_to(root).as_posix(),
                label=label.relative_to(root).as_posix() if label.exists() else None,
                label_map="btcv",
                split=_SPLITS.get(image.parent.parent.name.lower()),
            )
        )
    return cases
