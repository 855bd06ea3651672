"""AMOS: CT and MR cases, their official split, and the metadata sheet.

``images{Tr,Va,Ts}/amos_NNNN.nii.gz`` + ``labels{Tr,Va}``; cases up to 0500 are CT, 0501-0600
MR; ``labeled_data_meta_0000_0599.csv`` gives sex, age (``045Y``) and scanner model.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from xds.ingest.datasets.base import Case, _paired


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    cases = []
    for case in _paired(root, "amos_*.nii.gz", "amos"):
        number = int(re.search(r"amos_(\d+)", case.key).group(1))
        mr = number > 500  # AMOS: cases up to 0500 are CT, 0501-0600 MR
        cases.append(
            replace(
                case,
                key=f"amos_{number:04d}",
                modality="MR" if mr else "CT",
                sequence="UNKNOWN" if mr else "CT",  # AMOS does not say which MR sequence
            )
        )
    return cases
