"""Dense 4-bit and 3-bit packings of weight codes along K (the reduction dim), one row per output channel.

4-bit: two codes a byte, low nibble first. K is padded to even with code 0.

    byte j of row n:   bit 7..4        bit 3..0
                       code[n, 2j+1]   code[n, 2j]                      packed: uint8 [N, ceil(K/2)]

3-bit: exactly 3 bits a weight, as two bit planes so that a kernel decodes with shifts and masks only (no
code straddles a byte). K is padded to a multiple of 8 with code 0 (K8 = 8 * ceil(K/8)).

    plane lo (2 bits a code, 4 a byte), bytes [0, K8/4) of the row:
        byte j:  [c(4j+3) & 3][c(4j+2) & 3][c(4j+1) & 3][c(4j) & 3]     (bits 7..0, two bits each)
    plane hi (1 bit a code, 8 a byte), bytes [K8/4, 3*K8/8) of the row:
        byte j:  bit i = (c(8j+i) >> 2) & 1                             packed: uint8 [N, 3*K8/8]

A kernel reading code k of a row: 4-bit  (row[k >> 1] >> 4*(k & 1)) & 15;
3-bit  ((row[k >> 2] >> 2*(k & 3)) & 3) | (((row[K8/4 + (k >> 3)] >> (k & 7)) & 1) << 2).
"""
from __future__ import annotations

import torch

from .._checks import check_choice, check_tensor


def packed_row_bytes(k: int, bits: int) -> int:
    """Bytes one row of K codes takes in the packed layout."""
    check_choice("bits", bits, (3, 4))
    if bits == 4:
        return (k + 1) // 2
    return 3 * ((k + 7) // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [N, K] (values in [0, 2^bits)) into the layout above."""
    check_choice("bits", bits, (3, 4))
    check_tensor("codes", codes, ndim=2, dtypes=(torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits}) for bits={bits}, "
                         f"got range [{int(codes.min())}, {int(codes.max())}]")
    n, k = codes.shape
    c = codes.to(torch.int32)
    if bits == 4:
        kp = 2 * ((k + 1) // 2)
        c = torch.nn.functional.pad(c, (0, kp - k))
        c = c.view(n, kp // 2, 2)
        return (c[..., 0] | (c[..., 1] << 4)).to(torch.uint8)
    k8 = 8 * ((k + 7) // 8)
    c = torch.nn.functional.pad(c, (0, k8 - k))
    lo = (c & 3).view(n, k8 // 4, 4)
    lo = lo[..., 0] | (lo[..., 1] << 2) | (lo[..., 2] << 4) | (lo[..., 3] << 6)
    hi = ((c >> 2) & 1).view(n, k8 // 8, 8)
    hi = sum(hi[..., i] << i for i in range(8))
    return torch.cat([lo, hi], dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of pack_codes: packed uint8 [N, row_bytes] -> codes uint8 [N, K]."""
    check_choice("bits", bits, (3, 4))
    check_tensor("packed", packed, ndim=2, dtypes=(torch.uint8,))
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if packed.shape[1] != packed_row_bytes(k, bits):
        raise ValueError(f"packed has {packed.shape[1]} bytes a row but k={k} at bits={bits} needs "
                         f"{packed_row_bytes(k, bits)}")
    n = packed.shape[0]
    p = packed.to(torch.int32)
    if bits == 4:
        c = torch.stack([p & 15, p >> 4], dim=-1).view(n, -1)
        return c[:, :k].to(torch.uint8)
    k8 = 8 * ((k + 7) // 8)
    lo, hi = p[:, : k8 // 4], p[:, k8 // 4:]
    lo = torch.stack([(lo >> (2 * i)) & 3 for i in range(4)], dim=-1).view(n, k8)
    hi = torch.stack([(hi >> i) & 1 for i in range(8)], dim=-1).view(n, k8)
    return (lo | (hi << 2))[:, :k].to(torch.uint8)
