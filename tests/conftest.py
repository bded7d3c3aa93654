import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Each test plans its kernels afresh (a test may pretend a backend can or cannot run)."""
    from lrq_kernels.ops import dispatch
    dispatch.clear()
    yield
    dispatch.clear()


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



def assert_compile_and_cuda_graph_match_eager(module, x):
    """torch.compile(fullgraph=True) of `module` and a CUDA-graph capture of its forward give the eager output
    (the graph replayed on new data in the captured input buffer)."""
    eager = module(x)
    assert torch.equal(torch.compile(module, fullgraph=True)(x), eager)
    static_x = x.clone()
    module(static_x)                                    # warm-up (compiles the kernels) outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = module(static_x)
    static_x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, module(static_x))
