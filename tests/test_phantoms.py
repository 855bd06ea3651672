import hashlib
import json

import nibabel as nib
import numpy as np

from xds.ingest.layouts import LAYOUTS
from xds.ingest.sheets import read_label_map
from xds.phantoms import generate_world
from xds.phantoms.world import _SEQUENCE_TOKENS

TINY = {"centers": 2, "subjects_per_center": 2, "shape": (24, 24, 12)}


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    a = generate_world(tmp_path / "a", seed=3, **TINY)
    b = generate_world(tmp_path / "b", seed=3, **TINY)
    generate_world(tmp_path / "c", seed=4, **TINY)
    assert a == b
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_centers_differ_like_real_ones(world):
    root, manifest = world
    centers = manifest["centers"]
    assert len({c["layout"] for c in centers}) == 4
    assert len({c["orientation"] for c in centers}) == 4
    assert len({tuple(c["spacing"]) for c in centers}) == 4
    assert len({c["vendor"] for c in centers}) >= 3
    maps = [read_label_map(root / c["label_map"]) for c in centers]
    assert len({tuple(sorted(m.items())) for m in maps}) == 4  # four label conventions
    assert any(set(m.values()) == {"background", "pancreas"} for m in maps)


def test_files_match_manifest_and_geometry(world):
    root, manifest = world
    for c in manifest["centers"]:
        layout = LAYOUTS[c["layout"]]
        images = [
            p
            for p in (root / c["path"]).rglob("*.nii*")
            if layout.match_image(str(p.relative_to(root / c["path"])))
            and not layout.match_label(str(p.relative_to(root / c["path"])))
        ]
        assert len(images) == sum(c["scans_per_sequence"].values())
        img = nib.load(images[0])
        assert "".join(nib.aff2axcodes(img.affine)) == c["orientation"]
        assert np.allclose(img.header.get_zooms()[:3], c["spacing"], atol=1e-3)


def _organ_means(root, center, key, seq):
    layout = LAYOUTS[center["layout"]]
    token = _SEQUENCE_TOKENS[center["layout"]][seq]
    image = np.asanyarray(nib.load(root / center["path"] / layout.image_path(key, token)).dataobj)
    label = np.asanyarray(nib.load(root / center["path"] / layout.label_path(key, token)).dataobj)
    names = read_label_map(root / center["label_map"])
    return {names[v]: float(image[label == v].mean()) for v in np.unique(label) if v}


def test_contrast_follows_physics(tmp_path):
    # One center labelling every organ; T1W and T2W of the same subject.
    generate_world(
        tmp_path / "w", centers=1, subjects_per_center=1, missing=0.0, shape=(48, 48, 24), seed=1
    )

    center = {"layout": "bids", "path": "Aurora", "label_map": "Aurora/label_map.json"}
    key = "001"
    t1 = _organ_means(tmp_path / "w", center, key, "T1W")
    t2 = _organ_means(tmp_path / "w", center, key, "T2W")
    # Fluid (gallbladder) is dark on T1W and bright on T2W; liver the other way round.
    assert t1["gallbladder"] < t1["liver"]
    assert t2["gallbladder"] > 2 * t2["liver"]
    # Pancreas: brighter than spleen on T1W (short T1, avid enhancement), darker on T2W.
    assert t1["pancreas"] > t1["spleen"]
    assert t2["pancreas"] < t2["spleen"]


def test_variability_spreads_anatomy_and_leaves_the_default_world_alone():
    from xds.phantoms.anatomy import TISSUE, Anatomy

    grid = np.stack(np.meshgrid(*[np.arange(-180, 181, 6.0)] * 3, indexing="ij"), -1)

    def liver_ml(variability, subject):
        rng = np.random.default_rng([5, subject])
        tissues = Anatomy(rng, variability=variability).tissue_map(grid)
        return (tissues == TISSUE["liver"]).sum() * 6.0**3 / 1000

    default = [liver_ml(1.0, s) for s in range(12)]
    wide = [liver_ml(3.0, s) for s in range(12)]
    assert np.std(wide) / np.mean(wide) > 2 * np.std(default) / np.mean(default)
    # the same random numbers are drawn: variability 1 is the world every seed always gave
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    a = Anatomy(rng_a).tissue_map(grid)
    b = Anatomy(rng_b, variability=1.0).tissue_map(grid)
    assert np.array_equal(a, b)
    assert rng_a.random() == rng_b.random()
    # variability 0: every subject (of one body size) has the same organs
    same = [Anatomy(np.random.default_rng(s), variability=0.0).tissue_map(grid) for s in (1, 2)]
    assert np.array_equal(*same)


