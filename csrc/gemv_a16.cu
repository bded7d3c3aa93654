// Small-M weight-only GEMM: y [M, N] = x [M, K] @ W_deq^T + bias, M <= 16, x bf16/fp16, W as packed 4- or 3-bit
// codes (formats/packing.py) into a per-layer codebook, times per-channel or per-group float32 scales.
//
// It streams the packed weights once and does the arithmetic on tensor cores (mma.sync m16n8k16, fp32
// accumulation) in the transposed form y^T = W x^T: 16 weight rows are the A operand and up to 8 tokens the B
// operand (two products for M > 8). Decoded weights land straight in A's registers, and x's words are B's
// register pairs as loaded, so no register is copied to build a fragment. The order of the reduction inside one
// mma does not matter, so each lane takes a run of CPT consecutive codes of its two rows (g and g + 8) with one
// load each, and mma tile t of a chunk uses codes 4t..4t+3 of the run as the logical k = 2q, 2q+1, 2q+8, 2q+9;
// x is read at the same physical k.
//
// Decoding: one shared-memory lookup gives two decoded weights as the bf16x2 (or half2) register A wants: a
// table of all 256 byte values (4-bit: two codes a byte) or 64 pairs of 3-bit codes, replicated for each of the
// 32 lanes (entry e of lane l at byte e * 128 + l * 4: lane l only reads bank l, so lookups never conflict).
// The byte offset of a lookup is one shift and one and-or of the packed word: 3 instructions with the load
// (4-bit; 3-bit pairs take two shifts and two and-ors).
// The table is built once a CTA, while the CTA's first weight loads are in flight.
//
// Work split: a CTA of 8 warps owns 16 * MT weight rows at a time and splits K between its warps (chunks of CH
// codes, interleaved), then adds the 8 partial sums in shared memory. CTAs are persistent (one table build
// each) and get equal numbers of tiles; a warp requests the weights of several chunks before it decodes them,
// and the next tile's before the reduction of this one.
// Group scales: a chunk is exactly one group (CH = group size), so a group's partial product is scaled once.
//
// Fused rotation (ROT; M = 1, K <= kRotMaxK, block <= 1024): the weight-only forward rotates x before the product
// (ops.quant_linear_a16); as a kernel of its own at M = 1 it is a fifth of the forward's time on FLUX fc1
// (docs/tuning.md: fused-gemv, gemv-fused-rotation). Here each CTA rotates x itself, into shared
// memory, while its first weight loads are on their way into L2: x is a few KB and stays in L2, and the
// butterflies are rotate_quant's (hadamard.cuh), so the rotated values are bit-equal to ops.rotate's. Every CTA
// repeats the rotation, so it pays only for one small token (M = 1, K <= kRotMaxK).
#include "hadamard.cuh"
#include "lrq.h"

#include <algorithm>
#include <cmath>

namespace lrq {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32;

template <typename T> struct Pair;
template <> struct Pair<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Pair<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Streaming loads of the weights: read once, so keep them out of L1.
template <int BYTES>
__device__ __forceinline__ void load_stream(const uint8_t* p, uint32_t* w) {
  if constexpr (BYTES == 16) {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
  } else if constexpr (BYTES == 8) {
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
  } else if constexpr (BYTES == 4) {
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(w[0]) : "l"(p));
  } else {
    static_assert(BYTES == 2, "2, 4, 8 or 16 bytes");
    unsigned short s;
    asm("ld.global.nc.L1::no_allocate.u16 %0, [%1];\n" : "=h"(s) : "l"(p));
    w[0] = s;
  }
}

// Bits [from, from + width) of w moved to [to, to + width), other bits arbitrary: one shift (from, to constant).
__device__ __forceinline__ uint32_t move_bits(uint32_t w, int from, int to) {
  return from >= to ? w >> (from - to) : w << (to - from);
}

// (a & mask) | c in one instruction (ptxas splits the C expression into two).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(mask), "r"(c));
  return d;
}

