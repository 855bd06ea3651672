"""The nnU-Net backend through nnU-Net's Python API, on the phantom world (a few minutes)."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

pytest.importorskip("nnunetv2")

from xds import cohort_subjects  # noqa: E402
from xds.catalog import build_cohort  # noqa: E402
from xds.evaluate import evaluate  # noqa: E402
from xds.schemas.errors import RunError  # noqa: E402
from xds.splits import make_split  # noqa: E402
from xds.trainers.nnunet_backend import (  # noqa: E402
    NnunetConfig,
    predict_nnunet,
    train_nnunet,
)


@pytest.mark.slow
def test_nnunet_trains_our_folds_and_predictions_score(catalog, tmp_path):
    where = "sequence = 'T1W' AND list_contains(classes, 'liver')"  # a small cohort
    build_cohort(catalog, where, "livers")
    split = make_split(catalog, "livers", name="livers-h", seed=0)
    config = NnunetConfig.small(
        epochs=3, iterations=10, val_iterations=1, processes=1, mirroring=False
    )
    run = tmp_path / "run"
    result = train_nnunet(catalog, "livers", split=split.name, fold=0, out=run,
                          config=config, classes=["liver"])  # fmt: skip
    assert result.classes == ["liver"]
    assert len(result.epoch_losses) == 3
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    # nnU-Net trained on our patient-level fold, not on its own random split
    preprocessed = next((run / "nnUNet_preprocessed").glob("Dataset990_*"))
    folds = json.loads((preprocessed / "splits_final.json").read_text())
    assert sorted(folds[0]["val"]) == sorted(split.roles(0)["val"])
    assert sorted(folds[0]["train"]) == sorted(split.roles(0)["train"])
    # a finished run is not trained again
    again = train_nnunet(catalog, "livers", split=split.name, fold=0, out=run, config=config)
    assert again.resumed_from == 3
    with pytest.raises(RunError, match="fold 3"):
        train_nnunet(catalog, "livers", split=split.name, fold=3, out=run, config=config)

    test = cohort_subjects(catalog, "livers", split=split.name, role="test", classes=["liver"])
    written = predict_nnunet(run, test, tmp_path / "pred", config=config, fold=0)
    assert all(p.exists() for p in written)
    assert nib.load(written[0]).shape == nib.load(str(test[0]["image"].path)).shape
    report = evaluate(catalog, tmp_path / "pred", cohort="livers", split=split.name,
                      role="test", classes="liver", name="nnunet-small")  # fmt: skip
    assert report.mean["liver"]["dice"] > 0.05  # an empty mask scores 0