def test_scanner_shift_makes_the_last_center_noisier_and_leaves_the_others_alone(tmp_path):
    small = {"centers": 2, "subjects_per_center": 2, "sequences": ("T1W",), "shape": (24, 24, 12),
             "missing": 0.0, "seed": 3}  # fmt: skip
    plain = generate_world(tmp_path / "plain", **small)
    shifted = generate_world(tmp_path / "shifted", scanner_shift=1.0, **small)
    assert shifted["scanner_shift"] == 1.0
    first, last = plain["centers"]
    assert shifted["centers"][0]["noise"] == first["noise"]
    assert shifted["centers"][1]["noise"] == 4 * last["noise"]
    assert shifted["centers"][1]["bias"] == 3 * last["bias"]

    def images(root, center):
        return sorted(p for p in (root / center["path"]).rglob("*.nii.gz")
                      if "label" not in str(p).lower())  # fmt: skip

    # the other center's files are the same bytes; the last center's images are noisier
    for a, b in zip(images(tmp_path / "plain", first), images(tmp_path / "shifted", first),
                    strict=True):  # fmt: skip
        assert a.read_bytes() == b.read_bytes()

    def roughness(path):  # the air's signal is Rician noise: its level over the body's
        data = nib.load(path).get_fdata()
        return np.percentile(data, 5) / np.percentile(data, 99)

    before = [roughness(p) for p in images(tmp_path / "plain", last)]
    after = [roughness(p) for p in images(tmp_path / "shifted", last)]
    assert before
    assert min(after) > 3 * max(before)  # noise x 4


def test_protocol_shift_drops_the_last_centers_contrast_agent_from_t1w_only(tmp_path):
    small = {"centers": 2, "subjects_per_center": 2, "sequences": ("T1W", "T2W"),
             "shape": (24, 24, 12), "missing": 0.0, "seed": 3}  # fmt: skip
    plain = generate_world(tmp_path / "plain", **small)
    shifted = generate_world(tmp_path / "shifted", protocol_shift=True, **small)
    assert shifted["protocol_shift"] is True
    assert shifted["centers"][0] == plain["centers"][0]
    protocols = shifted["centers"][1]["protocols"]
    assert protocols["T1W"]["contrast_agent"] is False
    assert plain["centers"][1]["protocols"]["T1W"]["contrast_agent"] is True
    assert protocols["T2W"] == plain["centers"][1]["protocols"]["T2W"]

    def liver_enhancement(root):  # liver over the rest of the body, T1W, mean of subjects
        folder = root / "Boreal"  # the second center's layout is nnU-Net's
        liver = json.loads((folder / "dataset.json").read_text())["labels"]["liver"]
        ratios = []
        for label_path in sorted((folder / "labelsTr").glob("*_T1W.nii.gz")):
            image = nib.load(folder / "imagesTr" / label_path.name.replace(".nii", "_0000.nii"))
            data, label = image.get_fdata(), nib.load(label_path).get_fdata()
            ratios.append(data[label == liver].mean() / data[(label > 0) & (label != liver)].mean())
        assert ratios
        return float(np.mean(ratios))

    assert shifted["centers"][1]["name"] == "Boreal"
    # without gadolinium the other organs lose more of their T1 enhancement than the liver:
    # it now outshines the rest of the body instead of matching it
    plain_ratio, native_ratio = (
        liver_enhancement(tmp_path / "plain"),
        liver_enhancement(tmp_path / "shifted"),
    )
    assert plain_ratio < 1.1
    assert native_ratio > 1.3 * plain_ratio
