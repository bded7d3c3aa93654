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
// each) and get equal numbers of tiles.
// Weight stream: each warp keeps its next STAGES - 1 chunks in flight, copied by cp.async into a ring of its own
// in shared memory, and decodes a chunk once it has landed; the ring runs on across tiles. Before (sessions 6-11)
// the weights went to registers, a round of at most 4 chunks a warp at a time, so that nothing was in flight
// while a round was decoded (ncu, session 11: long-scoreboard stalls 47% on FLUX fc1 at M = 1).
// Group scales: a chunk is exactly one group (CH = group size), so a group's partial product is scaled once.
#include "common.cuh"
#include "lrq.h"

#include <algorithm>

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

// cp.async of BYTES (4, 8 or 16) bytes; src_bytes 0 fills the destination with zeros (rows past N).
// 16-byte copies bypass L1 (.cg): the weights are read once.
template <int BYTES>
__device__ __forceinline__ void copy_async(uint32_t dst, const uint8_t* src, int src_bytes) {
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
  } else {
    static_assert(BYTES == 4 || BYTES == 8, "4, 8 or 16 bytes");
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(BYTES), "r"(src_bytes)
                 : "memory");
  }
}

template <int BYTES>
__device__ __forceinline__ void load_shared(const uint8_t* p, uint32_t* w) {
  if constexpr (BYTES == 16) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
  } else if constexpr (BYTES == 8) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x; w[1] = v.y;
  } else if constexpr (BYTES == 4) {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else {
    static_assert(BYTES == 2, "2, 4, 8 or 16 bytes");
    w[0] = *reinterpret_cast<const unsigned short*>(p);
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

  // Ring layout of one chunk of 2 * MT row groups (`runs` of them): the 2-bit or 4-bit planes of all runs, lane
  // by lane, then the 1-bit planes. A lane reads back only its own bytes, but the 4 lanes of a row (q = 0..3)
  // have contiguous bytes, in global memory as in the ring, so the row's planes are copied in 16-byte pieces
  // (8 bytes for a group-64 1-bit plane), each by one of the 4 lanes; readers wait at __syncwarp. Each lane
  // copying its own 4- or 8-byte run took 1.1-1.3x the time on 3-bit codes at M = 16 (session 12).
  static constexpr int kRunBytes = kLoBytes + kHiBytes;
  static constexpr int kLoPieces = kLoBytes / 4;               // 16-byte pieces of a row's 4 runs
  static constexpr int kHiPiece = 4 * kHiBytes < 16 ? 4 * kHiBytes : 16;
  static_assert(BITS == 4 || kHiBytes * 4 <= 16, "one piece holds a row's 1-bit planes");

  // Copies lane q's share of chunk `chunk` of `row` (valid: row < N) into ring slot `slot` (run h of `runs`);
  // g4 = 4 * (lane / 4), the row's first lane.
  static __device__ __forceinline__ void copy(uint32_t slot, int runs, int h, int g4, const uint8_t* row, int k,
                                              int chunk, int q, bool valid) {
    if (q < kLoPieces)
      copy_async<16>(slot + (h * 32 + g4) * kLoBytes + 16 * q, row + chunk * 4 * kLoBytes + 16 * q, valid ? 16 : 0);
    if constexpr (BITS == 3) {
      if (q == kLoPieces % 4)
        copy_async<kHiPiece>(slot + runs * 32 * kLoBytes + (h * 32 + g4) * kHiBytes,
                             row + k / 4 + chunk * 4 * kHiBytes, valid ? kHiPiece : 0);
    }
  }
  __device__ __forceinline__ void read(const uint8_t* slot, int runs, int h, int lane) {
    load_shared<kLoBytes>(slot + (h * 32 + lane) * kLoBytes, lo);
    if constexpr (BITS == 3) load_shared<kHiBytes>(slot + runs * 32 * kLoBytes + (h * 32 + lane) * kHiBytes, hi);
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

// Shared memory of one kernel instantiation: the decode table, the partial sums (two buffers, one barrier a tile,
// where that leaves a ring of 4 stages; else one buffer and two barriers), and each warp's ring of STAGES chunks:
// as many as fit in kSmemBudget, at most 8 (7 chunks in flight a warp). The budget lets two CTAs share an SM's
// 228 KB (each CTA also takes 1 KB of it for the system).
template <typename T, int BITS, int NT, int MT, int GROUP>
struct GemvShape {
  static constexpr int kChunk = GROUP == 64 ? 64 : 128;     // CH: codes of a row a chunk (4 lanes x CPT)
  static constexpr int kCpt = kChunk / 4;                   // CPT: codes a lane a row a chunk
  static constexpr int kEntries = BITS == 4 ? 256 : 64;
  static constexpr int kAcc = MT * NT * 4;                  // E: accumulator registers a lane
  static constexpr int kRuns = 2 * MT;                      // row groups (g, g + 8, g + 16, ...) of a chunk
  static constexpr int kSlotBytes = kRuns * 32 * Run<BITS, kCpt>::kRunBytes;   // one chunk of one warp
  static constexpr int kLutBytes = kEntries * 32 * 4;
  static constexpr int kPartialBytes = kWarps * kAcc * 32 * 4;
  static constexpr int kSmemBudget = 113 * 1024;
  static constexpr int stages_fit(int bufs) {
    return (kSmemBudget - kLutBytes - bufs * kPartialBytes) / (kWarps * kSlotBytes);
  }
  static constexpr int kBufs = stages_fit(2) >= 4 ? 2 : 1;
  static constexpr int kStages = stages_fit(kBufs) > 8 ? 8 : stages_fit(kBufs);
  static_assert(kStages >= 2, "the ring needs two stages");
  static constexpr int kSmemBytes = kLutBytes + kBufs * kPartialBytes + kStages * kWarps * kSlotBytes;
};

// NT: tiles of 8 tokens (1 for M <= 8, 2 for M <= 16). MT: 16-row weight tiles a warp decodes against the same
// x words (2 from M = 5: every CTA reads all of x once a tile, and at M = 16 with 16-row tiles that was 4x the
// weight bytes; bench_cuda.md, session 6).
template <typename T, int BITS, int NT, int MT, int GROUP>
__global__ void __launch_bounds__(kThreads) gemv_a16_kernel(
    const T* __restrict__ x, int m, int k, int n, const uint8_t* __restrict__ packed, int row_bytes,
    const float* __restrict__ w_scales, const float* __restrict__ codebook, const float* __restrict__ bias,
    T* __restrict__ y) {
  using S = GemvShape<T, BITS, NT, MT, GROUP>;
  using R = Run<BITS, S::kCpt>;
  constexpr int CH = S::kChunk, CPT = S::kCpt, TILES = CPT / 4, ROWS = 16 * MT, E = S::kAcc;
  constexpr int STAGES = S::kStages;
  extern __shared__ __align__(16) uint8_t smem[];
  uint32_t* lut = reinterpret_cast<uint32_t*>(smem);                                   // [kEntries * 32]
  float (*partial)[kWarps][E][32] = reinterpret_cast<float (*)[kWarps][E][32]>(smem + S::kLutBytes);   // [kBufs]
  uint8_t* ring_base = smem + S::kLutBytes + S::kBufs * S::kPartialBytes;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const uint32_t lane4 = static_cast<uint32_t>(lane) * 4;
  const int chunks = k / CH;
  const int groups = GROUP ? k / GROUP : 1;
  const int tiles = (n + ROWS - 1) / ROWS;
  uint8_t* ring = ring_base + warp * STAGES * S::kSlotBytes;                            // this warp's
  const uint32_t ring_s = static_cast<uint32_t>(__cvta_generic_to_shared(ring));

  // The warp's chunks, in the order it decodes them: tiles blockIdx.x, + gridDim.x, ...; in each, chunks warp,
  // warp + kWarps, ... The copier runs STAGES - 1 chunks ahead (an empty commit group past the end).
  int copy_tile = blockIdx.x, copy_chunk = warp, copy_slot = 0;
  auto copy_next = [&]() {
    if (copy_tile < tiles && copy_chunk < chunks) {
      const uint32_t slot = ring_s + copy_slot * S::kSlotBytes;
#pragma unroll
      for (int h = 0; h < S::kRuns; ++h) {
        const int row = copy_tile * ROWS + h * 8 + g;
        const bool valid = row < n;
        R::copy(slot, S::kRuns, h, lane & ~3, packed + static_cast<int64_t>(valid ? row : 0) * row_bytes, k, copy_chunk,
                q, valid);
      }
    }
    cp_async_commit();
    copy_slot = copy_slot + 1 == STAGES ? 0 : copy_slot + 1;
    copy_chunk += kWarps;
    if (copy_chunk >= chunks) { copy_chunk = warp; copy_tile += gridDim.x; }
  };
#pragma unroll 1
  for (int s = 0; s + 1 < STAGES; ++s) copy_next();

  // A warp reads the same columns of x for every tile (chunks warp, warp + kWarps, ...): pull them into L1
  // now, so that the first tile's x loads do not wait on L2 in the middle of the decode.
  int tile = blockIdx.x;
  if (g < m && tile < tiles)
    for (int c = warp; c < chunks; c += kWarps)
      asm volatile("prefetch.global.L1 [%0];\n" :: "l"(x + static_cast<int64_t>(g) * k + c * CH + q * CPT));

  // The decode table, built while the first copies are in flight: TPE threads write entry e's 32 lane copies as
  // 16-byte stores, each thread starting at a different 16-byte slot so that a warp's stores spread over all
  // the banks.
  {
    constexpr int TPE = kThreads / S::kEntries, PER = 8 / TPE;
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
  int buf = 0, slot = 0;
  for (; tile < tiles; tile += gridDim.x, buf = (buf + 1) % S::kBufs) {
    const int n0 = tile * ROWS;
    // The epilogue's scale and bias, requested now: loaded after the barrier, they held every warp of the CTA
    // at the next one (ncu: 21% of stalls at that barrier, session 6).
    float out_scale[RPT], out_bias[RPT];
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int row = n0 + red_row[j];
      const bool live = red_tok[j] < m && row < n;
      out_scale[j] = GROUP == 0 && live ? __ldg(w_scales + row) : 1.f;
      out_bias[j] = bias != nullptr && live ? __ldg(bias + row) : 0.f;
    }
    float acc[MT][NT][4] = {};
#pragma unroll 1
    for (int c = warp; c < chunks; c += kWarps) {
      const int kx = c * CH + q * CPT;
      uint4 b[NT][TILES / 2];                        // x words: mma tiles 2u and 2u + 1 from one 16-byte load
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int tok = nt * 8 + g;
#pragma unroll
        for (int u = 0; u < TILES / 2; ++u)
          b[nt][u] = tok < m ? __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(tok) * k + kx) + u)
                             : make_uint4(0, 0, 0, 0);
      }
      // The chunk's group scales, requested before the wait (loaded after the products, their latency was
      // exposed on every chunk: group 128 took 1.1-1.25x the per-channel time, session 12).
      float gs[MT][2];
      if constexpr (GROUP != 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int r0 = n0 + mt * 16 + g, r1 = r0 + 8;                // accumulator rows: c0, c1 / c2, c3
          gs[mt][0] = r0 < n ? __ldg(w_scales + static_cast<int64_t>(r0) * groups + c) : 0.f;
          gs[mt][1] = r1 < n ? __ldg(w_scales + static_cast<int64_t>(r1) * groups + c) : 0.f;
        }
      }
      // This chunk's codes have landed: this lane's copies, then (after __syncwarp) every lane's.
      cp_async_wait<STAGES - 2>();
      __syncwarp();
      R w[S::kRuns];
      const uint8_t* src = ring + slot * S::kSlotBytes;
#pragma unroll
      for (int h = 0; h < S::kRuns; ++h) w[h].read(src, S::kRuns, h, lane);
      // The slot read on the previous chunk is free: every lane's reads of it came before the __syncwarp above.
      copy_next();
      slot = slot + 1 == STAGES ? 0 : slot + 1;

      float part[MT][NT][4] = {};
#pragma unroll
      for (int t = 0; t < TILES; ++t) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const R& r0 = w[2 * mt];
          const R& r8 = w[2 * mt + 1];
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
          const float s0 = gs[mt][0], s1 = gs[mt][1];
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            acc[mt][nt][0] += part[mt][nt][0] * s0; acc[mt][nt][1] += part[mt][nt][1] * s0;
            acc[mt][nt][2] += part[mt][nt][2] * s1; acc[mt][nt][3] += part[mt][nt][3] * s1;
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[buf][warp][(mt * NT + nt) * 4 + r][lane] = acc[mt][nt][r];
    // With two buffers, one barrier a tile: the next tile writes the other buffer, and this one is written again
    // only after the next tile's barrier, which every reader of this one has passed.
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
    if constexpr (S::kBufs == 1) __syncthreads();
  }
  cp_async_wait<0>();                                                  // only empty groups remain
}

