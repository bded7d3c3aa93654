// The weight decoders of the Hopper W·A8 GEMM (gemm_a8_sm90.cu): packed 4- or 3-bit codes to the e4m3 bytes of
// wgmma's A fragments, through byte permutes over the codebook's bytes. Host and device: on the host, prmt and
// the and-or are emulated from the PTX definitions, so that tests/host/decode_a8_test.cu checks the decoders'
// logic and K order on a machine without a GPU (tests/test_cuda_decode_host.py builds and runs it).
#pragma once
#include <cstdint>
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

// Eight 3-bit codes of a row as one nibble a code (code i in bits 4i..4i+2, bit 3 clear): the 2-bit fields
// (lo16, code i at bits 2i..2i+1) and the 1-bit fields (hi8, code i at bit i) spread apart by shifts and masks.
LRQ_HD uint32_t nibbles3(uint32_t lo16, uint32_t hi8) {
  uint32_t x = (lo16 | (lo16 << 8)) & 0x00FF00FFu;   // codes 0-3 in byte 0, 4-7 in byte 2
  x = (x | (x << 4)) & 0x0F0F0F0Fu;                  // two codes a byte
  x = (x | (x << 2)) & 0x33333333u;                  // one a nibble
  uint32_t h = (hi8 | (hi8 << 12)) & 0x000F000Fu;
  h = (h | (h << 6)) & 0x03030303u;
  h = (h | (h << 3)) & 0x11111111u;                  // bit i at 4i
  return x | (h << 2);
}

// The 3-bit form of decode_step. A row's codes arrive as {plane lo bytes 0-3, 4-7, plane hi bytes 0-3}: chunk j
// is the 16 bits 16(j & 1).. of lo word j >> 1 and byte j of the hi word. Bit 3 of every nibble is clear, so one
// byte permute over the 8 codebook bytes in t[0], t[1] looks up four codes.
LRQ_HD void decode_step3(const uint4& r0, const uint4& r1, const uint32_t (&t)[4],
                                             uint32_t (&a)[16]) {
  const uint32_t lo0[2] = {r0.x, r0.y}, lo1[2] = {r1.x, r1.y};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int sh = 16 * (j & 1);
    const uint32_t n0 = nibbles3((lo0[j >> 1] >> sh) & 0xFFFFu, (r0.z >> (8 * j)) & 0xFFu);
    const uint32_t n1 = nibbles3((lo1[j >> 1] >> sh) & 0xFFFFu, (r1.z >> (8 * j)) & 0xFFu);
    a[4 * j + 0] = prmt(t[0], t[1], n0);          // row g:   codes 8j+0..3
    a[4 * j + 2] = prmt(t[0], t[1], n0 >> 16);    //          codes 8j+4..7
    a[4 * j + 1] = prmt(t[0], t[1], n1);          // row g+8
    a[4 * j + 3] = prmt(t[0], t[1], n1 >> 16);
  }
}

}  // namespace lrq
