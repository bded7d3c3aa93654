"""Pure-PyTorch references: the specification of every op, its CPU fallback and the tests' oracle."""
from .act_quant import (act_qmax, dequantize_tokens_ref, quantize_tokens_ref, rotate_quantize_ref,
                        rotate_ref)
from .gemm import gemm_a8_ref, gemm_a16_ref, unrotate_weight_ref
from .hadamard import block_hadamard_ref, fwht, hadamard_transform_ref

__all__ = ["rotate_ref", "rotate_quantize_ref", "act_qmax", "dequantize_tokens_ref", "quantize_tokens_ref", "gemm_a8_ref", "gemm_a16_ref", "unrotate_weight_ref",
           "block_hadamard_ref", "fwht", "hadamard_transform_ref"]
