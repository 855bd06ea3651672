"""MSD Task07 Pancreas: ``images{Tr,Ts}/pancreas_NNN.nii.gz`` + ``labelsTr``.

macOS ``._`` files are skipped; ``dataset.json`` is checked against the label map.
"""

from __future__ import annotations

import json
from pathlib import Path

from xds.ingest.datasets.base import Case, _files, _paired
from xds.schemas.errors import IngestError
from xds.schemas.vocabulary import builtin_label_map


def cases(root: Path) -> list[Case]:
    """The dataset's images under ``root``, with what its layout says about each."""
    for doc_path in _files(root, "dataset.json"):
        doc = json.loads(doc_path.read_text())
        expected = {str(i): n for i, n in builtin_label_map("msd_pancreas").spelled.items()}
        given = {k: v for k, v in doc.get("labels", {}).items() if k != "0"}
        if given and given != expected:
            raise IngestError(f"{doc_path}: labels {given} are not Task07 Pancreas's {expected}")
    return _paired(root, "pancreas_*.nii.gz", "msd_pancreas")
