"""Anatomix synthetic sets: determinism, label statistics, augmentations, catalog, Set Dice."""

from __future__ import annotations

import json
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog
from xds.cli.main import cli
from xds.synth import AnatomixConfig, generate, load_structures
from xds.synth.render import Augment, SetDraw, render_set
from xds.synth.templates import make_template, set_generator

SIZE = 48


@pytest.fixture(scope="module")
def template_files(ingested) -> list[Path]:
    catalog = Catalog.open(ingested)
    return [catalog.resolve(u) for u in catalog.read("labels").column("uri").to_pylist()]


@pytest.fixture(scope="module")
def pool(template_files):
    return load_structures(template_files, size=SIZE)


def test_same_seed_same_sets_and_sets_do_not_depend_on_each_other(pool):
    config = AnatomixConfig(size=SIZE)
    first = list(generate(pool, config, sets=3, set_size=2, seed=5, device="cpu"))
    again = list(generate(pool, config, sets=3, set_size=2, seed=5, device="cpu"))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)
    # set 2 alone is set 2 of the run: nothing it draws depends on the sets before it
    alone = next(generate(pool, config, sets=1, set_size=2, seed=5, start=2, device="cpu"))
    assert np.array_equal(alone.images, first[2].images)
    other = next(generate(pool, config, sets=1, set_size=2, seed=6, device="cpu"))
    assert not np.array_equal(other.labels, first[0].labels)
    # within a set the images differ (own augmentations, noise) but share the template
    assert not np.array_equal(first[0].images[0], first[0].images[1])
    assert first[0].images.dtype == np.float32
    assert first[0].images.min() >= 0
    assert first[0].images.max() <= 1


def test_templates_keep_20_to_40_labels_and_no_component_under_20_voxels(pool):
    config = AnatomixConfig(size=64)
    # structures are resolution-free: a finer grid only changes the voxel size
    pool64 = type(pool)(pool.masks, pool.extents_mm, pool.voxel_mm * SIZE / 64, pool.n_templates)
    splits = set()
    for index in range(12):
        labels, info = make_template(pool64, config, set_generator(1, index))
        n = int(labels.max())
        assert 20 <= n <= 40, info
        assert np.array_equal(np.unique(labels), np.arange(n + 1))  # renumbered 1..n
        components = cc3d.connected_components(labels, connectivity=26)
        sizes = np.bincount(components.ravel())[1:]
        assert sizes.min() >= 20, info
        if info["split"]:  # a split label is exactly one component
            assert components.max() == n, info
        splits.add(info["split"])
    assert splits == {True, False}  # p = 0.5 over 12 templates


def _identity_draw(n_labels: int, k: int, **within) -> SetDraw:
    mean = np.linspace(0.1, 0.9, n_labels + 1).astype(np.float32)
    return SetDraw(
        mean, np.zeros(n_labels + 1, np.float32), Augment(), [Augment(**within) for _ in range(k)]
    )


@pytest.mark.parametrize("dims", [3, 2])
def test_identity_augmentations_reproduce_the_template(pool, dims):
    config = AnatomixConfig(size=SIZE, dims=dims)
    template, _ = make_template(pool, config, set_generator(2, 0))
    n = int(template.max())
    images, labels = render_set(template, _identity_draw(n, 2), set_generator(2, 1))
    assert labels.shape == (2, *template.shape)
    assert np.array_equal(labels[0], template)  # grid conventions line up voxel for voxel
    expected = np.linspace(0.1, 0.9, n + 1)[template]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(images[0], expected, atol=1e-5)


def test_flips_move_labels_and_intensity_flips_do_not(pool):
    template, _ = make_template(pool, AnatomixConfig(size=SIZE), set_generator(3, 0))
    n = int(template.max())
    draw = _identity_draw(n, 1)
    draw.across = Augment(applied=["horizontal_flip"], flips=(True, False))
    _, labels = render_set(template, draw, set_generator(3, 1))
    assert np.array_equal(labels[0], template[:, :, ::-1])  # x is the last voxel axis
    plain, _ = render_set(template, _identity_draw(n, 1), set_generator(3, 1))
    inverted, same = render_set(
        template, _identity_draw(n, 1, flip_intensities=True), set_generator(3, 1)
    )
    assert np.array_equal(same[0], template)
    assert np.allclose(inverted[0], 1 - plain[0], atol=1e-6)


@pytest.mark.gpu
def test_gpu_sets_match_cpu_sets(pool):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = AnatomixConfig(size=SIZE)
    cpu = next(generate(pool, config, sets=1, set_size=3, seed=8, device="cpu"))
    gpu = next(generate(pool, config, sets=1, set_size=3, seed=8, device="auto"))
    assert np.mean(cpu.labels == gpu.labels) > 0.999  # nearest-neighbour ties may differ
    assert np.allclose(cpu.images, gpu.images, atol=1e-3)


