import hashlib

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
