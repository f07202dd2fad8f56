"""Default sizes of the DMPO layers, written once.

The layers, ``DMPOClassifier``'s arguments and the FLOPs counter's
hand-written descriptions all read them here. The module imports nothing,
so the FLOPs counter (which must run without Keras) can import it too.
"""

# Covariance exit heads. iSQRT-COV matched the exact matrix root with 3-5
# Newton-Schulz iterations; each one costs ``6 d^3`` FLOPs.
COVARIANCE_DIM = 32
COVARIANCE_ITERATIONS = 5
COVARIANCE_FUSION = "mean"

# Bypass adapters between the trunk and the early heads.
BYPASS_DIM = 16
BYPASS_KERNEL_SIZE = 3

# Trunk tuning: parallel adapters around the frozen blocks, or LoRA.
ADAPTER_DIM = 16
ADAPTER_SCALE = 0.1
LORA_RANK = 8
