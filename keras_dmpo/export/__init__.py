"""Export: TFLite (LiteRT) stage graphs with a manifest, and ONNX."""
