"""Centers that live in a PACS: index the metadata, choose in SQL, pull only that.

:mod:`~xds.pacs.store` keeps connections and the raw UIDs a retrieval needs, outside every
table; :mod:`~xds.pacs.remote` is one interface over DICOMweb (:mod:`~xds.pacs.dicomweb`)
and DIMSE (:mod:`~xds.pacs.dimse`); :mod:`~xds.pacs.listing` makes capped answers whole;
:mod:`~xds.pacs.index` registers ``remote`` series; :mod:`~xds.pacs.pull` retrieves,
checks and ingests them.
"""

from xds.pacs.index import IndexReport, index_pacs
from xds.pacs.pull import PullReport, plan_pull, pull_cohort
from xds.pacs.store import Connection, PacsStore, add_pacs

__all__ = [
    "Connection",
    "IndexReport",
    "PacsStore",
    "PullReport",
    "add_pacs",
    "index_pacs",
    "plan_pull",
    "pull_cohort",
]
