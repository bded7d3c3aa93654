// The block Hadamard of the rotation kernels (rotate_quant.cu and gemv_a16.cu's fused rotation on activations,
// unrotate_weight.cu on weights): the thread layout, the 16-byte load/store helpers, the ARS gather's table loads,
// and the butterflies in the reference's order
// (lrq_kernels/reference/hadamard.py: bit 0 of the index first, lower = a + b, upper = a - b, then one float32
// multiply by 1/sqrt(B)), so that every kernel is bit-equal to the reference.
//
// Layout. A CTA owns R whole rows (tokens, or weight rows), flattened to e = r * K + c. Thread (warp w, lane l)
// holds V vectors of 8 contiguous values, vector i at e = ((w * V + i) * 32 + l) * 8 + j (j = 0..7), so every load
// and store is 16 bytes wide and a warp's accesses are contiguous. The Hadamard block B is a power of two dividing
// K, so the bits of e below log2(B) are the index inside the block, and each butterfly stage pairs elements whose
// e differs in one bit:  bits 0-2 -> inside a vector (registers),  bits 3-7 -> lanes (__shfl_xor_sync),
// bits 8.. -> vectors of the same thread (registers), then warps (shared memory, only for B > 256 * V).
#pragma once
#include "common.cuh"
#include <algorithm>
#include <type_traits>

namespace lrq {

constexpr int kMaxRowsPerCta = 32;

// Register budget: V = 4 kernels (up to 512 threads) keep to 64 registers so that two CTAs share an SM
// (docs/tuning.md: rq-register-budget).
template <int V> struct Bounds { static constexpr int kThreads = 1024, kMinBlocks = 1; };
template <> struct Bounds<4> { static constexpr int kThreads = 512, kMinBlocks = 2; };
template <> struct Bounds<8> { static constexpr int kThreads = 256, kMinBlocks = 2; };

inline int max_threads_for_v(int v) {
  return v == 2 ? Bounds<2>::kThreads : (v == 4 ? Bounds<4>::kThreads : Bounds<8>::kThreads);
}

// Eight values as floats from 16-byte loads: load8 from global memory (read-only path), load8_shared from shared
// memory.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4* u, float v[8]) {
  if constexpr (sizeof(T) == 4) {
    const float* f = reinterpret_cast<const float*>(u);
    for (int j = 0; j < 8; ++j) v[j] = f[j];
  } else {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      // bf16 is the upper half of a float: a shift for the low value, an and for the high one. __bfloat1622float2
      // gave a shift, a byte permute and a shift a pair (ptxas, sm_90a): 16 instructions more per 32 values.
      const uint32_t* w = reinterpret_cast<const uint32_t*>(u);
      for (int i = 0; i < 4; ++i) {
        v[2 * i] = __uint_as_float(w[i] << 16);
        v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
      }
    } else {
      const __half2* h = reinterpret_cast<const __half2*>(u);
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        v[2 * i] = f.x; v[2 * i + 1] = f.y;
      }
    }
  }
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float v[8]) {
  uint4 u[sizeof(T) / 2];
  for (int q = 0; q < static_cast<int>(sizeof(T) / 2); ++q) u[q] = __ldg(reinterpret_cast<const uint4*>(p) + q);
  unpack8<T>(u, v);
}
template <typename T>
__device__ __forceinline__ void load8_shared(const T* p, float v[8]) {
  uint4 u[sizeof(T) / 2];
  for (int q = 0; q < static_cast<int>(sizeof(T) / 2); ++q) u[q] = reinterpret_cast<const uint4*>(p)[q];
  unpack8<T>(u, v);
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const float v[8]) {
  alignas(16) T t[8];
  for (int j = 0; j < 8; ++j) t[j] = from_float<T>(v[j]);
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(p)[0] = reinterpret_cast<const float4*>(t)[0];
    reinterpret_cast<float4*>(p)[1] = reinterpret_cast<const float4*>(t)[1];
  } else {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(t);
  }
}