// One lane's run of CPT consecutive codes of one weight row.
template <int BITS, int CPT>
struct Run {
  static constexpr int kLoBytes = BITS == 4 ? CPT / 2 : CPT / 4;   // 4-bit: the codes; 3-bit: the 2-bit plane
  static constexpr int kHiBytes = BITS == 4 ? 0 : CPT / 8;         // 3-bit: the 1-bit plane
  uint32_t lo[kLoBytes / 4];
  uint32_t hi[kHiBytes ? (kHiBytes + 3) / 4 : 1];

  // chunk: index of the CH = 4 * CPT codes of the row; q: this lane's run inside it
  __device__ __forceinline__ void load(const uint8_t* row, int k, int chunk, int q) {
    load_stream<kLoBytes>(row + (chunk * 4 + q) * kLoBytes, lo);
    if constexpr (BITS == 3) load_stream<kHiBytes>(row + k / 4 + (chunk * 4 + q) * kHiBytes, hi);
  }
  // The same bytes into L2 only: no registers held (the fused rotation runs meanwhile).
  __device__ __forceinline__ void prefetch(const uint8_t* row, int k, int chunk, int q) const {
    asm volatile("prefetch.global.L2 [%0];\n" :: "l"(row + (chunk * 4 + q) * kLoBytes));
    if constexpr (BITS == 3)
      asm volatile("prefetch.global.L2 [%0];\n" :: "l"(row + k / 4 + (chunk * 4 + q) * kHiBytes));
  }
  __device__ __forceinline__ void zero() {
    for (auto& w : lo) w = 0;
    for (auto& w : hi) w = 0;
  }
  // Byte offset in the table of the entry for codes 2p and 2p + 1 of the run, for the lane at lane4 = lane * 4.
  // 4-bit: the entry is byte p, at bits 7..14 of the offset. 3-bit: the two codes' low bits (a nibble of the
  // 2-bit plane) at bits 7..10, their high bits (two bits of the 1-bit plane) at bits 11..12.
  __device__ __forceinline__ uint32_t offset(int p, uint32_t lane4) const {
    if constexpr (BITS == 4) {
      return and_or(move_bits(lo[p >> 2], 8 * (p & 3), 7), 0x7F80u, lane4);
    } else {
      const uint32_t l = and_or(move_bits(lo[p >> 3], 4 * (p & 7), 7), 0x780u, lane4);
      return and_or(move_bits(hi[p >> 4], 2 * (p & 15), 11), 0x1800u, l);
    }
  }
};

__device__ __forceinline__ uint32_t lookup(const uint32_t* table, uint32_t byte_offset) {
  return *reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(table) + byte_offset);
}

// The fused rotation: xs [K] = x[perm] * channel_scale times the normalised block Hadamard, in x's dtype, as
// rotate_quant.cu computes it for its out_format kSame. Every thread of the CTA calls it. The CTA's 256 threads take
// hadamard.cuh's layout with V = 4 (8192 slots, K <= kRotMaxK of them live): a warp holds 1024 contiguous values,
// so every block of B <= 1024 lies inside one warp and no butterfly crosses warps. The gather first copies x's row
// into xs with 16-byte loads and reads its values from there (scalar gathers from global memory are several times
// slower), then overwrites xs with the result.
constexpr int kRotV = 4;
constexpr int kRotMaxK = 4096;                 // docs/tuning.md: gemv-fused-rotation
constexpr int kRotMaxBlock = 256 * kRotV;
template <typename T>
__device__ __forceinline__ void rotate_into_shared(const T* __restrict__ x, int k, const int16_t* __restrict__ perm16,
                                                   const float* __restrict__ scale_lanes, int log_b, float norm,
                                                   T* xs, int lane, int warp) {
  if (perm16 != nullptr) {
    for (int i = threadIdx.x; i < k / 8; i += kThreads)
      reinterpret_cast<uint4*>(xs)[i] = __ldg(reinterpret_cast<const uint4*>(x) + i);
    __syncthreads();
  }
  float v[kRotV][8];
  int col[kRotV];
#pragma unroll
  for (int i = 0; i < kRotV; ++i) {
    col[i] = ((warp * kRotV + i) * 32 + lane) * 8;
    if (col[i] >= k) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = 0.f;
      continue;
    }
    if (perm16 == nullptr) {
      load8<T>(x + col[i], v[i]);
    } else {
      int idx[8];
      load_perm8(perm16, col[i], idx);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = to_float<T>(xs[idx[j]]);
    }
    if (scale_lanes != nullptr) {
      float s[8];
      load_scales8(scale_lanes, col[i], k, s);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = __fmul_rn(v[i][j], s[j]);
    }
  }
  if (perm16 != nullptr) __syncthreads();      // every gather has read xs before it is overwritten
  block_hadamard<kRotV>(v, log_b, norm, lane, warp, nullptr, 0);   // log_b <= 10: no stage across warps
