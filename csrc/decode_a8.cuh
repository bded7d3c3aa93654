// The weight decoders of the Hopper W·A8 GEMM (gemm_a8_sm90.cu): packed 4- or 3-bit codes to the e4m3 bytes of
// wgmma's A fragments, through byte permutes over the codebook's bytes. Host and device: on the host, prmt and
// the and-or are emulated from the PTX definitions, so that tests/host/decode_a8_test.cu checks the decoders'
// logic and K order on a machine without a GPU (tests/test_cuda_decode_host.py builds and runs it).
#pragma once
#include <cstdint>
#include <cuda_fp8.h>
#include <vector_types.h>    // uint4

#if defined(__CUDACC__)
#define LRQ_HD __host__ __device__ __forceinline__
#else
#define LRQ_HD inline
#endif

namespace lrq {

// PTX prmt in its default mode: byte i of the result is byte (sel >> 4i) & 7 of {b, a}, or that byte's sign
// replicated where bit 4i + 3 is set, which the decoders below keep clear; bits 16-31 of sel are ignored.
// (__byte_perm reads only 3 bits a nibble, so the compiler masks a selector it cannot prove clean.)
LRQ_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
#else
  const uint64_t bytes = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t nib = (sel >> (4 * i)) & 0xFu;
    uint32_t byte = static_cast<uint32_t>(bytes >> (8 * (nib & 7u))) & 0xFFu;
    if (nib & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;           // sign replicate
    r |= byte << (8 * i);
  }
  return r;
#endif
}

// Word w (0..3) of the decoders' table: codebook entries 4w .. 4w + 3 as e4m3 bytes (entries past 2^kBits are 0).
template <int kBits> LRQ_HD uint32_t codebook_e4m3_word(const float* codebook, int w) {
  uint32_t word = 0;
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    const int e = 4 * w + b;
    const float v = e < (1 << kBits) ? codebook[e] : 0.f;
    word |= static_cast<uint32_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3)) << (8 * b);
  }
  return word;
}

// (a & kMask) | c as one lop3 with c in a register (written in C, nvcc spent two instructions on it: the two
// constants cannot both be immediates)
template <uint32_t kMask> LRQ_HD uint32_t and_or(uint32_t a, uint32_t c) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "n"(kMask), "r"(c));
  return r;
#else
  return (a & kMask) | c;
#endif
}

// Eight 4-bit codes (code i in bits 4i..4i+3) to their codebook bytes: lo = codes 0-3, hi = codes 4-7, byte i of
// each for code i. The 16 e4m3 codebook bytes sit in t[0..3]; a byte permute picks one of 8 bytes with 3 selector
// bits, so entries 0-7 and 8-15 are looked up apart and a third permute keeps, per byte, the half bit 3 names.
// A permute reads only the low 16 bits of its selector, so both halves' selectors come from one masked word and
// one shift each (11 instructions for 8 codes, 13 with a mask a half).
LRQ_HD void decode8(uint32_t w, const uint32_t (&t)[4], uint32_t& lo, uint32_t& hi) {
  const uint32_t pick = and_or<0x44444444u>(w >> 1, 0x32103210u), s = w & 0x77777777u;
  const uint32_t s_hi = s >> 16, pick_hi = pick >> 16;
  lo = prmt(prmt(t[0], t[1], s), prmt(t[2], t[3], s), pick);
  hi = prmt(prmt(t[0], t[1], s_hi), prmt(t[2], t[3], s_hi), pick_hi);
}

// A fragments of one 128-wide K step from the two rows' 16-byte code loads: [chunk j][reg]
LRQ_HD void decode_step(const uint4& r0, const uint4& r1, const uint32_t (&t)[4],
                                            uint32_t (&a)[16]) {
  const uint32_t w0[4] = {r0.x, r0.y, r0.z, r0.w}, w1[4] = {r1.x, r1.y, r1.z, r1.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    decode8(w0[j], t, a[4 * j + 0], a[4 * j + 2]);     // row g:   K 32q+8j+0..3 at 4q+e, +4..7 at 16+4q+e
    decode8(w1[j], t, a[4 * j + 1], a[4 * j + 3]);     // row g+8
  }
}

