import json
import shlex
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from xds.cli.main import cli


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(_commands(cli)), ids=" ".join)
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert len(result.output) > 80


def test_every_leaf_command_has_json():
    for path in _commands(cli):
        command = cli
        for name in path:
            command = command.commands[name]
        if not hasattr(command, "commands"):
            assert any(p.name == "as_json" for p in command.params), path


def test_usage_errors_exit_2_and_missing_catalog_exits_1(tmp_path):
    assert CliRunner().invoke(cli, ["split"]).exit_code == 2
    result = CliRunner().invoke(cli, ["--catalog", str(tmp_path / "none"), "cohorts"])
    assert result.exit_code == 1
    assert "no catalog here" in result.output


def test_phantoms_command(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "phantoms",
            "--out",
            str(tmp_path / "w"),
            "--centers",
            "2",
            "--subjects-per-center",
            "2",
            "--shape",
            "24,24,12",
            "--json",
            "-j",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert len(manifest["centers"]) == 2
    assert (tmp_path / "w" / "world.json").exists()
    assert manifest["variability"] == 1.0
    wide = CliRunner().invoke(cli, ["phantoms", "--out", str(tmp_path / "v"), "--centers", "1",
                                    "--subjects-per-center", "1", "--shape", "16,16,8",
                                    "--variability", "3", "--json"])  # fmt: skip
    assert wide.exit_code == 0, wide.output
    assert json.loads(wide.output)["variability"] == 3.0
    too_wide = CliRunner().invoke(cli, ["phantoms", "--out", str(tmp_path / "x"),
                                        "--variability", "9"])  # fmt: skip
    assert too_wide.exit_code == 2
    assert "--variability" in too_wide.output


def _tour() -> list[list[str]]:
    """The README's tour: its environment settings and its xds command lines."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("<!-- tour:start") : readme.index("<!-- tour:end -->")]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(("xds ", "export "))]


@pytest.mark.slow
def test_demo_runs_end_to_end_within_seven_minutes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["demo", "--out", "xds-demo", "--json", "-j", "2"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert elapsed < 420  # about 200 s on 2 cores, two small training runs included
    assert summary["audit"]["clean"]
    assert summary["quarantined"] == 0
    assert summary["scans_ingested"] == summary["cohort"]["n_scans"]
    roles = summary["split"]["roles"]
    assert set(roles) == {"train", "val", "test"}
    assert (tmp_path / "xds-demo" / "nnunet_raw" / "Dataset501_Pancreas" / "dataset.json").exists()
    assert (tmp_path / "xds-demo" / "catalog" / "_versions").exists()
    # the training part: a T1W model fails on T2W, both models are in the report
    scores = summary["training"]["dice_by_sequence"]
    assert set(scores) == {"demo-t1w", "demo-joint"}
    assert scores["demo-t1w"]["T1W"] > scores["demo-t1w"]["T2W"] + 0.3
    assert (tmp_path / "xds-demo" / "report" / "report.html").exists()
    # The README's ten-minute tour runs on the demo's catalog, every line of it.
    env = {}
    tour = _tour()
    assert len(tour) >= 10
    for words in tour:
        if words[0] == "export":
            key, value = words[1].split("=", 1)
            env[key] = value
            continue
        step = CliRunner().invoke(cli, words[1:], env=env)
        assert step.exit_code == 0, f"{' '.join(words)}: {step.output}"
    assert (tmp_path / "tour" / "report" / "report.html").exists()
    assert json.loads((tmp_path / "tour" / "loso.json").read_text())["test"]
    # Running it again replaces the earlier demo instead of failing.
    again = CliRunner().invoke(
        cli,
        [
            "demo",
            "--out",
            "xds-demo",
            "--json",
            "--centers",
            "2",
            "--subjects-per-center",
            "3",
            "--epochs",
            "0",
        ],
    )
    assert again.exit_code == 0, again.output
    assert "training" not in json.loads(again.output)


def test_dicom_commands(tmp_path):
    import json

    world, catalog = tmp_path / "w", tmp_path / "c"
    result = CliRunner().invoke(
        cli,
        ["phantoms", "--out", str(world), "--format", "dicom", "--centers", "1",
         "--subjects-per-center", "2", "--shape", "16,16,8", "--sequences", "T1W,T2W", "-j", "1",
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["format"] == "dicom"
    center = manifest["centers"][0]
    base = ["--catalog", str(catalog)]
    result = CliRunner().invoke(
        cli,
        [
            *base,
            "ingest",
            "dicom",
            str(world / center["path"]),
            "--center",
            "A",
            "-j",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["scans_added"] == len(center["series"])
    assert report["files_in_scans"] + report["files_in_labels"] + report["files_quarantined"] == (
        report["files_found"]
    )
    assert any("not a DICOM file" in p["error"] for p in report["problems"])
    scan = json.loads(
        CliRunner()
        .invoke(cli, [*base, "sql", "SELECT scan_id FROM scans LIMIT 1", "--json"])
        .output
    )[0]["scan_id"]
    result = CliRunner().invoke(cli, [*base, "set-sequence", scan, "--sequence", "flair", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["changed"] == 1
    result = CliRunner().invoke(cli, [*base, "set-sequence", "scn-x", "--sequence", "T2W"])
    assert result.exit_code == 1
    assert "unknown scan id" in result.output
    result = CliRunner().invoke(cli, [*base, "migrate"])
    assert result.exit_code == 0
    assert "up to date" in result.output