#pragma unroll
  for (int i = 0; i < kRotV; ++i)
    if (col[i] < k) store8<T>(xs + col[i], v[i]);
}

// NT: tiles of 8 tokens (1 for M <= 8, 2 for M <= 16). MT: 16-row weight tiles a warp decodes against the same
// x words (2 from M = 5: every CTA reads all of x once a tile; docs/tuning.md: gemv-tiles). ROT: rotate x first (above), into dynamic shared memory (K values).
// Launch bounds: the 4-bit per-channel ROT kernel is held to 4 CTAs an SM (64 registers, ptxas: 4 bytes of spill),
// as many as the kernel without the rotation has (64 registers); left free, ptxas gave it 80 (3 CTAs). 0: no bound,
// which is not the same as 1 (with 1, ptxas gave the kernels without the rotation 16-25% more registers).
template <typename T, int BITS, int NT, int MT, int GROUP, bool ROT>
__global__ void __launch_bounds__(kThreads, ROT && BITS == 4 && GROUP == 0 ? 4 : 0) gemv_a16_kernel(
    const T* __restrict__ x, int m, int k, int n, const uint8_t* __restrict__ packed, int row_bytes,
    const float* __restrict__ w_scales, const float* __restrict__ codebook, const float* __restrict__ bias,
    T* __restrict__ y, const int16_t* __restrict__ perm16, const float* __restrict__ scale_lanes, int log_b,
    float norm) {
  constexpr int CH = GROUP == 64 ? 64 : 128;   // codes of a row a chunk (4 lanes x CPT)
  constexpr int CPT = CH / 4;                  // codes a lane a row a chunk
  constexpr int TILES = CPT / 4;               // mma k-tiles a chunk
  constexpr int ENTRIES = BITS == 4 ? 256 : 64;
  constexpr int ROWS = 16 * MT;
  constexpr int E = MT * NT * 4;               // accumulator registers a lane
  // Two partial-sum buffers (one barrier a tile) where they fit beside the table in 48 KB of static memory.
  constexpr int NBUF = ENTRIES * 32 * 4 + 2 * kWarps * E * 32 * 4 <= 48 * 1024 ? 2 : 1;
  __shared__ __align__(16) uint32_t lut[ENTRIES * 32];
  __shared__ float partial[NBUF][kWarps][E][32];
  extern __shared__ __align__(16) uint8_t dynamic_smem[];
  T* xs = reinterpret_cast<T*>(dynamic_smem);   // ROT: the rotated token, K values

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const uint32_t lane4 = static_cast<uint32_t>(lane) * 4;
  const int chunks = k / CH;
  const int groups = GROUP ? k / GROUP : 1;
  const int tiles = (n + ROWS - 1) / ROWS;

  // A warp's chunks of a tile are warp, warp + kWarps, ...; it requests the weights of up to MAXC of them at
  // once and then decodes them, so that each warp has several loads in flight.
  constexpr int MAXC = 4 / MT;
  auto load_round = [&](Run<BITS, CPT> (*dst)[2 * MT], int tile, int c0) {
#pragma unroll
    for (int i = 0; i < MAXC; ++i) {
      const int c = c0 + i * kWarps;
#pragma unroll
      for (int h = 0; h < 2 * MT; ++h) {
        const int row = tile * ROWS + h * 8 + g;
        if (c < chunks && row < n) dst[i][h].load(packed + static_cast<int64_t>(row) * row_bytes, k, c, q);
        else dst[i][h].zero();
      }
    }
  };
  Run<BITS, CPT> w[MAXC][2 * MT];              // [chunk of the round][rows g, g + 8, g + 16, g + 24, ...]
  int tile = blockIdx.x;
  if constexpr (ROT) {
    // The first round's weights are requested into L2 only, then x is rotated, then they are loaded: holding them
    // in registers across the rotation took the kernel from 64 to 95 registers (ptxas, 4-bit, M <= 4), 2 CTAs an
    // SM instead of 4. x is read from shared memory, after the barrier below.
    if (tile < tiles)
#pragma unroll
      for (int i = 0; i < MAXC; ++i)
#pragma unroll
        for (int h = 0; h < 2 * MT; ++h) {
          const int c = warp + i * kWarps, row = tile * ROWS + h * 8 + g;
          if (c < chunks && row < n) w[i][h].prefetch(packed + static_cast<int64_t>(row) * row_bytes, k, c, q);
        }
    rotate_into_shared<T>(x, k, perm16, scale_lanes, log_b, norm, xs, lane, warp);
    if (tile < tiles) load_round(w, tile, warp);
  } else {
    if (tile < tiles) load_round(w, tile, warp);
    // A warp reads the same columns of x for every tile (chunks warp, warp + kWarps, ...): pull them into L1
    // now, so that the first tile's x loads do not wait on L2 in the middle of the decode.
    if (g < m && tile < tiles)
      for (int c = warp; c < chunks; c += kWarps)
        asm volatile("prefetch.global.L1 [%0];\n" :: "l"(x + static_cast<int64_t>(g) * k + c * CH + q * CPT));
  }

  // The decode table, built while the first loads are in flight: TPE threads write entry e's 32 lane copies as
  // 16-byte stores, each thread starting at a different 16-byte slot so that a warp's stores spread over all
  // the banks.
  {
    constexpr int TPE = kThreads / ENTRIES, PER = 8 / TPE;
    const int e = threadIdx.x / TPE, sub = threadIdx.x % TPE;
    const int lo = BITS == 4 ? (e & 15) : ((e & 3) | (((e >> 4) & 1) << 2));
    const int hi = BITS == 4 ? (e >> 4) : (((e >> 2) & 3) | (((e >> 5) & 1) << 2));
    const uint32_t val = Pair<T>::pack(__ldg(codebook + lo), __ldg(codebook + hi));
    uint4* dst = reinterpret_cast<uint4*>(lut) + e * 8;
#pragma unroll
    for (int i = 0; i < PER; ++i) dst[(sub * PER + i + e) & 7] = make_uint4(val, val, val, val);
  }
  __syncthreads();

  // The reduction: warp v finishes accumulator entries idx = v, v + kWarps, ... of every lane l. Entry idx is
  // register r = idx % 4 of token tile nt = idx / 4 % NT of weight tile mt = idx / (4 NT): r = 0, 1 are row g,
  // r = 2, 3 row g + 8; r = 0, 2 token 2q, r = 1, 3 token 2q + 1.
  constexpr int RPT = (E + kWarps - 1) / kWarps;
  int red_row[RPT], red_tok[RPT];
#pragma unroll
  for (int j = 0; j < RPT; ++j) {
    const int idx = warp + j * kWarps, r = idx & 3;
    red_row[j] = (idx / (4 * NT)) * 16 + (lane >> 2) + (r >= 2 ? 8 : 0);
    red_tok[j] = idx < E ? ((idx >> 2) % NT) * 8 + 2 * (lane & 3) + (r & 1) : m;   // m: nothing to write
  }
  int buf = 0;
  for (; tile < tiles; tile += gridDim.x, buf = (buf + 1) % NBUF) {
    const int n0 = tile * ROWS;
    // The epilogue's scale and bias, requested now: loaded after the barrier, they held every warp of the CTA
    // at the next one (ncu: 21% of stalls at that barrier).
    float out_scale[RPT], out_bias[RPT];
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int row = n0 + red_row[j];
      const bool live = red_tok[j] < m && row < n;
      out_scale[j] = GROUP == 0 && live ? __ldg(w_scales + row) : 1.f;
      out_bias[j] = bias != nullptr && live ? __ldg(bias + row) : 0.f;
    }
    float acc[MT][NT][4] = {};
    for (int c0 = warp; c0 < chunks; c0 += MAXC * kWarps) {
      if (c0 != warp) load_round(w, tile, c0);
#pragma unroll
      for (int i = 0; i < MAXC; ++i) {
        const int c = c0 + i * kWarps;
        if (c >= chunks) break;
        const int kx = c * CH + q * CPT;
        uint4 b[NT][TILES / 2];                        // x words: mma tiles 2u and 2u + 1 from one 16-byte load
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int tok = nt * 8 + g;
#pragma unroll
          for (int u = 0; u < TILES / 2; ++u)
            b[nt][u] = tok >= m ? make_uint4(0, 0, 0, 0)
                       : ROT ? reinterpret_cast<const uint4*>(xs + kx)[u]
                             : __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(tok) * k + kx) + u);
        }
        float part[MT][NT][4] = {};
