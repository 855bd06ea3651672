import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xds.catalog import build_cohort
from xds.export import export_nnunet
from xds.schemas import ExportError
from xds.splits.store import split_cohort

nnunet_verify = pytest.importorskip(
    "nnunetv2.experiment_planning.verify_dataset_integrity",
    reason="nnunetv2 comes with the [train] extra",
)


@pytest.fixture
def exported(catalog, tmp_path):
    build_cohort(catalog, "has_label", "all")
    split = split_cohort(catalog, "all", seed=0)
    result = export_nnunet(catalog, "all", split=split.name, dataset_id=501, out=tmp_path / "raw")
    return catalog, split, result


def test_export_passes_nnunet_verify(exported):
    _, _, result = exported
    nnunet_verify.verify_dataset_integrity(result.path, num_processes=1)


def test_verify_catches_a_broken_export(exported):
    _, _, result = exported
    label = next((Path(result.path) / "labelsTr").iterdir())
    img = nib.load(label)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7  # a label value dataset.json does not declare
    label.unlink()  # it may be a read-only hard link to the catalog's label
    nib.save(nib.Nifti1Image(data, img.affine), label)
    with pytest.raises(Exception):  # noqa: B017, PT011 - nnU-Net raises RuntimeError/AssertionError
        nnunet_verify.verify_dataset_integrity(result.path, num_processes=1)


def test_layout_labels_and_folds(exported, tmp_path):
    catalog, split, result = exported
    root = Path(result.path)
    assert root.name == "Dataset501_All"
    dataset = json.loads((root / "dataset.json").read_text())
    # Only the pancreas is labelled by every center, so it is the one class, index 1.
    assert dataset["labels"] == {"background": 0, "pancreas": 1}
    roles = split.roles()
    assert dataset["numTraining"] == len(roles["train"]) + len(roles["val"])
    folds = json.loads((root / "splits_final.json").read_text())
    assert folds == [{"train": roles["train"], "val": roles["val"]}]
    assert sorted(p.name[:-12] for p in (root / "imagesTs").iterdir()) == roles["test"]
    # Labels were remapped: a center whose pancreas is index 5 now says 1.
    for path in (root / "labelsTr").iterdir():
        assert set(np.unique(np.asanyarray(nib.load(path).dataobj))) <= {0, 1}
    with open(root / "xds_cases.csv") as fh:
        cases = list(csv.DictReader(fh))
    assert {c["case"] for c in cases} == set(roles["train"] + roles["val"] + roles["test"])
    # The pancreas voxels survive the remap.
    case = cases[0]
    label_uri = catalog.read("labels", "label_id = ?", (case["label_id"],)).to_pylist()[0]["uri"]
    source = np.asanyarray(nib.load(catalog.resolve(label_uri)).dataobj)
    folder = "labelsTr" if case["role"] in ("train", "val") else "labelsTs"
    out = np.asanyarray(nib.load(root / folder / f"{case['case']}.nii.gz").dataobj)
    assert out.sum() > 0
    assert out.shape == source.shape


def test_export_refuses_bad_requests(exported, tmp_path):
    catalog, split, result = exported
    with pytest.raises(ExportError, match="not empty"):
        export_nnunet(catalog, "all", split=split.name, dataset_id=501, out=tmp_path / "raw")
    with pytest.raises(ExportError, match="not labelled in every label map"):
        export_nnunet(
            catalog,
            "all",
            split=split.name,
            dataset_id=502,
            out=tmp_path / "raw",
            classes=["liver"],
        )
    with pytest.raises(ExportError, match="1-999"):
        export_nnunet(catalog, "all", split=split.name, dataset_id=1000, out=tmp_path / "raw")
    again = export_nnunet(
        catalog, "all", split=split.name, dataset_id=501, out=tmp_path / "raw", force=True
    )
    assert again.path == result.path


def test_kfold_split_exports_every_fold(catalog, tmp_path):
    import json

    from xds.catalog import build_cohort
    from xds.export import export_nnunet
    from xds.splits.store import make_split

    build_cohort(catalog, "has_label", "kf")
    split = make_split(catalog, "kf", "kfold", k=3, test_share=0.2, stratify=("center",))
    result = export_nnunet(catalog, "kf", split=split.name, dataset_id=42, out=tmp_path)
    folds = json.loads((tmp_path / result.path / "splits_final.json").read_text())
    assert len(folds) == 3
    pool = set(folds[0]["train"]) | set(folds[0]["val"])
    for f, fold in enumerate(folds):
        assert set(fold["train"]) | set(fold["val"]) == pool
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["val"]) == set(split.roles(f)["val"])
    assert set().union(*(set(f["val"]) for f in folds)) == pool