// The ARS gather's tables (lrq_kernels/cuda: gather_tables) serve every token, so their loads hit L1 after the first
// warp; what they cost is L1 wavefronts (ncu: the gather path is L1-bound, 80% of peak, and int32
// indices and natural-order scales, 32 bytes a lane at a 32-byte lane stride, used 16 of every 32-byte sector).
// perm16[col .. col + 7]: one 16-byte load, a warp's 32 lanes reading 512 contiguous bytes.
__device__ __forceinline__ void load_perm8(const int16_t* perm16, int col, int idx[8]) {
  const int4 a = __ldg(reinterpret_cast<const int4*>(perm16 + col));
  const uint32_t w[4] = {static_cast<uint32_t>(a.x), static_cast<uint32_t>(a.y), static_cast<uint32_t>(a.z),
                         static_cast<uint32_t>(a.w)};
#pragma unroll
  for (int j = 0; j < 4; ++j) {                 // indices < K <= 16384: no sign to extend
    idx[2 * j] = static_cast<int>(w[j] & 0xFFFFu);
    idx[2 * j + 1] = static_cast<int>(w[j] >> 16);
  }
}

// channel_scale[col .. col + 7] from scale_lanes, which holds each chunk of 128 columns (the last may be shorter,
// L columns) as the first four scales of its vectors of 8, then the last four: scale c0 + 8m + 4q + t at
// c0 + q * L / 2 + 4m + t. The 16 lanes of a chunk then read 256 contiguous bytes a load.
__device__ __forceinline__ void load_scales8(const float* scale_lanes, int col, int k, float s[8]) {
  const int c0 = col & ~127;
  const int half = min(128, k - c0) >> 1;
  const float* p = scale_lanes + c0 + ((col & 127) >> 1);     // 4m with m = (col & 127) / 8 (col % 8 == 0)
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p + half));
  s[0] = a.x; s[1] = a.y; s[2] = a.z; s[3] = a.w; s[4] = b.x; s[5] = b.y; s[6] = b.z; s[7] = b.w;
}

// Row and column of each of a thread's V vectors inside its CTA's R rows: one division for the first, then steps of
// 256 elements (a division a vector cost ~15 instructions each, a tenth of rotate_quant's issue slots:
// ncu). A slot past the CTA's R * K elements gets row >= R.
template <int V>
__device__ __forceinline__ void vector_slots(int k, int lane, int warp, int row[V], int col[V]) {
  const int e0 = ((warp * V) * 32 + lane) * 8;
  row[0] = e0 / k;
  col[0] = e0 - row[0] * k;
#pragma unroll
  for (int i = 1; i < V; ++i) {
    row[i] = row[i - 1];
    col[i] = col[i - 1] + 256;
    while (col[i] >= k) { col[i] -= k; ++row[i]; }
  }
}

// v <- v H_B / sqrt(B) for every block of B = 2^log_b values (norm = 1/sqrt(B); log_b = 0 leaves v as it is).
// Butterflies bit 0 first (the reference's order): lower = a + b, upper = a - b (a the lower element). Stages
// across warps go through `exchange` (R * K floats of shared memory, cta_elems = R * K) with two CTA barriers each,
// so every thread of the CTA must call this. kNormalize = false leaves out the final multiply by norm, for a caller
// that folds an exact power-of-two norm into a later multiply.
template <int V, bool kNormalize = true>
__device__ __forceinline__ void block_hadamard(float (&v)[V][8], int log_b, float norm, int lane, int warp,
                                               float* exchange, int cta_elems) {
#pragma unroll
  for (int s = 0; s < 3; ++s) {
    if (s >= log_b) break;
    const int h = 1 << s;
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (!(j & h)) { float a = v[i][j], b = v[i][j + h]; v[i][j] = a + b; v[i][j + h] = a - b; }
  }
#pragma unroll
  for (int s = 3; s < 8; ++s) {
    if (s >= log_b) break;
    const int h = 1 << (s - 3);
    // lower: v + p, upper: p - v, as one fma by +-1 (exact multiply, one rounding: the same float as the add)
    const float sign = (lane & h) ? -1.f : 1.f;
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = __fmaf_rn(sign, v[i][j], __shfl_xor_sync(0xffffffffu, v[i][j], h));
  }
#pragma unroll
  for (int hv = 1; hv < V; hv <<= 1) {
    if (8 + __ffs(hv) - 1 >= log_b) break;
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (!(i & hv))
#pragma unroll
        for (int j = 0; j < 8; ++j) { float a = v[i][j], b = v[i + hv][j]; v[i][j] = a + b; v[i + hv][j] = a - b; }
  }
  int log_v = 0;
  while ((1 << log_v) < V) ++log_v;
  for (int s = 8 + log_v; s < log_b; ++s) {          // across warps: one shared-memory round trip a stage
    const int h = 1 << s;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int e = ((warp * V + i) * 32 + lane) * 8;
      if (e < cta_elems)
#pragma unroll
        for (int j = 0; j < 8; ++j) exchange[e + j] = v[i][j];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int e = ((warp * V + i) * 32 + lane) * 8;
      if (e < cta_elems) {
        const float sign = (e & h) ? -1.f : 1.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = __fmaf_rn(sign, v[i][j], exchange[(e ^ h) + j]);
      }
    }
    __syncthreads();
  }
  if (kNormalize && log_b > 0) {
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = __fmul_rn(v[i][j], norm);
  }
}