#pragma unroll
        for (int t = 0; t < TILES; ++t) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const Run<BITS, CPT>& r0 = w[i][2 * mt];
            const Run<BITS, CPT>& r8 = w[i][2 * mt + 1];
            const uint32_t a[4] = {lookup(lut, r0.offset(2 * t, lane4)), lookup(lut, r8.offset(2 * t, lane4)),
                                   lookup(lut, r0.offset(2 * t + 1, lane4)), lookup(lut, r8.offset(2 * t + 1, lane4))};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const uint4& v = b[nt][t / 2];
              Pair<T>::mma(GROUP ? part[mt][nt] : acc[mt][nt], a, t & 1 ? v.z : v.x, t & 1 ? v.w : v.y);
            }
          }
        }
        if constexpr (GROUP != 0) {                                      // chunk c is group c
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const int r0 = n0 + mt * 16 + g, r1 = r0 + 8;                // accumulator rows: c0, c1 / c2, c3
            const float s0 = r0 < n ? __ldg(w_scales + static_cast<int64_t>(r0) * groups + c) : 0.f;
            const float s1 = r1 < n ? __ldg(w_scales + static_cast<int64_t>(r1) * groups + c) : 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              acc[mt][nt][0] += part[mt][nt][0] * s0; acc[mt][nt][1] += part[mt][nt][1] * s0;
              acc[mt][nt][2] += part[mt][nt][2] * s1; acc[mt][nt][3] += part[mt][nt][3] * s1;
            }
          }
        }
      }
    }
    // The next tile's first weights go out before the reduction's barrier.
    if (tile + static_cast<int>(gridDim.x) < tiles) load_round(w, tile + gridDim.x, warp);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[buf][warp][(mt * NT + nt) * 4 + r][lane] = acc[mt][nt][r];
    // With two buffers, one barrier a tile: the next tile writes the other buffer, and this one is written
    // again only after the next tile's barrier, which every reader of this one has passed.
    __syncthreads();
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int row = n0 + red_row[j];
      if (red_tok[j] < m && row < n) {
        float s = 0.f;
#pragma unroll
        for (int w2 = 0; w2 < kWarps; ++w2) s += partial[buf][w2][warp + j * kWarps][lane];
        y[static_cast<int64_t>(red_tok[j]) * n + row] = from_float<T>(__fadd_rn(__fmul_rn(s, out_scale[j]), out_bias[j]));
      }
    }
    if constexpr (NBUF == 1) __syncthreads();
  }
}

