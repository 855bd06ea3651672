"""Exports read by the tools people already use: MONAI datalists, HF datasets, TorchIO."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from xds.catalog import build_cohort
from xds.catalog.cohorts import cohort_scans, get_cohort
from xds.export import cohort_subjects, export_datalist, export_hf
from xds.labels.cases import plan_export
from xds.labels.selection import best_labels, label_maps
from xds.schemas import ExportError
from xds.splits.store import make_split, split_cohort

datasets = pytest.importorskip("datasets")
monai_data = pytest.importorskip("monai.data", reason="monai is a test-only dependency")
tio = pytest.importorskip("torchio", reason="torchio comes with the [train] extra")

META = ("subject_id", "center", "sequence", "sex", "age")


@pytest.fixture
def holdout(catalog):
    build_cohort(catalog, "has_label", "all")
    split = split_cohort(catalog, "all", seed=0)
    scans = {r["scan_id"]: r for r in cohort_scans(catalog, get_cohort(catalog, "all")).to_pylist()}
    return catalog, split, scans


def _voxels(path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _expected_label(catalog, scan_id, classes) -> np.ndarray:
    """The scan's source label with each class moved to its exported index, by hand."""
    label = best_labels(catalog, [scan_id], derived=False)[scan_id]
    mapping = label_maps(catalog, [label["label_map"]])[label["label_map"]]
    source = _voxels(catalog.resolve(label["uri"]))
    out = np.zeros(source.shape, np.uint8)
    for index, name in mapping.items():
        if name in classes:
            out[source == index] = classes.index(name) + 1
    return out


def _image(catalog, scans, scan_id) -> np.ndarray:
    return _voxels(catalog.resolve(scans[scan_id]["image_uri"]))


def test_datalist_loads_with_monai(holdout, tmp_path):
    catalog, split, scans = holdout
    out = tmp_path / "lists" / "pancreas.json"
    result = export_datalist(catalog, "all", split=split.name, out=out)
    roles = split.roles()
    keys = {"train": "training", "val": "validation", "test": "test"}
    for role, key in keys.items():
        entries = monai_data.load_decathlon_datalist(out, data_list_key=key)
        assert sorted(e["scan_id"] for e in entries) == roles[role]
        assert result.entries[key] == len(roles[role])
    header = json.loads(out.read_text())
    assert header["labels"] == {"0": "background", "1": "pancreas"}
    assert header["xds"]["catalog_version"] == get_cohort(catalog, "all").catalog_version
    assert header["xds"]["split_id"] == split.split_id

    entry = monai_data.load_decathlon_datalist(out, data_list_key="training")[0]
    assert Path(entry["image"]).is_absolute()  # resolved against the datalist's folder
    scan_id = entry["scan_id"]
    assert np.array_equal(_voxels(entry["image"]), _image(catalog, scans, scan_id))
    expected = _expected_label(catalog, scan_id, ["pancreas"])
    assert expected.any()
    assert np.array_equal(_voxels(entry["label"]), expected)
    for column in META:
        assert entry[column] == scans[scan_id][column]
    # images need no conversion: hard links to the catalog's files, not copies
    assert os.path.samefile(entry["image"], catalog.resolve(scans[scan_id]["image_uri"]))
    assert not os.stat(entry["image"]).st_mode & 0o222  # shared with the catalog: read-only
    assert result.files["converted"] > 0


def test_datalist_of_a_kfold_split_carries_folds(catalog, tmp_path):
    build_cohort(catalog, "has_label", "kf")
    split = make_split(catalog, "kf", "kfold", k=3, test_share=0.2, stratify=("center",))
    out = tmp_path / "kf.json"
    export_datalist(catalog, "kf", split=split.name, out=out, fold=1, copy=True)
    val = monai_data.load_decathlon_datalist(out, data_list_key="validation")
    assert sorted(e["scan_id"] for e in val) == split.roles(1)["val"]
    assert {e["fold"] for e in val} == {1}
    train = monai_data.load_decathlon_datalist(out, data_list_key="training")
    assert {e["fold"] for e in train} == {0, 2}
    assert not os.path.samefile(train[0]["image"], val[0]["image"])
    first = train[0]["image"]
    assert os.stat(first).st_nlink == 1  # --copy: a copy, not a link
    with pytest.raises(ExportError, match="no fold 3"):
        export_datalist(catalog, "kf", split=split.name, out=tmp_path / "x.json", fold=3)


