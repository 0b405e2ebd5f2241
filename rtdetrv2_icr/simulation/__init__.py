"""Box-regression simulations without a model or data: the trajectory of a plate's box under
each IoU-family loss with and without ICR (the plate-in-vehicle scene), the DIoU paper's
simulation protocol, and the gradient-distortion curves of the losses and C-BBL
(tools/trajectory.py). Nothing in the library imports this package."""
