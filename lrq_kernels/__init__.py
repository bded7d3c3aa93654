"""lrq_kernels: low-bit inference kernels for Diffusion Transformers (LRQ-DiT's TLQ weights, ARS rotation,
per-token FP8/INT8/INT4 activations). Importing never needs a GPU or the compiled extension.

    quantize_weight(w, bits, fmt, group_size, hessian) -> QuantizedWeight   weights (formats/; GPTQ with H)
    hadamard_transform(x, scale), hadamard_quant(x, rotation, ...)    rotations and activations (ops/)
    QuantConfig, QuantLinear, quantize_model, calibrate               modules (nn/)
    save_quantized, load_quantized, load_quantized_model              checkpoints (nn/checkpoint.py)
    apply_tensor_parallel, shard_quant_linear                         tensor parallelism (nn/parallel.py)
    Tuning, tuning, set_tuning, get_tuning                            the kernel-choice policy (ops/policy.py)
"""
from .formats.weight import QuantizedWeight, quantize_weight, sqnr_db
from .nn.linear import QuantConfig, QuantLinear, weight_bytes
from .nn.checkpoint import load_quantized, load_quantized_model, save_quantized
from .nn.model import calibrate, quantize_model
from .nn.parallel import apply_tensor_parallel, shard_quant_linear
from .ops import Tuning, get_tuning, hadamard_quant, hadamard_transform, set_tuning, tuning
from .rotation.ars import ActStats, choose_rotation, stats_from_tokens
from .rotation.rotation import Rotation, default_block

__version__ = "0.1.0"

__all__ = ["QuantizedWeight", "quantize_weight", "sqnr_db", "QuantConfig", "QuantLinear", "weight_bytes",
           "calibrate", "load_quantized", "load_quantized_model", "quantize_model", "save_quantized", "apply_tensor_parallel",
           "shard_quant_linear", "hadamard_quant", "Tuning", "tuning", "set_tuning", "get_tuning",
           "hadamard_transform", "ActStats", "choose_rotation", "stats_from_tokens", "Rotation", "default_block"]