// The transposed layout for blocks of 32 to 1024 (taken by rotate_quant.cu for blocks of 512 and 1024, by
// unrotate_weight.cu for 1024): a warp owns 1024 consecutive values, 32 a lane (one block of 1024, or 2 of 512, ...),
// and does every butterfly stage in registers, in two phases with one exchange through shared memory between them:
//   phase 1: lane l holds e = 32 l + c (c = 0..31): bits 0-4 of the index in registers;
//   phase 2: lane l holds e = l + 32 j (j = 0..31): bits 5 .. log2(B) - 1 in registers (j's bits 0 .. log2(B) - 6,
//            so that a block of 128 runs two stages here, of 512 four, of 1024 five).
// The stages run in the reference's order (bit 0 first), each value's additions the same as block_hadamard's, so the
// results are bit-equal. The exchange is the 32 x 32 transpose M[l][c] -> M[c][l] in two rounds of 2 KB (each lane
// gives 16 values and takes 16, so no round holds more than 32 values a lane in registers):
//   - phase 1's last stage (bit 4) swaps its halves on lanes 16-31 (the FFMA by -1 instead of +1, the same
//     rounding), so that slot i holds c = 16 (l >> 4) + i: round 0 sends slots 0-15, round 1 slots 16-31;
//   - phase 2 receives rows j = 16 (l >> 4) + i in round 0 and the other half in round 1, so slot s holds
//     j = s ^ 16 (l >> 4) from then on; its bit-9 stage (blocks of 1024) pairs the halves with an FFMA by +-1 that
//     keeps the swap;
//   - a round holds two 16 x 16 blocks (M[r][c] with r >> 4 == c >> 4, or !=), rows of 16 floats written as
//     16-byte chunks swizzled by row (chunk q at q ^ ((row >> 1) & 3)), the second block 16 floats further on, so
//     that the 16-byte writes and the column reads are free of bank conflicts.
constexpr int kTrBlockFloats = 16 * 16 + 16;                  // a 16 x 16 block and the pad before the next
constexpr int kTrWarpFloats = 2 * kTrBlockFloats;             // a warp's exchange region: 2176 bytes

// Butterfly stages h = 1, 2, 4, ... < kEnd over a lane's 32 registers, bit 0 first (lower = a + b, upper = a - b).
template <int kEnd>
__device__ __forceinline__ void register_butterflies(float (&v)[32]) {
#pragma unroll
  for (int h = 1; h < kEnd; h <<= 1)
#pragma unroll
    for (int c = 0; c < 32; ++c)
      if (!(c & h)) { const float lo = v[c], hi = v[c + h]; v[c] = lo + hi; v[c + h] = lo - hi; }
}

// Butterfly stage H as above, its two outputs swapped where swap is -1 (lower = a + b lands at the upper
// index): an FFMA by +-1 each, the same rounding as the FADDs. Layouts that exchange values across lanes use it
// so that every lane keeps and sends the same registers.
template <int H>
__device__ __forceinline__ void swapping_butterflies(float (&v)[32], float swap) {
#pragma unroll
  for (int c = 0; c < 32; ++c)
    if (!(c & H)) {
      const float lo = v[c], hi = v[c + H];
      v[c] = __fmaf_rn(swap, hi, lo);
      v[c + H] = __fmaf_rn(-swap, hi, lo);
    }
}

