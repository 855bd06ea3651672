"""Shared fixtures: a small phantom world and a catalog holding it, built once per session.

Tests that write to a catalog copy it into their own tmp_path first.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
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
def ingest_phantoms():
    """``ingest_phantoms(catalog, world_root, manifest)``: :func:`ingest_world`."""
    return ingest_world


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


# -- checks several test modules share ----------------------------------------------------


def _searchable(path: Path) -> list[tuple[str, bytes]]:
    """The raw bytes of a file and, where it is compressed or columnar, its decoded text."""
    raw = path.read_bytes()
    out = [("raw", raw)]
    if raw[:2] == b"\x1f\x8b":
        out.append(("gunzip", gzip.decompress(raw)))
    if path.name.endswith(".parquet"):
        table = pq.read_table(path)
        out.append(("cells", json.dumps(table.to_pylist(), default=str).encode()))
    return out


def _leaks(paths: list[Path], needles, base: Path) -> list[str]:
    """Where any of ``needles`` (case-insensitive) stands in a file's name, bytes, gunzipped
    bytes or Parquet cells; one line per finding."""
    found = []
    lowered = {n.lower().encode() for n in needles if n}
    for path in paths:
        names = path.relative_to(base).as_posix().lower().encode("utf-8", "surrogateescape")
        for needle in lowered:
            if needle in names:
                found.append(f"{path.relative_to(base)} (its name): {needle!r}")
        for kind, data in _searchable(path):
            data = data.lower()
            found += [f"{path.relative_to(base)} ({kind}): {n!r}" for n in lowered if n in data]
    return found


PRIVATE_FILES = (".xds-secret", ".xds-pacs.sqlite")
"""The catalog's key and the PACS store of raw UIDs (both 0600): identifiers by design."""


@pytest.fixture(scope="session")
def find_leaks():
    """``find_leaks(folder, needles)``: identifiers found in any stored byte under ``folder``
    (the catalog's key and PACS store aside), as one line each."""

    def find(folder: Path, needles, base: Path | None = None) -> list[str]:
        folders = folder if isinstance(folder, list | tuple) else [folder]
        paths = [p for f in folders for p in Path(f).rglob("*")
                 if p.is_file() and p.name not in PRIVATE_FILES]  # fmt: skip
        return _leaks(paths, needles, base or Path(folders[0]))

    return find


def _values_in_world(path, truth_path) -> tuple[np.ndarray, np.ndarray] | None:
    """The voxels of ``path`` and those of ``truth_path`` at the same world positions, in
    one order; None when ``path``'s voxel centres are not ``truth_path``'s (storage order
    may differ, nothing is resampled)."""
    image, truth = nib.load(path), nib.load(truth_path)
    data, want = np.asanyarray(image.dataobj), np.asanyarray(truth.dataobj)
    if data.size != want.size:
        return None
    ijk = np.argwhere(np.ones(data.shape, bool))
    there = nib.affines.apply_affine(np.linalg.inv(truth.affine) @ image.affine, ijk)
    index = np.rint(there).astype(int)
    if not np.allclose(there, index, atol=0.02) or (index < 0).any() or (
        index >= want.shape
    ).any():
        return None
    return data[tuple(ijk.T)], want[tuple(index.T)]


@pytest.fixture(scope="session")
def values_in_world():
    """``values_in_world(path, truth)``: both volumes' voxels paired by world position."""
    return _values_in_world


CHROMIUM = "/usr/bin/chromium"


def _browse(page_path, shot, then=None) -> dict:
    """Open an HTML file in Debian's chromium (headless, no network).

    Returns the console errors, failed requests and page errors (``problems``), every
    image's decoded width, the page's text, and what ``then(page)`` returned; saves a
    full-page screenshot to ``shot``.
    """
    import shutil

    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), "install Debian's chromium (.ci/run does)"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(Path(page_path).as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        text = page.inner_text("body")
        extra = then(page) if then is not None else None
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return {"problems": problems, "widths": widths, "text": text, "then": extra}


@pytest.fixture(scope="session")
def browse():
    """``browse(html, screenshot, then=None)``: see :func:`_browse`."""
    return _browse


# -- a real PACS: Debian's Orthanc with its DICOMweb plugin (benchmarks/orthanc.py) ----------


@pytest.fixture(name="free_port")
def free_port_fixture():
    """:func:`benchmarks.orthanc.free_port`, for tests."""
    from benchmarks.orthanc import free_port

    return free_port


@pytest.fixture
def orthanc(tmp_path):
    """``orthanc(**options)`` starts an :class:`OrthancServer`; all are stopped at the end."""
    from benchmarks.orthanc import OrthancServer

    started: list[OrthancServer] = []

    def start(**options) -> OrthancServer:
        server = OrthancServer(tmp_path / f"orthanc-{len(started)}", **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
