"""ICR-DETR: RT-DETRv2 with the inter-class relational (ICR) penalty.

Importing the package registers every component (models, losses, datasets,
transforms, optimisers) so that configs can name them.
"""
from . import core  # noqa: F401  (registry first)
from . import nn, loss, data, engine  # noqa: F401

__version__ = "0.1.0"
