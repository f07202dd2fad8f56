"""Inference: analytic FLOPs (``flops``) and exit-threshold calibration (``calibration``)."""
