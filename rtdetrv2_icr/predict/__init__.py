"""Using a trained model: pre-processing from a config, the deploy model and its ONNX export,
onnxruntime, the `Predictor` over images, folders and videos, media input/output (drawing is
data/draw.py, shared with evaluation), and an ONNX export as the detector of an evaluation
(onnx_eval.py, tools/eval.py --onnx).
Nothing here is imported by training; onnx, onnxruntime and PyAV are imported only when used."""