// a[c]: value 32 lane + c of the warp's 1024 (phase 1). b[s]: the Hadamard of its block of 2^LOG_B (unnormalised) at
// lane + 32 j, j = s ^ 16 (lane >> 4): on lanes 16-31 the two halves of b are swapped (callers place each value
// by j, i.e. offset 512 (lane >> 4) in opposite directions for s < 16 and s >= 16). xw: the warp's kTrWarpFloats
// floats of shared memory; other lanes may still read it when this returns (a barrier before reuse).
template <int LOG_B>
__device__ __forceinline__ void transposed_hadamard(float (&a)[32], float (&b)[32], float* xw, int lane) {
  static_assert(LOG_B >= 5 && LOG_B <= 10, "the transposed layout holds blocks of 32 to 1024");
  register_butterflies<16>(a);                               // phase 1: bits 0-3
  const int half = lane >> 4, r = lane & 15;
  const float swap = half ? -1.f : 1.f;
  swapping_butterflies<16>(a, swap);                         // bit 4, the halves swapped on lanes 16-31
  // The exchange: this lane writes row r of block `half`; reads column r of block half ^ round.
  float* wrow = xw + half * kTrBlockFloats + r * 16;
  const int wsw = (r >> 1) & 3, rq = r >> 2, rl = r & 3;
#pragma unroll
  for (int round = 0; round < 2; ++round) {
    __syncwarp();                                             // the previous reads of this region are done
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float* v = a + 16 * round + 4 * q;
      // (a float4 or uint4 assignment here came out of nvcc 13.0 as four 4-byte stores)
      asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32(wrow + ((q ^ wsw) << 2))),
                   "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]) : "memory");
    }
    __syncwarp();
    const float* rblk = xw + (half ^ round) * kTrBlockFloats;
#pragma unroll
    for (int i = 0; i < 16; ++i) b[16 * round + i] = rblk[i * 16 + ((rq ^ ((i >> 1) & 3)) << 2) + rl];
  }
  register_butterflies<(LOG_B < 9 ? 1 << (LOG_B - 5) : 16)>(b);  // phase 2: bits 5-8 inside each half
  if constexpr (LOG_B == 10) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {                           // bit 9: the lower value is b[i] on lanes 0-15
      const float f = b[i], g = b[16 + i];
      b[i] = __fmaf_rn(swap, f, g);                           // lanes 0-15: f + g (lower); 16-31: g - f (upper)
      b[16 + i] = __fmaf_rn(-swap, g, f);                     // lanes 0-15: f - g (upper); 16-31: f + g (lower)
    }
  }
}

// Vectors a thread (V) and rows a CTA (R) for width K and block B, with the CTA's thread count. V, from two runs
// of bench_cuda.py on the H100 (V = 2 everywhere, then V = 4):
//   blocks <= 512 with K <= 8192: V = 2 (8192 x 4608: 71% of copy at V = 2, 59% at V = 4; 8858 x 2432: 70%, 57%);
//   larger K or blocks of 1024: V = 4 (32760 x 13824, block 512: 52% at V = 2 with 864-thread CTAs, 60% at V = 4);
//   blocks of 2048 and more: V = 8, so that B <= 256 * V keeps a block inside a warp up to 2048.
// Rows a CTA: about 128 threads' worth of work, then more while over 1/16 of the last warp's lanes would idle
// (K = 1152 at V = 2: 72 slots a row, 3 rows fill 7 warps where 1 row left a quarter of 3 warps idle).
struct Tiling { int v, rows, threads; };
inline Tiling tiling_for(int64_t k, int block) {
  Tiling t{};
  t.v = block >= 2048 ? 8 : (block <= 512 && k <= 8192 ? 2 : 4);
  const int64_t per_row = (k + 8 * t.v - 1) / (8 * t.v);       // thread slots a row needs
  const auto threads_for = [&](int64_t rows) { return ((rows * k + 8 * t.v - 1) / (8 * t.v) + 31) / 32 * 32; };
  int64_t rows = std::max<int64_t>(1, std::min<int64_t>(kMaxRowsPerCta, 128 / per_row));
  const int64_t max_threads = t.v == 8 ? 256 : 512;
  while (rows < kMaxRowsPerCta && threads_for(rows + 1) <= max_threads &&
         16 * (threads_for(rows) - rows * per_row) > threads_for(rows))
    ++rows;
  t.rows = static_cast<int>(rows);
  t.threads = static_cast<int>(threads_for(rows));
  return t;
}

inline int log2_of(int block) {
  int log_b = 0;
  while ((1 << log_b) < block) ++log_b;
  return log_b;
}

}  // namespace lrq
