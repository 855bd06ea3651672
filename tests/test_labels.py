"""Label vocabulary, public label maps, shared classes and harmonization."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from xds.catalog import Catalog, build_cohort
from xds.cli.main import cli
from xds.ingest import ingest_nifti
from xds.ingest.sheets import canonical_label_map
from xds.labels.harmonization import harmonize
from xds.labels.mapping import lookup_table
from xds.phantoms import make_centers
from xds.phantoms.anatomy import Anatomy, labels_from_tissues
from xds.phantoms.records import write_label_map
from xds.phantoms.world import affine_for
from xds.schemas import IngestError, SchemaError
from xds.schemas.vocabulary import (
    CLASS_SETS,
    builtin_label_map,
    class_set,
    label_map_names,
    normalize,
    shared_classes,
    vocabulary,
)

AEVAL_SOURCES = ["amos", "flare22", "word", "totalsegmentator", "btcv"]


def test_shared_classes_of_the_aeval_datasets_are_seed_004s_eight():
    maps = [builtin_label_map(n) for n in AEVAL_SOURCES]
    assert set(shared_classes(maps)) == set(CLASS_SETS["aeval8"])
    assert len(CLASS_SETS["aeval8"]) == 8
    result = CliRunner().invoke(cli, ["labels", "shared", *AEVAL_SOURCES])
    assert result.exit_code == 0
    assert set(result.output.split()) == set(CLASS_SETS["aeval8"])
    # Adding the AbdomenAtlas map drops the esophagus; CrossPan leaves only the pancreas.
    assert "esophagus" not in shared_classes([*maps, builtin_label_map("abdomenatlas")])
    assert shared_classes([*maps, builtin_label_map("crosspan")]) == ["pancreas"]


def test_every_synonym_resolves_to_its_class():
    vocab = vocabulary()
    for name, info in vocab.classes.items():
        assert vocab.resolve(name) == name
        for synonym in info["synonyms"]:
            assert vocab.resolve(synonym) == name, synonym
            assert vocab.resolve(synonym.upper().replace("_", " ")) == name
    for parent, children in vocab.parents.items():
        assert vocab.resolve(parent) == parent
        assert vocab.leaves(parent) >= {c for c in children if c not in vocab.parents}
    assert vocab.resolve("postcava") == vocab.resolve("IVC") == "inferior_vena_cava"
    assert vocab.leaves("kidney") == {"kidney_left", "kidney_right"}
    assert len(vocab.leaves("lung")) == 5
    assert vocab.code("liver") == "10200004"
    with pytest.raises(SchemaError, match="unknown class name 'livr'; did you mean liver"):
        vocab.resolve("livr")


def test_each_public_map_round_trips_and_matches_its_documentation(tmp_path):
    sizes = {"amos": 15, "flare22": 13, "word": 16, "totalsegmentator": 117,
             "totalsegmentator_mr": 50, "btcv": 13, "chaos_mr": 4, "chaos_ct": 1,
             "msd_pancreas": 2, "crosspan": 1, "abdomenatlas": 9}  # fmt: skip
    assert set(label_map_names()) == set(sizes)
    for name, size in sizes.items():
        m = builtin_label_map(name)
        assert len(m.classes) == size, name
        assert m.source, f"{name} must cite its source"
        for index, spelled in m.spelled.items():  # the dataset's own spelling resolves
            if (name, spelled) != ("msd_pancreas", "cancer"):  # too generic to be a synonym
                assert vocabulary().resolve(spelled) == m.classes[index]
        # Written as a file in both spellings and read back: the same map.
        as_json = tmp_path / f"{name}.json"
        as_json.write_text(json.dumps({str(i): n for i, n in m.names().items()}))
        assert canonical_label_map(as_json) == m.names()
        as_csv = tmp_path / f"{name}.csv"
        as_csv.write_text("index,name\n" + "".join(f"{i},{n}\n" for i, n in m.names().items()))
        assert canonical_label_map(as_csv) == m.names()
    amos, flare, word = (builtin_label_map(n) for n in ("amos", "flare22", "word"))
    assert (amos.classes[9], amos.spelled[9], amos.classes[8]) == (
        "inferior_vena_cava",
        "postcava",
        "aorta",
    )
    assert (flare.classes[2], flare.classes[13]) == ("kidney_right", "kidney_left")
    assert (word.classes[3], word.classes[11], word.classes[12]) == (
        "kidney_left",
        "small_bowel",
        "adrenal_gland",
    )
    total = builtin_label_map("totalsegmentator")
    assert (total.classes[7], total.classes[63], total.classes[117]) == (
        "pancreas",
        "inferior_vena_cava",
        "costal_cartilages",
    )
    assert builtin_label_map("totalsegmentator_mr").classes[24] == "inferior_vena_cava"
    chaos = {63: "liver", 126: "kidney_right", 189: "kidney_left", 252: "spleen"}
    assert builtin_label_map("chaos_mr").classes == chaos


def test_bad_label_maps_name_the_file_and_value(tmp_path):
    cases = {
        "unknown.json": ('{"1": "liver", "2": "kidneyy"}', "index 2: unknown class name 'kidneyy'"),
        "dup_index.json": ('{"1": "liver", "1": "spleen"}', "duplicate entry '1'"),
        "dup_index.csv": ("index,name\n1,liver\n1,spleen\n", "duplicate label index 1"),
        "dup_class.json": ('{"1": "ivc", "2": "postcava"}', "1 and 2 both name inferior_vena_cava"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(IngestError) as err:
            canonical_label_map(path)
        assert str(err.value).startswith(str(path)), err.value
        assert message in str(err.value)
    with pytest.raises(SchemaError, match="unknown class name 'liverr'"):
        class_set("liverr,spleen")


def test_ingest_with_a_bad_map_registers_nothing(world, catalog):
    root, manifest = world
    center = manifest["centers"][0]
    bad = root.parent / "bad_map.json"
    bad.write_text('{"1": "liver", "2": "not_an_organ"}')
    version = catalog.version
    with pytest.raises(IngestError, match="not_an_organ"):
        ingest_nifti(catalog, root / center["path"], center="X", label_map=bad)
    assert Catalog.open(catalog.root).version == version


def test_lookup_table_merges_parents_and_refuses_to_split():
    word = builtin_label_map("word").classes
    lut, annotated = lookup_table(word, ("adrenal_gland_left", "liver"))
    assert annotated == ["liver"]  # WORD's combined adrenal cannot become the left gland
    assert lut[12] == 0
    assert lut[1] == 2
    amos = builtin_label_map("amos").classes
    lut, annotated = lookup_table(amos, ("kidney", "adrenal_gland"), unmapped="ignore")
    assert annotated == ["kidney", "adrenal_gland"]
    assert (lut[2], lut[3], lut[11], lut[12]) == (1, 1, 2, 2)
    assert lut[6] == 255  # liver: outside the set, ignored
    assert lut[0] == 0


def _same_subject_four_conventions(root: Path) -> list[dict]:
    """One phantom subject's anatomy written with each phantom center's label convention."""
    specs = make_centers(4, ("T1W",), (20, 20, 10), seed=5)
    rng = np.random.default_rng(11)
    anatomy = Anatomy(rng, lesion="tumour")
    affine = affine_for(specs[0], np.zeros(3))
    shape = specs[0].shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    tissues = anatomy.tissue_map(ijk @ affine[:3, :3].T + affine[:3, 3])
    image = rng.normal(100, 10, shape).astype(np.float32)
    out = []
    for spec in specs:
        folder = root / spec.style
        case = folder / "subj1" / "T1_VIBE"
        case.mkdir(parents=True)
        labels = labels_from_tissues(tissues, {n: i for i, n in spec.label_map.items() if i})
        nib.save(nib.Nifti1Image(image, affine), case / "image.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), case / "mask.nii.gz")
        out.append(
            {"style": spec.style, "folder": folder, "map": folder / write_label_map(folder, spec)}
        )
    return out


def test_harmonizing_four_conventions_of_one_subject_gives_identical_maps(tmp_path):
    conventions = _same_subject_four_conventions(tmp_path / "src")
    cat = Catalog.create(tmp_path / "catalog")
    for c in conventions:
        ingest_nifti(
            cat,
            c["folder"],
            center=c["style"],
            dataset="conv",
            label_map=c["map"],
            layout="folders",
        )
    build_cohort(cat, "has_label", "all")
    report = harmonize(cat, "all", classes="aeval8")
    assert report.labels_added == 4
    assert report.not_annotated["esophagus"] == 4  # no phantom center labels it
    rows = {r["center"]: r for r in cat.sql(
        "SELECT s.center, l.uri, l.classes_annotated, l.derived_from, l.class_set "
        "FROM labels l JOIN scans s USING (scan_id) WHERE l.class_set = 'aeval8'"
    ).to_pylist()}  # fmt: skip
    data = {k: np.asarray(nib.load(cat.resolve(r["uri"])).dataobj) for k, r in rows.items()}
    full = ("bids", "nnunet", "folders")  # all label the aeval8 organs the phantom has
    for style in full[1:]:
        assert np.array_equal(data[style], data["bids"]), style
    # Every aeval8 class but the esophagus (6th), which the phantom does not have.
    assert set(np.unique(data["bids"]).tolist()) == {0, 1, 2, 3, 4, 5, 7, 8}
    assert rows["flat"]["classes_annotated"] == ["pancreas"]
    assert "liver" in rows["bids"]["classes_annotated"]
    assert all(r["derived_from"] and r["class_set"] == "aeval8" for r in rows.values())
    # The pancreas-only center agrees on the pancreas with everyone.
    pancreas = CLASS_SETS["aeval8"].index("pancreas") + 1
    for style in full:
        assert np.array_equal(data[style] == pancreas, data["flat"] == pancreas)
    # Source labels are kept; a second run adds nothing.
    assert cat.count("labels") == 8
    assert harmonize(cat, "all", classes="aeval8").labels_added == 0
    # CrossPan's set and the ignore value.
    harmonize(cat, "all", classes="crosspan", unmapped="ignore")
    cross = cat.sql("SELECT uri FROM labels WHERE class_set = 'crosspan'").to_pylist()
    values = {int(v) for r in cross for v in np.unique(nib.load(cat.resolve(r["uri"])).dataobj)}
    assert values == {0, 1, 255}
    got = cat.sql(
        "SELECT count(*) AS n FROM scan_view WHERE list_contains(annotated_classes, 'liver')"
    )
    assert got.to_pylist() == [{"n": 3}]


def test_a_label_value_missing_from_its_map_stops_harmonize_cleanly(tmp_path):
    conventions = _same_subject_four_conventions(tmp_path / "src")
    bids = next(c for c in conventions if c["style"] == "bids")
    cat = Catalog.create(tmp_path / "catalog")
    ingest_nifti(
        cat, bids["folder"], center="bids", label_map=bids["map"], layout="folders", link=False
    )
    build_cohort(cat, "has_label", "all")
    uri = cat.sql("SELECT uri FROM labels").to_pylist()[0]["uri"]
    path = cat.resolve(uri)
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 42
    nib.save(nib.Nifti1Image(data, img.affine), path)
    version = cat.version
    with pytest.raises(
        IngestError, match=r"label value\(s\) \[42\] are not in its label map"
    ) as err:
        harmonize(cat, "all", classes="aeval8")
    assert str(path) in str(err.value)
    assert Catalog.open(cat.root).version == version


def test_normalize_and_sets():
    assert normalize(" Inferior Vena-Cava ") == "inferior_vena_cava"
    assert class_set("touchstone9")[-1] == "pancreas"
    assert class_set("liver, postcava") == ("liver", "inferior_vena_cava")


def test_generic_label_names_stand_for_themselves():
    vocab = vocabulary()
    assert vocab.resolve("Label_7") == "label_7"
    assert class_set("generic:3") == ("label_1", "label_2", "label_3")
    assert class_set("label_2, liver") == ("label_2", "liver")
    for bad in ("label_0", "label_x", "label_07"):
        with pytest.raises(SchemaError):
            vocab.resolve(bad)


def test_labels_and_harmonize_commands(tmp_path):
    result = CliRunner().invoke(cli, ["labels", "show", "amos", "--json"])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["labels"][8] == {"index": 9, "name": "postcava", "class": "inferior_vena_cava"}
    result = CliRunner().invoke(cli, ["labels", "resolve", "IVC", "--json"])
    assert json.loads(result.output)[0]["class"] == "inferior_vena_cava"
    assert CliRunner().invoke(cli, ["labels", "shared", "amos", "nosuchmap"]).exit_code == 1
    conventions = _same_subject_four_conventions(tmp_path / "src")
    cat = Catalog.create(tmp_path / "catalog")
    for c in conventions[:2]:
        ingest_nifti(cat, c["folder"], center=c["style"], label_map=c["map"], layout="folders")
    build_cohort(cat, "has_label", "two")
    base = ["--catalog", str(cat.root)]
    result = CliRunner().invoke(
        cli, [*base, "harmonize", "two", "--classes", "liver,kidney", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["labels_added"], report["classes"]) == (2, ["liver", "kidney"])
    result = CliRunner().invoke(cli, [*base, "harmonize", "two", "--classes", "livr"])
    assert result.exit_code == 1
    assert "did you mean liver" in result.output


def test_exports_map_classes_through_the_vocabulary():
    """One mapping path: a parent class merges its children, as harmonize does, and names
    that match exactly map as they always did; unreliable voxels stay ignored."""
    from xds.labels.mapping import IGNORE, choose_classes, class_table
    from xds.schemas.errors import ExportError

    two_kidneys = {0: "background", 1: "kidney_left", 2: "kidney_right", 3: "liver"}
    one_kidney = {0: "background", 1: "liver", 2: "kidney_left", 255: "ignore"}
    maps = {"a": two_kidneys, "b": one_kidney}
    # kidney is annotated only where both kidneys are: everywhere with --partial, else refused
    with pytest.raises(ExportError, match="kidney"):
        choose_classes(maps, ["liver", "kidney"])
    assert choose_classes(maps, ["liver", "kidney"], partial=True) == ["liver", "kidney"]
    lut, annotated = class_table(two_kidneys, ["liver", "kidney"])
    assert lut == (0, 2, 2, 1)
    assert annotated == ("liver", "kidney")
    lut, annotated = class_table(one_kidney, ["liver", "kidney"])
    assert lut[:3] == (0, 1, 2)
    assert lut[255] == IGNORE
    assert annotated == ("liver",)
    # a name the vocabulary does not know stands only for itself
    lut, annotated = class_table({0: "background", 1: "label_7", 2: "mystery_organ"},
                                 ["mystery_organ"])  # fmt: skip
    assert lut == (0, 0, 1)
    assert annotated == ("mystery_organ",)
    # the default classes are still the ones every map names, in the order of the map most
    # cases use (here b: liver is its index 1)
    assert choose_classes(maps, None) == ["liver", "kidney_left"]
    assert choose_classes(maps, None, usage=Counter(a=3, b=1)) == ["kidney_left", "liver"]
