import math

import pytest
import torch
from conftest import dense_hadamard, rel_err

from lrq_kernels import default_block, hadamard_transform
from lrq_kernels.reference.hadamard import block_hadamard_ref


@pytest.mark.parametrize("dim", [1, 2, 137, 1024])
def test_hadamard_transform_matches_dense_matrix(dim):
    x = torch.randn(5, dim, dtype=torch.float64)
    n = 1 << (dim - 1).bit_length()
    want = (torch.nn.functional.pad(x, (0, n - dim)) @ dense_hadamard(n) * 0.25)[:, :dim]
    got = hadamard_transform(x, scale=0.25)
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hadamard_transform_dtypes_within_2x_same_dtype_torch_error(dtype):
    x = torch.randn(3, 7, 256, dtype=torch.float64)
    want = x @ dense_hadamard(256) / 16
    got = hadamard_transform(x.to(dtype), scale=1 / 16)
    torch_same_dtype = (x.to(dtype) @ dense_hadamard(256).to(dtype)) / 16   # the dtype's own PyTorch error
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_err(got, want) <= 2 * rel_err(torch_same_dtype, want) + 1e-7


def test_hadamard_transform_autograd():
    x = torch.randn(3, 137, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hadamard_transform(t, 0.5), (x,))


def test_normalised_transform_is_involution():
    x = torch.randn(4, 512)
    y = hadamard_transform(hadamard_transform(x, 1 / math.sqrt(512)), 1 / math.sqrt(512))
    assert rel_err(y, x) < 1e-6


@pytest.mark.parametrize("block", [1, 2, 32, 128])
def test_block_hadamard_on_1152_matches_block_diagonal_matrix(block):
    x = torch.randn(6, 1152, dtype=torch.float64)
    hb = dense_hadamard(block) / math.sqrt(block)
    dense = torch.block_diag(*[hb] * (1152 // block))
    assert rel_err(block_hadamard_ref(x, block), x @ dense) < 1e-12


def test_block_hadamard_rejects_bad_block():
    with pytest.raises(ValueError, match="block must be a power of two dividing K=1152, got 256"):
        block_hadamard_ref(torch.randn(2, 1152), 256)


@pytest.mark.parametrize("k,b", [(1152, 128), (4608, 512), (13824, 512), (15360, 1024), (12288, 1024),
                                 (3072, 1024), (4096, 4096), (16384, 16384), (2432, 128), (137, 1)])
def test_default_block(k, b):
    assert default_block(k) == b


def test_hadamard_transform_bad_inputs():
    with pytest.raises(TypeError, match="x must have dtype in .*got int32"):
        hadamard_transform(torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        hadamard_transform([1.0, 2.0])
