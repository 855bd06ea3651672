"""The nnU-Net backend through nnU-Net's Python API, on the phantom world (about 2 minutes):
``xds train --backend nnunet``, ``xds predict``, ``xds evaluate --pred RUN``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("nnunetv2")

from xds.catalog import Catalog, build_cohort  # noqa: E402
from xds.cli.main import cli  # noqa: E402
from xds.schemas.errors import RunError  # noqa: E402
from xds.splits.store import make_split  # noqa: E402
from xds.trainers.nnunet_backend import NnunetConfig, train_nnunet  # noqa: E402


@pytest.mark.slow
def test_nnunet_trains_our_folds_and_predictions_score(catalog, tmp_path):
    where = "sequence = 'T1W' AND list_contains(classes, 'liver')"  # a small cohort
    build_cohort(catalog, where, "livers")
    split = make_split(catalog, "livers", name="livers-h", seed=0)
    base = ["--catalog", str(catalog.root)]
    train = [*base, "train", "livers", "--split", split.name, "--backend", "nnunet",
             "--classes", "liver", "--epochs", "3", "--iterations", "10", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, train, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["classes"] == ["liver"]
    losses = run["epoch_losses"]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    row = Catalog.open(catalog.root).read("runs").to_pylist()[0]
    assert row["backend"] == "nnunet"
    assert json.loads(row["config"])["trainer"] == "nnUNetTrainerXds"
    # nnU-Net trained on our patient-level fold, not on its own random case-level split
    preprocessed = next((Path(row["uri"]) / "nnUNet_preprocessed").glob("D*"))
    folds = json.loads((preprocessed / "splits_final.json").read_text())
    assert sorted(folds[0]["val"]) == sorted(split.roles(0)["val"])
    assert sorted(folds[0]["train"]) == sorted(split.roles(0)["train"])
    # a finished run is not trained again; a fold the split does not have is refused
    again = CliRunner().invoke(cli, train, catch_exceptions=False)
    assert json.loads(again.stdout)["resumed_from"] == 3
    with pytest.raises(RunError, match="fold 3"):
        train_nnunet(catalog, "livers", split=split.name, fold=3, out=row["uri"],
                     config=NnunetConfig.small())  # fmt: skip

    result = CliRunner().invoke(cli, [*base, "predict", row["name"], "--json"])
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)
    assert sorted(prediction["scan_ids"]) == sorted(split.roles(0)["test"])
    result = CliRunner().invoke(cli, [*base, "evaluate", "--pred", row["name"], "--cohort",
                                      "livers", "--split", split.name, "--classes", "liver",
                                      "-j", "1", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["mean"]["liver"]["dice"] > 0.05  # an empty mask scores 0

    # as a pseudo-label teacher: nnU-Net's probabilities, in the file's voxel order, whose
    # argmax is what `xds predict` wrote; a flipped member has the same grid
    from xds.trainers.students import load_teacher

    teacher = load_teacher(Catalog.open(catalog.root), row["name"])
    assert teacher.classes == ["liver"]
    scan_id = prediction["scan_ids"][0]
    uri = catalog.rows_for("scans", [scan_id], ["image_uri"]).to_pylist()[0]["image_uri"]
    members = list(teacher.probabilities(catalog.resolve(uri), ((), (0,))))
    written = np.asanyarray(nib.load(Path(prediction["uri"]) / f"{scan_id}.nii.gz").dataobj)
    assert members[0].shape == members[1].shape == (2, *written.shape)
    assert np.allclose(members[0].sum(0), 1.0, atol=1e-4)
    assert np.array_equal(members[0].argmax(0), written)
