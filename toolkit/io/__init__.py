"""Files and workers every stage shares.

- :mod:`~xds.io.images`: read, check, store and hash NIfTI volumes (no header text, clean
  gzip headers);
- :mod:`~xds.io.deid`: pseudonyms under the catalog's key, scrubbed names, shifted dates;
- :mod:`~xds.io.fingerprint`: image fingerprints for near-duplicate search;
- :mod:`~xds.io.parallel`: progress bars over worker processes, the compute device;
- :mod:`~xds.io.integrity`: ``xds verify``, every stored byte checked for hashes and
  identifiers.
"""

from xds.io.deid import pseudonym
from xds.io.images import Volume, read_volume, store_volume, write_volume
from xds.io.integrity import VerifyReport, verify
from xds.io.parallel import default_jobs, progress_map, resolve_device

__all__ = [
    "VerifyReport",
    "Volume",
    "default_jobs",
    "progress_map",
    "pseudonym",
    "read_volume",
    "resolve_device",
    "store_volume",
    "verify",
    "write_volume",
]
