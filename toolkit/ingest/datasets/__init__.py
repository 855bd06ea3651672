"""Public datasets as they are downloaded: one adapter module per dataset.

``xds ingest dataset NAME DIR`` (:func:`ingest_dataset`) reads a downloaded copy with its
adapter; :data:`ADAPTERS` names them. To add one, see the README's Development section.
"""

from xds.ingest.datasets.ingest import ADAPTERS, ingest_dataset

__all__ = ["ADAPTERS", "ingest_dataset"]
