"""Shared fixtures: a small phantom world and a catalog holding it, built once per session.

Tests that write to a catalog copy it into their own tmp_path first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xds.catalog import Catalog
from xds.ingest import ingest_nifti
from xds.labels.mapping import lookup_table
from xds.labels.selection import best_labels
from xds.phantoms import generate_world
from xds.schemas.vocabulary import canonical_map

SMALL = {"centers": 4, "subjects_per_center": 8, "shape": (32, 32, 16), "seed": 7}


def ingest_world(catalog: Catalog, world_root: Path, manifest: dict, dataset: str = "pw") -> None:
    """Ingest every center of a phantom world the way the demo does."""
    for c in manifest["centers"]:
        ingest_nifti(
            catalog,
            world_root / c["path"],
            center=c["name"],
            dataset=dataset,
            metadata=world_root / c["metadata"],
            label_map=world_root / c["label_map"],
            vendor=c["vendor"],
            field_strength=c["field_strength"],
        )


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("world") / "phantoms"
    manifest = generate_world(root, **SMALL)
    return root, manifest


@pytest.fixture(scope="session")
def ingested(tmp_path_factory, world) -> Path:
    root, manifest = world
    path = tmp_path_factory.mktemp("catalog") / "catalog"
    ingest_world(Catalog.create(path), root, manifest)
    return path


@pytest.fixture
def catalog(ingested, tmp_path) -> Catalog:
    """A private, writable copy of the session's ingested catalog."""
    path = tmp_path / "catalog"
    shutil.copytree(ingested, path)
    return Catalog.open(path)


@pytest.fixture(scope="session")
def world_counts(world) -> dict[tuple[str, str], int]:
    """(center, sequence) -> number of scans the world wrote."""
    return {
        (c["name"], s): n for c in world[1]["centers"] for s, n in c["scans_per_sequence"].items()
    }


EVAL_CLASSES = ("liver", "spleen", "pancreas")


def _write_predictions(catalog, scan_ids, folder, shift_every=2):
    """Perfect predictions for some scans, ones shifted two voxels for the others."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = best_labels(catalog, list(scan_ids), derived=False)
    maps = {
        r["label_map_id"]: canonical_map(dict(zip(r["indices"], r["names"], strict=True)), "map")
        for r in catalog.read("label_maps").to_pylist()
    }
    expected = {}
    for i, scan_id in enumerate(scan_ids):
        lut, annotated = lookup_table(maps[refs[scan_id]["label_map"]], EVAL_CLASSES)
        image = nib.load(catalog.resolve(refs[scan_id]["uri"]))
        data = lut[np.asanyarray(image.dataobj).astype(np.int64)]
        pred = np.roll(data, 2, axis=0) if i % shift_every else data
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), image.affine), folder / f"{scan_id}.nii.gz")
        expected[scan_id] = (pred, data, image.header.get_zooms()[:3], annotated)
    labels = {"background": 0, **{c: i for i, c in enumerate(EVAL_CLASSES, 1)}}
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return expected


@pytest.fixture(scope="session")
def write_predictions():
    """``fn(catalog, scan_ids, folder)``: label-map predictions named by scan id (liver,
    spleen, pancreas = 1, 2, 3), perfect for every other scan and shifted 2 voxels for the
    rest; returns scan_id -> (prediction, reference, spacing, annotated classes)."""
    return _write_predictions
