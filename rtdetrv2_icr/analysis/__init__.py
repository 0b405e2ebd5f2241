"""Analysis tools that need no dataset: box-regression trajectories under the IoU family with
and without the ICR penalty, and the gradient-distortion curves (``tools/trajectory.py``).

This package imports the project's losses and box geometry, and nothing in the project imports
it; importing ``rtdetrv2_icr`` does not load it (matplotlib is only needed for the figures).
"""
