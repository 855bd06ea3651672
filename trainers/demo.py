"""The training part of ``xds demo``: CrossPan's collapse in small, on a laptop.

A model trained on one sequence's train scans (T1W) is scored on every sequence's test
scans; a model trained on all sequences is scored on the same test scans; ``xds report``
compares them by sequence and center. On the phantom world the single-sequence model does
well on its own sequence and fails on the others (fluid and fat swap brightness between T1W
and T2W), and joint training recovers most of it. The liver is the class: at the demo's
8 mm grid and a few hundred batches the pancreas is a few voxels, which needs far longer
training than a demo has. One center does not annotate the liver: its scans train the
other classes' background nothing wrong (the partial-label loss) and are not scored.
"""

from __future__ import annotations

from pathlib import Path

from xds.catalog import Catalog
from xds.evaluate import evaluate
from xds.trainers.runs import predict_run, train_run
from xds.trainers.torch_backend import TorchConfig

CLASSES = ["liver"]


def train_demo(
    catalog: Catalog,
    cohort: str,
    split: str,
    out: str | Path,
    *,
    single: str = "T1W",
    epochs: int = 10,
    base_features: int = 8,
    device: str = "auto",
) -> dict:
    """Train single-sequence and joint models, score them per sequence, write the report.

    The single-sequence model trains ``epochs`` epochs, the joint one ``epochs`` times the
    number of sequences: the same passes over each of its training scans.

    Returns mean Dice per (model, sequence) and the report's path.
    """
    from xds.report import build_report

    sequences = catalog.sql(
        "SELECT count(DISTINCT sequence) AS n FROM scan_view WHERE scan_id IN "
        f"(SELECT scan_id FROM splits WHERE name = '{split}' AND role = 'train')"
    ).to_pylist()[0]["n"]
    scores: dict[str, dict[str, float]] = {}
    names = []
    # the joint model sees every sequence's scans as often as the single one sees its own
    for label, where, n in ((single, f"sequence = '{single}'", epochs),
                            ("joint", None, epochs * max(1, sequences))):  # fmt: skip
        name = f"demo-{label.lower()}"
        config = TorchConfig.small(epochs=n, base_features=base_features, seed=0)
        run = train_run(catalog, cohort, split=split, config=config, classes=CLASSES,
                        train_where=where, name=name, device=device, partial=True,
                        progress=False)  # fmt: skip
        predicted = predict_run(catalog, run.name, device=device)
        catalog = catalog.latest()
        evaluate(catalog, predicted["uri"], cohort=cohort, split=split, role="test",
                 classes=CLASSES, name=name, trained_on=label)  # fmt: skip
        rows = catalog.sql(
            "SELECT sequence, avg(dice) AS dice FROM metric_view "
            f"WHERE evaluation = '{name}' GROUP BY sequence ORDER BY sequence"
        ).to_pylist()
        scores[name] = {r["sequence"]: round(r["dice"], 3) for r in rows}
        names.append(name)
    build_report(catalog, names, out=Path(out), by=("sequence", "center"),
                          n_resamples=500, force=True,
                          title="xds demo: one sequence vs all sequences")  # fmt: skip
    return {"classes": CLASSES, "dice_by_sequence": scores, "report": str(Path(out))}
