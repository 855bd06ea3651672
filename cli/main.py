"""``xds``: the command line. Each command parses, calls one library function, prints.

This module holds only the group, its error handling (:class:`~xds.cli.options.XdsGroup`)
and the registration. The commands live in one module per toolkit package: phantoms,
ingest, pacs, catalog, labels, splits, export, evaluation, training, synth, demo.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback); 2 usage.
Library modules are imported inside the commands so ``xds --help`` starts fast.
"""

from __future__ import annotations

import os

import click

from xds.cli import (
    catalog,
    demo,
    evaluation,
    export,
    ingest,
    labels,
    pacs,
    phantoms,
    qc,
    splits,
    synth,
    training,
)
from xds.cli.options import State, XdsGroup

DEFAULT_CATALOG = "./xds-catalog"
MODULES = (phantoms, ingest, pacs, catalog, qc, labels, splits, export, evaluation, training, synth,
           demo)  # fmt: skip
"""The command modules, in the order data flows through xds."""


@click.group(cls=XdsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--catalog",
    envvar="XDS_CATALOG",
    default=DEFAULT_CATALOG,
    show_default=True,
    help="Catalog directory (env XDS_CATALOG).",
)
@click.version_option(package_name="xds-toolkit")
@click.pass_context
def cli(ctx: click.Context, catalog: str) -> None:
    """xds: catalog, split, harmonize and export multi-center segmentation datasets.

    Start with `xds demo`, which builds a phantom world and runs the whole pipeline.
    """
    ctx.obj = State(catalog)


for _module in MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONHASHSEED", "0")
    cli(prog_name="xds")


if __name__ == "__main__":
    main()