@pytest.mark.parametrize("embed", [False, True], ids=["paths", "embedded"])
def test_hf_export_loads_with_datasets(holdout, tmp_path, embed):
    catalog, split, scans = holdout
    out = tmp_path / "hf"
    result = export_hf(catalog, "all", split=split.name, out=out, embed=embed, jobs=2)
    loaded = datasets.load_from_disk(str(out))
    roles = split.roles()
    names = {"train": "train", "val": "validation", "test": "test"}
    assert list(loaded) == ["train", "validation", "test"]
    for role, name in names.items():
        assert sorted(loaded[name]["scan_id"]) == roles[role]
    features = loaded["train"].features
    assert features["annotated"].feature.names == ["background", "pancreas"]
    centers = sorted({s["center"] for s in scans.values()})
    assert features["center"].names == centers
    assert isinstance(features["sequence"], datasets.ClassLabel)
    assert isinstance(features["sex"], datasets.ClassLabel)

    test = loaded["test"]
    if not embed:
        assert isinstance(features["image"], datasets.Value)
        assert not (out / ".staging").exists()
        test = test.cast_column("image", datasets.Nifti()).cast_column("label", datasets.Nifti())
    else:
        assert isinstance(features["image"], datasets.Nifti)
        assert not (out / "files").exists()
    row = test[0]
    scan_id = row["scan_id"]
    assert np.array_equal(np.asanyarray(row["image"].dataobj), _image(catalog, scans, scan_id))
    expected = _expected_label(catalog, scan_id, ["pancreas"])
    assert np.array_equal(np.asanyarray(row["label"].dataobj), expected)
    assert features["center"].int2str(row["center"]) == scans[scan_id]["center"]
    assert features["sex"].int2str(row["sex"]) == scans[scan_id]["sex"]
    assert row["age"] == pytest.approx(scans[scan_id]["age"])
    assert row["subject_id"] == scans[scan_id]["subject_id"]

    # the Parquet shards hold the same rows, and the card says where they came from
    shards = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert {k: len(v) for k, v in shards.items()} == result.rows
    # another split exported to a folder of the same name loads its own rows, not the
    # first export's from the cache (datasets keys its cache by folder and config name)
    other = make_split(catalog, "all", "holdout", ratios=(50, 20, 30), seed=3, name="other")
    again = tmp_path / "elsewhere" / "hf"
    rows = export_hf(catalog, "all", split=other.name, out=again, embed=embed).rows
    reloaded = datasets.load_dataset(str(again), cache_dir=str(tmp_path / "hf-cache"))
    assert {k: len(v) for k, v in reloaded.items()} == rows
    assert rows != result.rows
    card = (out / "README.md").read_text()
    assert f"catalog version {get_cohort(catalog, 'all').catalog_version}" in card
    assert "| 1 | pancreas |" in card
    assert split.name in card


