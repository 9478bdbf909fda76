"""Using a trained model outside PyTorch: ONNX export, ONNX Runtime, quantisation."""
