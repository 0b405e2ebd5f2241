"""Evaluation: the one evaluation loop (`evaluate`, `evaluate_checkpoint`), the distributed
`CocoEvaluator` and its COCO metrics, the confusion matrix, the result files, their plots and
TensorBoard. Importing it registers `CocoEvaluator`."""

from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator, build_evaluator, metric_value
from rtdetrv2_icr.evaluate.loop import evaluate, evaluate_checkpoint

__all__ = ["CocoEvaluator", "build_evaluator", "metric_value", "evaluate", "evaluate_checkpoint"]
