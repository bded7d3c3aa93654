import math

import pytest
import torch

from lrq_kernels.formats.codebooks import (TLQGrid, int_codebook, is_e4m3_exact, nf_codebook, round_to_e4m3,
                                           tlq_candidate_grids, tlq_codebook)


def test_tlq_log2_grid_levels():
    cb = tlq_codebook(4, TLQGrid("geometric", 2.0))
    mags = [2.0 ** -k for k in range(8)]
    assert cb.tolist() == mags + [-m for m in mags]          # code = sign << 3 | k


def test_tlq_log_sqrt2_grid_is_rounded_geometric():
    cb = tlq_codebook(3, TLQGrid("geometric", math.sqrt(2)))
    want = round_to_e4m3(torch.tensor([math.sqrt(2) ** -k for k in range(4)]))
    assert torch.equal(cb[:4], want) and torch.equal(cb[4:], -want)


def test_tlq_zero_variant_replaces_smallest_magnitude():
    cb = tlq_codebook(3, TLQGrid("geometric", 2.0, zero=True))
    assert cb[:4].tolist() == [1.0, 0.5, 0.25, 0.0]


def test_tlq_interleaved_grid():
    cb = tlq_codebook(4, TLQGrid("interleaved", 2.0, rho=0.75))
    assert cb[:8].tolist() == [1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125, 0.09375]


@pytest.mark.parametrize("bits", [3, 4])
def test_all_candidate_grids_are_e4m3_exact_and_distinct(bits):
    grids = tlq_candidate_grids(bits)
    assert len(grids) >= 12
    for g in grids:
        cb = tlq_codebook(bits, g)
        assert cb.numel() == 2 ** bits and is_e4m3_exact(cb)
        m = g.magnitudes(bits)
        assert torch.all(m[:-1] > m[1:]), g          # strictly descending magnitudes


@pytest.mark.parametrize("bits", [3, 4])
def test_int_and_nf_codebooks(bits):
    q = 2 ** (bits - 1) - 1
    assert int_codebook(bits)[: 2 * q + 1].tolist() == list(range(-q, q + 1))
    nf = nf_codebook(bits)
    assert nf.numel() == 2 ** bits and is_e4m3_exact(nf) and is_e4m3_exact(int_codebook(bits))
    assert nf.max() == 1.0 and nf.min() == -1.0 and (nf == 0).sum() == 1


def test_nf4_matches_qlora_table_up_to_e4m3_rounding():
    qlora = torch.tensor([-1.0, -0.6961928, -0.5250730, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                          0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0])
    assert torch.equal(nf_codebook(4), round_to_e4m3(qlora))