def test_2d_sets_are_slices_of_the_template(pool):
    config = AnatomixConfig(size=SIZE, dims=2)
    item = next(generate(pool, config, sets=1, set_size=3, seed=4, device="cpu"))
    assert item.images.shape == (3, SIZE, SIZE)
    assert item.info["axis"] in (0, 1, 2)
    assert round(25 * SIZE / 128) <= item.info["slice"] <= round(100 * SIZE / 128)
    assert item.template.max() >= 2


def _synth(catalog: Catalog, out: Path, *extra: str):
    args = ["--catalog", str(catalog.root), "synth", "anatomix", "--templates", "labelled",
            "--sets", "2", "--set-size", "3", "--size", str(SIZE), "--seed", "11",
            "--out", str(out), "-j", "2", "--json", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _permuted_predictions(catalog, cohort_scans, folder: Path, per_image: bool) -> None:
    """Each label map with its labels renamed: one permutation per set, or per image."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    perms = {}
    for row in cohort_scans:
        key = row["scan_id"] if per_image else row["subject_id"]
        perm = perms.setdefault(key, np.concatenate([[0], rng.permutation(np.arange(1, 256))]))
        label = catalog.read("labels", where="scan_id = ?", params=[row["scan_id"]]).to_pylist()
        image = nib.load(catalog.resolve(label[0]["uri"]))
        data = perm[np.asanyarray(image.dataobj).astype(np.int64)].astype(np.uint8)
        nib.save(nib.Nifti1Image(data, image.affine), folder / f"{row['scan_id']}.nii.gz")


def test_cli_registers_sets_and_set_dice_scores_them(catalog, tmp_path):
    from PIL import Image

    runner = CliRunner()
    base = ["--catalog", str(catalog.root)]
    runner.invoke(cli, [*base, "build-cohort", "--where", "has_label", "--name", "labelled"])
    preview = tmp_path / "montage.png"
    result = _synth(catalog, tmp_path / "sets", "--preview", str(preview))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["scans_added"] == 6
    assert Image.open(preview).size[0] > SIZE
    manifest = json.loads((tmp_path / "sets" / "anatomix.json").read_text())
    assert manifest["seed"] == 11
    assert len(manifest["sets"]) == 2

    catalog = catalog.latest()
    rows = catalog.sql(
        "SELECT scan_id, subject_id, modality, sequence, label_origins, classes FROM scan_view "
        "WHERE dataset = 'anatomix' ORDER BY scan_id"
    ).to_pylist()
    assert len(rows) == 6
    assert len({r["subject_id"] for r in rows}) == 2
    assert {(r["modality"], r["sequence"]) for r in rows} == {("SYN", "SYN")}
    assert all(r["label_origins"] == ["synthetic"] for r in rows)
    scan = catalog.read("scans", where="scan_id = ?", params=[rows[0]["scan_id"]]).to_pylist()
    protocol = dict(scan[0]["protocol"])
    assert protocol["seed"] == "11"
    assert protocol["generator"] == "anatomix"
    assert "mean" in json.loads(protocol["protocol"])
    # the same run again adds nothing
    again = _synth(catalog, tmp_path / "sets", "--force")
    assert json.loads(again.output)["scans_added"] == 0

    runner.invoke(cli, [*base, "build-cohort", "--where", "dataset='anatomix'", "--name", "syn"])
    scores = {}
    for per_image in (False, True):
        folder = tmp_path / f"pred-{per_image}"
        _permuted_predictions(catalog, rows, folder, per_image)
        result = runner.invoke(cli, [
            *base, "evaluate", "--pred", str(folder), "--cohort", "syn", "--set-by", "subject_id",
            "--pred-labels", "generic:255", "--classes", "generic:6", "-j", "1", "--json",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        sets = json.loads(result.output)["set_dice"]
        assert {s["set_by"] for s in sets} == {"subject_id"}
        assert len(sets) >= 6
        scores[per_image] = [s["set_dice"] for s in sets]
    # one renaming per set: the sets are segmented consistently; per image: they are not
    assert np.allclose(scores[False], 1.0)
    assert np.mean(scores[True]) < 0.9


def test_bad_templates_fail_in_one_line(tmp_path, catalog):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--catalog", str(catalog.root), "synth", "anatomix", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, [*args, "--templates", str(empty)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert str(empty) in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.nii.gz").write_bytes(b"not a nifti")
    result = CliRunner().invoke(cli, [*args, "--templates", str(broken)])
    assert result.exit_code == 1
    assert "a.nii.gz" in result.output
    result = CliRunner().invoke(cli, [*args, "--templates", "no-such-cohort"])
    assert result.exit_code == 1
    assert "no-such-cohort" in result.output
    assert not (tmp_path / "o").exists()
