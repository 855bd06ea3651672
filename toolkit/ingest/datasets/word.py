"""WORD: ``images{Tr,Val,Ts}/word_NNNN.nii.gz`` + ``labels{Tr,Val,Ts}``."""

from __future__ import annotations

from pathlib import Path

from xds.ingest.datasets.base import Case, _paired


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    return _paired(root, "word_*.nii.gz", "word")
