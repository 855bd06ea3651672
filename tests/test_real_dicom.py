"""Real DICOM from other projects (pydicom, pydicom-data, nibabel, heudiconv): every series
ends as the hand-checked truth table says (tests/data/real_dicom_truth.csv)."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.real_dicom import evaluate, package_dir, read_truth
from xds.ingest.classify import classify
from xds.ingest.dicom import projection_reason


@pytest.mark.slow
def test_truth_table_holds_on_real_files(tmp_path):
    truth = read_truth()
    missing = {r["package"] for r in truth if package_dir(r["package"]) is None}
    assert not missing, f"the dev extra installs these: {missing}"
    rows = evaluate(truth, tmp_path)
    wrong = [f"{r['path']}: expected {r['expected']}, got {r['got']}" for r in rows if not r["ok"]]
    assert not wrong, "\n".join(wrong)
    vendors = Counter(r["vendor"] for r in rows)
    assert vendors["Siemens"] >= 10  # a real mix, not one vendor
    assert vendors["Philips"] >= 4
    assert {r["expected"].split(":")[0] for r in rows} >= {"T1W", "T2W", "DWI", "quarantine"}


def test_rules_the_real_files_taught():
    # a Siemens field map's phase image is no anatomical T1W, whatever its short TR says
    phase = {"modality": "MR", "image_type": ["ORIGINAL", "PRIMARY", "P", "ND"],
             "scanning_sequence": ["GR"], "te": 7.38, "tr": 9.7}  # fmt: skip
    assert classify(phase).sequence == "UNKNOWN"
    assert classify({**phase, "image_type": ["ORIGINAL", "PRIMARY", "M", "ND"]}).sequence == "T1W"
    # an inversion-prepared GRE at 3 T whose TE happens to be an in-phase echo is T1W
    ir_gre = {"modality": "MR", "scanning_sequence": ["GR", "IR"], "te": 2.5, "tr": 50,
              "ti": 900, "field_strength": 3.0}  # fmt: skip
    assert classify(ir_gre).sequence == "T1W"
    assert classify({**ir_gre, "scanning_sequence": ["GR"]}).sequence == "IP"
    # enhanced MR names its contrast; opposed-phase ImageType still wins over it
    assert classify({"modality": "MR", "acquisition_contrast": "T2"}).sequence == "T2W"
    oop = {"modality": "MR", "acquisition_contrast": "T1", "image_type": ["OPP_PHASE"]}
    assert classify(oop).sequence == "OOP"
    mip = {"image_type": ["DERIVED", "SECONDARY", "PROJECTION IMAGE"]}
    assert projection_reason(mip)
    assert not projection_reason({"image_type": ["ORIGINAL"]})


@pytest.mark.slow
def test_near_duplicate_threshold_on_real_volumes(tmp_path):
    """Disguised copies of real MR volumes are found, different people are not confused."""
    from benchmarks.near_duplicates import measure, real_volumes
    from xds.io.fingerprint import THRESHOLD

    volumes = real_volumes(tmp_path)
    assert len(volumes) >= 6
    m = measure(volumes, THRESHOLD)
    assert m["copies"] >= 35  # copies large enough to compare
    assert m["missed"] == []
    assert m["alarms"] == []
    assert m["compared"] >= 500  # different subjects overlap enough to be compared