bool rotates(const GemvA16Args& a) { return a.block > 1 || a.perm16 != nullptr || a.scale_lanes != nullptr; }

template <typename T, int BITS, int NT, int MT, int GROUP, bool ROT = false>
std::string launch(const GemvA16Args& a) {
  auto kernel = gemv_a16_kernel<T, BITS, NT, MT, GROUP, ROT>;
  const int smem = ROT ? a.k * static_cast<int>(sizeof(T)) : 0;
  cudaError_t e;
  if (ROT) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(gemv_a16)", e);
  }
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (e != cudaSuccess) return cuda_error("cudaOccupancyMaxActiveBlocksPerMultiprocessor(gemv_a16)", e);
  // Persistent CTAs with the same number of weight tiles each (the last one may have fewer).
  const int tiles = (a.n + 16 * MT - 1) / (16 * MT);
  const int ctas = std::max(1, per_sm) * sm_count(a.device);
  const int per_cta = (tiles + ctas - 1) / ctas;
  const int grid = std::max(1, (tiles + per_cta - 1) / per_cta);
  const int row_bytes = BITS == 4 ? (a.k + 1) / 2 : 3 * ((a.k + 7) / 8);
  const int log_b = ROT ? log2_of(a.block) : 0;
  const float norm = ROT ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.block))) : 1.f;
  kernel<<<grid, kThreads, smem, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const T*>(a.x), a.m, a.k, a.n, a.packed, row_bytes, a.w_scales, a.codebook, a.bias,
      static_cast<T*>(a.y), a.perm16, a.scale_lanes, log_b, norm);
  return last_launch_error("gemv_a16_kernel");
}

