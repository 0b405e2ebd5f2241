"""ICR-DETR: RT-DETRv2 and UAV-DETR with the inter-class relational (ICR) penalty.

Importing the package registers every component a config can name: models, losses, datasets,
transforms, collate functions, optimisers and schedulers, the EMA and the evaluator. The stages
that no config names (predict, experiments, prepare) are imported only where they are used.
"""

from rtdetrv2_icr import (  # noqa: F401
    core,  # registry first
    data,
    evaluate,
    loss,
    nn,
    train,
)

__version__ = "0.1.0"
