import pytest
import torch

from lrq_kernels.formats.packing import pack_codes, packed_row_bytes, unpack_codes


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("n,k", [(1, 1), (3, 7), (5, 13), (2, 64), (7, 129), (4, 1152)])
def test_pack_unpack_roundtrip_bit_exact(bits, n, k):
    codes = torch.randint(0, 2 ** bits, (n, k), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (n, packed_row_bytes(k, bits))
    assert torch.equal(unpack_codes(packed, bits, k), codes)


def test_packed_sizes_really_cost_3_and_4_bits():
    assert packed_row_bytes(1024, 4) * 8 == 1024 * 4
    assert packed_row_bytes(1024, 3) * 8 == 1024 * 3
    assert packed_row_bytes(13, 3) == 6      # padded to 16 codes: 48 bits
    assert packed_row_bytes(13, 4) == 7


def test_4bit_layout_low_nibble_first():
    codes = torch.tensor([[1, 2, 15, 0, 7]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x0F, 0x07]]


def test_3bit_layout_two_planes():
    # codes 0..7: low 2 bits 0,1,2,3,0,1,2,3; high bit 0,0,0,0,1,1,1,1
    codes = torch.arange(8, dtype=torch.uint8)[None]
    lo0 = 0 | (1 << 2) | (2 << 4) | (3 << 6)
    assert pack_codes(codes, 3).tolist() == [[lo0, lo0, 0b11110000]]


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 8\).*got range \[0, 9\]"):
        pack_codes(torch.tensor([[0, 9]]), 3)


def test_pack_rejects_bad_bits_and_unpack_bad_width():
    with pytest.raises(ValueError, match="bits must be one of .* got 5"):
        pack_codes(torch.zeros(1, 4, dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="k=10 at bits=4 needs 5"):
        unpack_codes(torch.zeros(1, 4, dtype=torch.uint8), 4, 10)
