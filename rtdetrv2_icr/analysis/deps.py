"""The project functions the analysis uses, named in one place.

The simulation never re-implements a loss: every IoU-family term, the containment, the ICR factor
and the C-BBL pieces come from the library. If the library moves them, adjust the imports here.
"""
from ..loss.box_ops import box_cxcywh_to_xyxy, paired_box_iou      # noqa: F401
from ..loss.cbbl import cbbl_ce, cbbl_grid, two_hot                  # noqa: F401
from ..loss.icr import containment, icr_factor
from ..loss.iou import iou_family_loss                               # noqa: F401
from ..nn.box_utils import inverse_sigmoid                           # noqa: F401

__all__ = ["box_cxcywh_to_xyxy", "paired_box_iou", "cbbl_ce", "cbbl_grid", "two_hot",
           "containment", "icr_factor", "iou_family_loss", "inverse_sigmoid", "plate_icr_factor"]


def plate_icr_factor(c, lam: float, mode: str, tol: float = 1e-6):
    """ICR factor of a plate prediction with containment ``c`` in its vehicle [...] -> [...].
    The simulated ground-truth plates lie wholly inside their vehicle, so the reference
    containment is 1 and the shortfall is 1 - c."""
    return icr_factor(c, lam, mode, tol)
