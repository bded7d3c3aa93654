import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def dense_hadamard(n: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix by Kronecker products (independent of the butterfly under test)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    assert h.shape[0] == n
    return h


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def student_t(n, k, nu, scale=0.02):
    return torch.distributions.StudentT(float(nu)).sample((n, k)) * scale

