"""xds: a data-centric toolkit for multi-center medical image segmentation datasets."""

__version__ = "0.1.0"
