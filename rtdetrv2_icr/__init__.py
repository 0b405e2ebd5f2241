"""ICR-DETR: RT-DETRv2 with the inter-class relational (ICR) penalty.

Importing the package registers every component (models, losses, datasets,
transforms, optimisers) so that configs can name them.
"""

from . import (  # noqa: F401
    core,  # noqa: F401  (registry first)
    data,
    engine,
    loss,
    nn,
)

__version__ = "0.1.0"
