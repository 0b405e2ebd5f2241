"""Set criterion, matcher and box losses (IoU family, ICR, C-BBL, balanced weightings)."""