template <typename T, int BITS, int GROUP>
std::string dispatch_nt(const GemvA16Args& a) {
  if (rotates(a)) return launch<T, BITS, 1, 1, GROUP, true>(a);
  if (a.m > 8) return launch<T, BITS, 2, 2, GROUP>(a);
  return a.m > 4 ? launch<T, BITS, 1, 2, GROUP>(a) : launch<T, BITS, 1, 1, GROUP>(a);
}

template <typename T, int BITS>
std::string dispatch_group(const GemvA16Args& a) {
  switch (a.group_size) {
    case 0: return dispatch_nt<T, BITS, 0>(a);
    case 64: return dispatch_nt<T, BITS, 64>(a);
    case 128: return dispatch_nt<T, BITS, 128>(a);
  }
  return "gemv_a16: group_size must be 0, 64 or 128, got " + std::to_string(a.group_size);
}

template <typename T>
std::string dispatch_bits(const GemvA16Args& a) {
  return a.bits == 4 ? dispatch_group<T, 4>(a) : dispatch_group<T, 3>(a);
}

}  // namespace

std::string gemv_a16_unsupported(int m, int k, int bits, int group_size) {
  if (m < 0 || m > 16) return "M must be <= 16, got M=" + std::to_string(m);
  if (k <= 0 || k % 128) return "K must be a positive multiple of 128, got K=" + std::to_string(k);
  if (bits != 3 && bits != 4) return "bits must be 3 or 4, got " + std::to_string(bits);
  if (group_size != 0 && group_size != 64 && group_size != 128)
    return "group_size must be 0 (per channel), 64 or 128, got " + std::to_string(group_size);
  return "";
}

std::string gemv_a16_rotate_unsupported(int m, int k, int block) {
  if (m != 1) return "the fused rotation needs M = 1, got M=" + std::to_string(m);
  if (k > kRotMaxK) return "the fused rotation needs K <= " + std::to_string(kRotMaxK) + ", got K=" + std::to_string(k);
  if (block < 1 || (block & (block - 1)) || k % block || block > kRotMaxBlock)
    return "the fused rotation needs a power-of-two block <= " + std::to_string(kRotMaxBlock) + " dividing K=" +
           std::to_string(k) + ", got " + std::to_string(block);
  return "";
}

std::string gemv_a16(const GemvA16Args& a) {
  std::string why = gemv_a16_unsupported(a.m, a.k, a.bits, a.group_size);
  if (!why.empty()) return "gemv_a16: " + why;
  if (rotates(a)) {
    why = gemv_a16_rotate_unsupported(a.m, a.k, a.block);
    if (!why.empty()) return "gemv_a16: " + why;
    if ((reinterpret_cast<uintptr_t>(a.perm16) | reinterpret_cast<uintptr_t>(a.scale_lanes)) % 16)
      return "gemv_a16: perm16 and scale_lanes must be 16-byte aligned";
  }
  if (a.m == 0 || a.n == 0) return "";
  if ((reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(a.packed)) % 16)
    return "gemv_a16: x and packed must be 16-byte aligned";
  const DeviceScope scope(a.device);
  if (!scope.error().empty()) return scope.error();
  switch (a.x_dtype) {
    case kBF16: return dispatch_bits<__nv_bfloat16>(a);
    case kF16: return dispatch_bits<__half>(a);
  }
  return "gemv_a16: x_dtype must be 0 (bf16) or 1 (fp16), got " + std::to_string(a.x_dtype);
}

}  // namespace lrq
