"""Experiments on the models and losses: ablation studies and the demo's take-off study, the
benchmark suite, the step for step comparison with upstream RT-DETRv2, the GPU check and the
demo. Nothing in the library imports this package."""
