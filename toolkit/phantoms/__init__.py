"""The phantom world: generated multi-center abdominal MRI for tests and the demo."""

from xds.phantoms.world import CenterSpec, generate_world, make_centers

__all__ = ["CenterSpec", "generate_world", "make_centers"]
