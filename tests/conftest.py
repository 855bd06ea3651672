"""Shared fixtures: a small phantom world and a catalog holding it, built once per session.

Tests that write to a catalog copy it into their own tmp_path first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from xds.catalog import Catalog
from xds.ingest import ingest_nifti
from xds.phantoms import generate_world

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