template <typename T, int BITS, int NT, int MT, int GROUP>
std::string launch(const GemvA16Args& a) {
  using S = GemvShape<T, BITS, NT, MT, GROUP>;
  auto kernel = gemv_a16_kernel<T, BITS, NT, MT, GROUP>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(gemv_a16)", e);
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, S::kSmemBytes);
  if (e != cudaSuccess) return cuda_error("cudaOccupancyMaxActiveBlocksPerMultiprocessor(gemv_a16)", e);
  // Persistent CTAs with the same number of weight tiles each (the last one may have fewer).
  const int tiles = (a.n + 16 * MT - 1) / (16 * MT);
  const int ctas = std::max(1, per_sm) * sm_count(a.device);
  const int per_cta = (tiles + ctas - 1) / ctas;
  const int grid = std::max(1, (tiles + per_cta - 1) / per_cta);
  const int row_bytes = BITS == 4 ? (a.k + 1) / 2 : 3 * ((a.k + 7) / 8);
  kernel<<<grid, kThreads, S::kSmemBytes, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const T*>(a.x), a.m, a.k, a.n, a.packed, row_bytes, a.w_scales, a.codebook, a.bias,
      static_cast<T*>(a.y));
  return last_launch_error("gemv_a16_kernel");
}

template <typename T, int BITS, int GROUP>
std::string dispatch_nt(const GemvA16Args& a) {
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

std::string gemv_a16(const GemvA16Args& a) {
  std::string why = gemv_a16_unsupported(a.m, a.k, a.bits, a.group_size);
  if (!why.empty()) return "gemv_a16: " + why;
  if (a.m == 0 || a.n == 0) return "";
  if ((reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(a.packed)) % 16)
    return "gemv_a16: x and packed must be 16-byte aligned";
  why = set_device(a.device);
  if (!why.empty()) return why;
  switch (a.x_dtype) {
    case kBF16: return dispatch_bits<__nv_bfloat16>(a);
    case kF16: return dispatch_bits<__half>(a);
  }
  return "gemv_a16: x_dtype must be 0 (bf16) or 1 (fp16), got " + std::to_string(a.x_dtype);
}

}  // namespace lrq
