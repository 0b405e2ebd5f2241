"""Experiments on the models and losses: ablation studies and the demo's take-off study, the
box-regression trajectories and gradient-distortion curves, the benchmark suite and the step
for step comparison with upstream RT-DETRv2. Nothing in the library imports this package."""
