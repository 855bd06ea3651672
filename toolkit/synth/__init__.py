"""Synthetic data: Anatomix sets (Pancakes) from real label maps, as files and a dataset.

>>> from xds.synth import AnatomixConfig, synth_anatomix  # doctest: +SKIP
>>> synth_anatomix(None, "labels/", out="anatomix", sets=8, set_size=4)  # doctest: +SKIP
"""

from xds.synth.anatomix import GeneratedSet, SynthReport, generate, synth_anatomix
from xds.synth.templates import AnatomixConfig, StructurePool, load_structures

__all__ = [
    "AnatomixConfig",
    "GeneratedSet",
    "StructurePool",
    "SynthReport",
    "generate",
    "load_structures",
    "synth_anatomix",
]