def test_torchio_subjects(holdout):
    catalog, split, scans = holdout
    roles = split.roles()
    subjects = cohort_subjects(catalog, "all", split=split.name, role="val")
    assert sorted(s["scan_id"] for s in subjects) == roles["val"]
    everything = cohort_subjects(catalog, "all", split=split.name)
    assert len(everything) == sum(len(v) for v in roles.values())
    # one role alone is numbered as the whole split: the classes come from every role
    for role in ("train", "test"):
        assert cohort_subjects(catalog, "all", split=split.name, role=role)[0]["classes"] == [
            "background",
            "pancreas",
        ]
    subject = subjects[0]
    scan_id = subject["scan_id"]
    assert isinstance(subject["image"], tio.ScalarImage)
    assert isinstance(subject["label"], tio.LabelMap)
    image = subject["image"].data.numpy()[0]
    assert np.array_equal(image, _image(catalog, scans, scan_id).astype(np.float32))
    label = subject["label"].data.numpy()[0]
    assert np.array_equal(label, _expected_label(catalog, scan_id, ["pancreas"]))
    assert np.allclose(subject["image"].affine, nib.load(subject["image"].path).affine)
    for column in META:
        assert subject[column] == scans[scan_id][column]

    # lazily loaded, picklable: a DataLoader with a worker batches them
    import torch

    dataset = tio.SubjectsDataset(subjects, transform=tio.CropOrPad((16, 16, 8)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert batch["label"][tio.DATA].shape == (2, 1, 16, 16, 8)
    assert batch["annotated"].shape == (2, 2)
    assert batch["center"] == [s["center"] for s in subjects[:2]]
    with pytest.raises(ExportError, match="needs a split"):
        cohort_subjects(catalog, "all", role="test")


def test_partial_classes_are_masked_per_case(holdout, tmp_path):
    catalog, split, scans = holdout
    with pytest.raises(ExportError, match="--partial"):
        export_datalist(
            catalog, "all", split=split.name, out=tmp_path / "a.json", classes=["liver"]
        )
    out = tmp_path / "b.json"
    export_datalist(
        catalog, "all", split=split.name, out=out, classes=["liver", "pancreas"], partial=True
    )
    entries = monai_data.load_decathlon_datalist(out, data_list_key="training")
    annotated = {tuple(e["annotated"]) for e in entries}
    assert annotated == {("liver", "pancreas"), ("pancreas",)}  # the flat center has no liver
    for entry in entries[:6]:
        values = set(np.unique(_voxels(entry["label"])).tolist())
        assert values <= {0, 1, 2}
        if "liver" not in entry["annotated"]:
            assert 1 not in values
    subjects = cohort_subjects(
        catalog, "all", split=split.name, classes=["liver", "pancreas"], partial=True
    )
    masks = {tuple(s["annotated"].tolist()) for s in subjects}
    assert masks == {(True, True, True), (True, False, True)}


def test_targets_are_refused_replaced_and_never_half_written(holdout, tmp_path):
    catalog, split, scans = holdout
    out = tmp_path / "dl.json"
    export_datalist(catalog, "all", split=split.name, out=out)
    with pytest.raises(ExportError, match="not empty"):
        export_datalist(catalog, "all", split=split.name, out=out)
    with pytest.raises(ExportError, match="not empty"):
        export_hf(catalog, "all", split=split.name, out=tmp_path / "dl")
    export_datalist(catalog, "all", split=split.name, out=out, force=True)

    # a label holding a value its label map does not declare stops the export (when it
    # is converted; one linked as it is was checked at ingest), which leaves nothing behind
    plan = plan_export(catalog, "all", split=split.name)
    victim = next(c.scan_id for c in plan.cases if c.lut and c.lut != tuple(range(len(c.lut))))
    uri = best_labels(catalog, [victim], derived=False)[victim]["uri"]
    path = catalog.resolve(uri)
    broken = nib.load(path)
    data = np.asanyarray(broken.dataobj).copy()
    data[0, 0, 0] = 99
    path.unlink()  # the catalog's file may be hard-linked by the first export
    nib.save(nib.Nifti1Image(data, broken.affine, broken.header), path)
    target = tmp_path / "hf"
    with pytest.raises(ExportError, match=f"{path.name}: label value 99"):
        export_hf(catalog, "all", split=split.name, out=target)
    assert not target.exists()


def test_cli_exports(holdout, tmp_path):
    from xds.cli.main import cli

    catalog, split, _ = holdout
    base = ["--catalog", str(catalog.root), "export"]
    out = tmp_path / "dl.json"
    result = CliRunner().invoke(
        cli, [*base, "datalist", "all", "--split", split.name, "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["entries"]["training"] == len(split.roles()["train"])
    again = CliRunner().invoke(
        cli, [*base, "datalist", "all", "--split", split.name, "--out", str(out)]
    )
    assert again.exit_code == 1
    assert "not empty" in again.output
    result = CliRunner().invoke(
        cli,
        [*base, "hf", "all", "--split", split.name, "--out", str(tmp_path / "hf"), "-j", "1"],
    )
    assert result.exit_code == 0, result.output
    assert "Hugging Face export" in result.output


def test_harmonized_labels_are_linked_not_converted(holdout, tmp_path):
    from xds.export import export_nnunet
    from xds.labels.harmonization import harmonize

    catalog, split, scans = holdout
    with pytest.raises(ExportError, match="xds harmonize all --classes crosspan"):
        export_datalist(
            catalog, "all", split=split.name, out=tmp_path / "x.json", class_set="crosspan"
        )
    harmonize(catalog, "all", classes="crosspan")
    out = tmp_path / "h.json"
    result = export_datalist(catalog, "all", split=split.name, out=out, class_set="crosspan")
    assert result.classes == ["pancreas"]
    assert set(result.files) == {"linked"}  # images and labels: no conversion at all
    entry = monai_data.load_decathlon_datalist(out, data_list_key="test")[0]
    assert np.array_equal(
        _voxels(entry["label"]), _expected_label(catalog, entry["scan_id"], ["pancreas"])
    )

    # a set some centers label only in part: refused, or masked per case with partial
    harmonize(catalog, "all", classes="liver,pancreas", unmapped="ignore")
    with pytest.raises(ExportError, match="liver"):
        export_hf(catalog, "all", split=split.name, out=tmp_path / "hf", class_set="liver,pancreas")
    subjects = cohort_subjects(
        catalog, "all", split=split.name, class_set="liver,pancreas", partial=True
    )
    assert {tuple(s["annotated"].tolist()) for s in subjects} == {
        (True, True, True),
        (True, False, True),
    }
    # nnU-Net's ignore label is the one after the last class: harmonize's 255 becomes 2
    harmonize(catalog, "all", classes="pancreas", unmapped="ignore")
    done = export_nnunet(
        catalog, "all", split=split.name, dataset_id=7, out=tmp_path / "nn", class_set="pancreas"
    )
    meta = json.loads((Path(done.path) / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "pancreas": 1, "ignore": 2}
    values = set()
    for path in (Path(done.path) / "labelsTr").glob("*.nii.gz"):
        values |= set(np.unique(_voxels(str(path))).tolist())
    assert values == {0, 1, 2}


def test_embedded_splits_are_sharded_by_file_bytes(holdout, tmp_path, monkeypatch):
    import xds.export.hf as hf

    catalog, split, _ = holdout
    roles = split.roles()
    files = [
        catalog.resolve(r["image_uri"])
        for r in cohort_scans(catalog, get_cohort(catalog, "all")).to_pylist()
        if r["scan_id"] in roles["train"]
    ]
    # shards of about a quarter of the train images' bytes: datasets alone would see only
    # paths in the table and write one shard
    monkeypatch.setattr(hf, "SHARD_BYTES", sum(f.stat().st_size for f in files) // 4)
    result = export_hf(catalog, "all", split=split.name, out=tmp_path / "hf", embed=True)
    train_shards = [p for p in result.parquet if p.startswith("data/train-")]
    assert len(train_shards) >= 4
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(loaded["train"].cache_files) == len(train_shards)
    assert sorted(loaded["train"]["scan_id"]) == roles["train"]
    parquet = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    assert sorted(parquet["train"]["scan_id"]) == roles["train"]