// Bits 0, 2, .., 14 of v (the rest ignored) moved to bits 0, 4, .., 28: three shift-or-mask steps (the shift-or
// of disjoint bits is one multiply-add, on the FMA pipe).
LRQ_HD uint32_t spread_even16(uint32_t v) {
  v &= 0x5555u;
  v = (v | (v << 8)) & 0x00FF00FFu;
  v = (v | (v << 4)) & 0x0F0F0F0Fu;
  return (v | (v << 2)) & 0x11111111u;
}

// Thirty-two 3-bit codes of a row to their codebook bytes in natural order: byte e of out[q] for code 4q + e.
// lo0 / lo1: bytes 0-3 / 4-7 of the 2-bit plane (codes 0-15 / 16-31, two bits at 2i), hi: bytes 0-3 of the 1-bit
// plane (code i's high bit at bit i) (formats/packing.py). Each 2-bit plane word holds 16 codes; masked two ways it
// gives the even codes' fields and the odd codes' fields one a nibble, and the high bits, spread to bit 2 of each
// nibble, complete them. Bit 3 of every nibble is clear, so one byte permute over the 8 codebook bytes in t[0], t[1]
// looks up four codes (in the order 0, 2, 4, 6 or 1, 3, 5, 7), and one more interleaves even and odd codes. (About
// 30 instructions for 16 codes, against about 40 when each 8 codes' fields were spread to nibbles one by one.)
LRQ_HD void decode32_3bit(uint32_t lo0, uint32_t lo1, uint32_t hi, const uint32_t (&t)[4], uint32_t (&out)[8]) {
#pragma unroll
  for (int m = 0; m < 2; ++m) {                       // codes 16m .. 16m + 15
    const uint32_t lo = m == 0 ? lo0 : lo1;
    const uint32_t h = m == 0 ? hi : hi >> 16;
    const uint32_t even = (lo & 0x33333333u) + (spread_even16(h) << 2);          // nibble k: code 16m + 2k
    const uint32_t odd = ((lo >> 2) & 0x33333333u) + (spread_even16(h >> 1) << 2);  // nibble k: code 16m + 2k + 1
    const uint32_t e0 = prmt(t[0], t[1], even), e1 = prmt(t[0], t[1], even >> 16);   // codes 0, 2, 4, 6 / 8, ..
    const uint32_t o0 = prmt(t[0], t[1], odd), o1 = prmt(t[0], t[1], odd >> 16);     // codes 1, 3, 5, 7 / 9, ..
    out[4 * m + 0] = prmt(e0, o0, 0x5140u);           // codes 0-3
    out[4 * m + 1] = prmt(e0, o0, 0x7362u);           //       4-7
    out[4 * m + 2] = prmt(e1, o1, 0x5140u);           //       8-11
    out[4 * m + 3] = prmt(e1, o1, 0x7362u);           //       12-15
  }
}

// The 3-bit form of decode_step. A row's codes arrive as {2-bit plane bytes 0-3, 4-7, 1-bit plane bytes 0-3}; its
// natural-order bytes, four codes a word, go to the A registers of their chunk and half.
LRQ_HD void decode_step3(const uint4& r0, const uint4& r1, const uint32_t (&t)[4], uint32_t (&a)[16]) {
  const uint4 rows[2] = {r0, r1};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    uint32_t codes[8];
    decode32_3bit(rows[r].x, rows[r].y, rows[r].z, t, codes);
#pragma unroll
    for (int q = 0; q < 8; ++q) a[2 * q + r] = codes[q];     // codes 4q..4q+3: chunk q / 2, half q % 2
  }
}

}  // namespace lrq
