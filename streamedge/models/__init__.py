"""Models that run on this machine: a generic ONNX classifier and built-in demo models."""
