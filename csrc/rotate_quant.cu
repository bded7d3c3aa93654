// Fused rotate + per-token quantize: x [M, K] -> codes [M, K] (e4m3 or int8) and scales [M] (float32), or the
// rotated values in x's dtype (the weight-only path). Numerics are lrq_kernels/reference/act_quant.py's, bit for
// bit: the same butterfly additions in the same order (bit 0 of the index first), the normalisation as one
// float32 multiply, IEEE division for scale and inverse, round to nearest even, NaN confined to its token. One
// exception, on blocks of 128 (four_lane_group): an exact zero is +0 where the reference's is -0, which only a block
// of signed-zero inputs gives (an e4m3 code 0x00 for its 0x80; int codes are the same).
//
// Layout and butterflies: hadamard.cuh (a CTA owns R whole tokens; a thread V vectors of 8 contiguous values).
#include "hadamard.cuh"
#include "lrq.h"
#include "mbarrier.cuh"
#include <cuda_fp8.h>
#include <algorithm>
#include <numeric>
#include <type_traits>

namespace lrq {
namespace {

constexpr int kMaxTokensPerCta = kMaxRowsPerCta;

// One code in the low byte (the upper bits arbitrary), for stores of single bytes. fp8: the hardware's
// round-to-nearest-even cast with .satfinite, which is the reference's clamp to +-448 then cast (and keeps NaN); int:
// rint (half to even; NaN -> 0 in cvt.rni), clamp to +-qmax. fp8 converts the value paired with itself, so that no
// byte needs a shift and a mask to reach the low byte: the transposed path stores its codes a byte at a time, 32
// F2FP a lane for 32 codes instead of 16 F2FP, 16 LOP3 and 16 SHF (docs/tuning.md: rq-pair-cast, with the bf16
// unpack of hadamard.cuh and load_lane32's unguarded loads).
template <int FMT>
__device__ __forceinline__ uint32_t quantize_one(float y, float qmax) {
  if constexpr (FMT == kFP8) {
    return __nv_cvt_float2_to_fp8x2(make_float2(y, y), __NV_SATFINITE, __NV_E4M3);
  } else {
    const int lim = static_cast<int>(qmax);
    return static_cast<uint32_t>(min(max(__float2int_rn(y), -lim), lim));
  }
}

// Two code bytes (element 0 in the low byte): fp8 converts both in one instruction.
template <int FMT>
__device__ __forceinline__ uint32_t quantize_pair(float y0, float y1, float qmax) {
  if constexpr (FMT == kFP8) {
    return static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(make_float2(y0, y1), __NV_SATFINITE, __NV_E4M3));
  } else {
    return (quantize_one<FMT>(y0, qmax) & 0xFFu) | ((quantize_one<FMT>(y1, qmax) & 0xFFu) << 8);
  }
}

// The largest |v[i]| of N values, NaN if any is NaN (as the reference's amax): a tree of max.NaN with the absolute
// value as an operand modifier, one FMNMX.NAN a value (sm_90a). Its bits order like the values, and NaN's sort above
// +inf, so the per-token reduction across lanes and warps is an integer max of them. An integer max of |v|'s bits
// would take an and for each value plus half a three-way integer max (sm_90a SASS; docs/tuning.md: rq-half-exchange).
__device__ __forceinline__ float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
template <int N>
__device__ __forceinline__ float abs_max(const float* v) {
  if constexpr (N == 1) return fabsf(v[0]);
  else return max_nan(abs_max<N / 2>(v), abs_max<N - N / 2>(v + N / 2));
}

// Shared memory of a CTA, in floats from the start of the dynamic allocation:
//   [0, 2 * kMaxTokensPerCta)  per-token |value| bits (max-reduced), then the inverse scales, two sets used by
//                              alternate groups so that one group's readers never race the next group's writers;
//   [kBarOffset, +8)           one mbarrier (8 bytes) a ring stage, on Hopper: the stage's rows have landed;
//   [ring_offset, ...)         `stages` copies of a group's R * K input values (x's dtype), filled by bulk copies
//                              (sm_90) or cp.async (sm_80);
//   [exchange_offset, ...)     R * K floats for butterfly stages across warps (blocks over 256 * V only), or on the
//                              transposed path kTrWarpFloats a warp for its exchange and its codes.
constexpr int kMaxStages = 4;
constexpr int kBarOffset = 2 * kMaxTokensPerCta;                // 256 bytes: 8-byte aligned
struct Layout { int stages, ring_offset, exchange_offset; int64_t stage_elems; };

// Hopper copies a group's rows into the ring with one bulk copy a token row, issued by one thread and counted on
// the stage's mbarrier, which every thread waits on; sm_80 has each thread cp.async the 16-byte pieces it reads.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr bool kBulkRing = true;
#else
constexpr bool kBulkRing = false;
#endif

// The transposed path (TR), for blocks of 512 and 1024 with codes out, K >= 1024 and no ARS gather. A warp owns
// 1024 consecutive values of the CTA's R * K (one block of 1024 or 2 of 512; K % B == 0, so no block straddles two
// tokens) and does every butterfly stage in registers (hadamard.cuh, transposed_hadamard) instead of five of them
// across lanes (a shuffle and an FFMA a value a stage, 10 of the ~30 instructions a value and all of the kernel's
// MIO pressure: ncu; docs/tuning.md: rq-transposed). Codes go through the
// warp's shared memory (a byte a value at its output position, natural or GEMM order) and out as 16-byte stores.
// Blocks of 128 take the same slots without the transpose (four_lane_group below).
//
// Where this warp's values sit, the same for every group: its 1024 values are elements 1024 warp ... of the CTA's
// R * K, which belong to token tok_w up to index 32 split_j (split_j = 32: all of them) and to token tok_w + 1 after
// it (K >= 1024: never a third). Past the CTA's R * K, the token computed is R or more: not live.
struct TrSlots {
  int tok_w, split_j;
  int tok1, col1;             // phase 1: the token of this lane's 32 values (lane >= split_j: the second), column
  unsigned second;            // phase 2: bit g set where this lane's g-th block of slots is token tok_w + 1's
  int out_tok[2], out_col[2]; // the two 16-byte pieces of codes this lane stores: elements 1024 warp + 16 lane + 512 q
};
template <int LOG_B>
__device__ __forceinline__ TrSlots tr_slots(int k, int lane, int warp) {
  TrSlots t;
  const int e0 = warp << 10;
  t.tok_w = e0 / k;
  // a multiple of 4 (blocks of >= 128 values); 32 for blocks of 1024, as K % 1024 == 0
  t.split_j = LOG_B == 10 ? 32 : min(32, ((t.tok_w + 1) * k - e0) >> 5);
  t.tok1 = t.tok_w + (lane >= t.split_j);
  t.col1 = e0 + (lane << 5) - t.tok1 * k;
  constexpr int G = 1 << (LOG_B - 5);                        // slots a block holds in phase 2
  const int jx = (lane >> 4) << 4;                           // slot s holds j = s ^ jx (hadamard.cuh)
  t.second = 0u;
#pragma unroll
  for (int g = 0; g < 32 / G; ++g)
    if (G < 32 && ((g * G) ^ jx) >= t.split_j) t.second |= 1u << g;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int off = 16 * lane + 512 * q;
    t.out_tok[q] = t.tok_w + (off >= 32 * t.split_j);
    t.out_col[q] = e0 + off - t.out_tok[q] * k;
  }
  return t;
}

// Phase 1's values of this lane: elements 1024 warp + 32 lane ... + 31 of the staged group. Slots of tokens that are
// not live (past M in the last group) read whatever the stage holds: their butterflies never mix with a live token's
// (no block straddles two tokens), and their amax, scale and codes are never used. Zeroing them instead cost ~17
// instructions a group on every group (ptxas hoisted the zero fill above the branch, sm_90a). Slots past the CTA's
// R * K (the last warp's, where 1024 does not divide R * K) read the stage's last 32 values instead: past the stage
// lies the next one, or the end of shared memory.
template <typename T>
__device__ __forceinline__ void load_lane32(const T* stage, int cta_elems, int lane, int warp, float (&a)[32]) {
  const T* src = stage + min((warp << 10) + (lane << 5), cta_elems - 32);
#pragma unroll
  for (int q = 0; q < 4; ++q) load8_shared<T>(src + 8 * q, a + 8 * q);
}

template <typename T, int FMT, int LOG_B, typename Refill, typename TokenScales>
__device__ __forceinline__ void transposed_group(const T* stage, int cta_elems, float* exchange, void* out,
                                                 int64_t stride_out, int64_t row0, int live_tokens, const TrSlots& ts,
                                                 int lane, int warp, unsigned* amax_bits, const float* inv_scale,
                                                 float norm, float qmax, bool gemm_order, Refill&& refill,
                                                 TokenScales&& token_scales) {
  float a[32];
  load_lane32<T>(stage, cta_elems, lane, warp, a);
  refill();

  float* xw = exchange + warp * kTrWarpFloats;
  float b[32];
  transposed_hadamard<LOG_B>(a, b, xw, lane);
  // Blocks of 4^n fold their norm into the scales (the kernel's kFoldNorm); 512 multiplies here, as the reference
  // does.
  if constexpr (LOG_B % 2) {
#pragma unroll
    for (int c = 0; c < 32; ++c) b[c] = __fmul_rn(b[c], norm);
  }

  // Per-token absmax (see the strided path): each block's G slots max-reduce into its token's, then one reduction
  // and one atomic a token of the warp.
  constexpr int G = 1 << (LOG_B - 5);
  unsigned m0 = 0u, m1 = 0u;
#pragma unroll
  for (int g = 0; g < 32 / G; ++g) {
    const unsigned mg = __float_as_uint(abs_max<G>(b + g * G));
    if ((ts.second >> g) & 1u) m1 = max(m1, mg);
    else m0 = max(m0, mg);
  }
  m0 = __reduce_max_sync(0xffffffffu, m0);
  if (lane == 0 && ts.tok_w < live_tokens) atomicMax(&amax_bits[ts.tok_w], m0);
  if constexpr (G < 32) {
    m1 = __reduce_max_sync(0xffffffffu, m1);
    if (lane == 0 && ts.split_j < 32 && ts.tok_w + 1 < live_tokens) atomicMax(&amax_bits[ts.tok_w + 1], m1);
  }
  token_scales();                                             // two CTA barriers: the exchange region is free

  const float inv0 = inv_scale[ts.tok_w], inv1 = inv_scale[min(ts.tok_w + 1, kMaxTokensPerCta - 1)];
  // b[c] is value lane + 32 j of the warp's 1024, j = c ^ 16 (lane >> 4): its byte goes to 32 j + lane, or in GEMM
  // order (gemm_a8_sm90.cu: K = 32q + 8j + 4h + e at 32j + 16h + 4q + e in each 128) to 128 (j >> 2) + 4 (j & 3)
  // plus a part from the lane; either way c's position moved by +512 (c < 16) or -512 (c >= 16) on lanes 16-31.
  uint8_t* codes = reinterpret_cast<uint8_t*>(xw);
  const int lane_pos = gemm_order ? 32 * (lane >> 3) + 16 * ((lane >> 2) & 1) + (lane & 3) : lane;
  const int swap = (lane >> 4) << 9;
  uint8_t* codes_lo = codes + lane_pos + swap;
  uint8_t* codes_hi = codes + lane_pos - swap;
#pragma unroll
  for (int c = 0; c < 32; ++c) {
    const float s = (ts.second >> (c / G)) & 1u ? inv1 : inv0;
    const int p = gemm_order ? 128 * (c >> 2) + 4 * (c & 3) : 32 * c;
    (c < 16 ? codes_lo : codes_hi)[p] = static_cast<uint8_t>(quantize_one<FMT>(__fmul_rn(b[c], s), qmax));
  }
  __syncwarp();
#pragma unroll
  for (int q = 0; q < 2; ++q)
    if (ts.out_tok[q] < live_tokens)
      *reinterpret_cast<uint4*>(static_cast<uint8_t*>(out) + (row0 + ts.out_tok[q]) * stride_out + ts.out_col[q]) =
          *reinterpret_cast<const uint4*>(codes + 16 * lane + 512 * q);
}

// Blocks of 128 on the transposed path's slots (tr_slots), without its transpose: a block is 4 lanes' 32 contiguous
// values (position p = lane & 3 holds its values 32 p ... 32 p + 31), bits 0-4 run in registers and bits 5-6 across
// the 4 lanes: faster than the strided path (3 register stages, 4 across lanes) and than the full transposed
// layout (7 register stages, then the exchange and byte-wise code staging; docs/tuning.md: rq-four-lane).
//
// The stages across lanes exchange half the values, not all: in the stage on lane bit b, the two lanes
// of a pair each keep half of the indices c they share, send the other half, and compute both outputs (sum and
// difference) of the half they kept. That is half a shuffle and one FADD a value a stage, where a shuffle and an
// FFMA by +-1 of every value took twice that. Two things make it cost no selects:
//   - Which half a lane sends has to be the same registers on every lane. The register stages on bits 3 and 4 are
//     FFMAs by +-1 that swap their two halves on lanes whose bit 1, resp. bit 0, is set (swapping_butterflies, as
//     transposed_hadamard's bit-4 stage does), so that a lane always keeps slots 0-15 (then 0-7) and sends the rest.
//   - The upper lane of a pair computes own - received = -(lower - upper) exactly (IEEE rounding is symmetric), so
//     each output carries a sign of its lane, folded into the final multiply by +-1/sqrt(128).
// Each lane ends with 4 runs of 8 values (one a position p, at column 32 p + 16 (lane & 1) + 8 (lane >> 1 & 1) of
// the block), all of its block's token, and writes their codes as four 8-byte stores (eight 4-byte ones in GEMM
// order). docs/tuning.md: rq-half-exchange.
template <typename T, int FMT, int LOG_B, typename Refill, typename TokenScales>
__device__ __forceinline__ void four_lane_group(const T* stage, int cta_elems, void* out, int64_t stride_out,
                                                int64_t row0, int live_tokens, const TrSlots& ts, int lane, int warp,
                                                unsigned* amax_bits, const float* inv_scale, float norm, float qmax,
                                                bool gemm_order, Refill&& refill, TokenScales&& token_scales) {
  static_assert(LOG_B == 7, "blocks of 128: 4 lanes of 32 values");
  const bool live = ts.tok1 < live_tokens;
  float a[32];
  load_lane32<T>(stage, cta_elems, lane, warp, a);
  refill();
  register_butterflies<8>(a);                                // bits 0-2
  // Bits 3 and 4, their halves swapped on lanes with lane bit 1, resp. 0: slot s then holds c = s ^ 8 b1 ^ 16 b0.
  const float swap1 = (lane & 2) ? -1.f : 1.f, swap0 = (lane & 1) ? -1.f : 1.f;
  swapping_butterflies<8>(a, swap1);
  swapping_butterflies<16>(a, swap0);
  // Bit 5 (lane bit 0): keep slots 0-15 (c = 16 b0 + (s ^ 8 b1)), send 16-31, which on the partner hold the same c.
  // sum: position p & 2; diff: position (p & 2) + 1, times -1 on lanes with bit 0 set.
  float sum[16], diff[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const float r = __shfl_xor_sync(0xffffffffu, a[16 + i], 1);
    sum[i] = a[i] + r;
    diff[i] = a[i] - r;
  }
  // Bit 6 (lane bit 1): keep slots 0-7 (c = 16 b0 + 8 b1 + s), send 8-15. y[p]: position p, times the sign of the
  // lane's bit 1 (p = 2, 3) and of its bit 0 (p = 1, 3).
  float y[4][8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float r = __shfl_xor_sync(0xffffffffu, sum[8 + i], 2);
    y[0][i] = sum[i] + r;
    y[2][i] = sum[i] - r;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float r = __shfl_xor_sync(0xffffffffu, diff[8 + i], 2);
    y[1][i] = diff[i] + r;
    y[3][i] = diff[i] - r;
  }
  // The normalisation with the signs: y * (+-norm) + 0, which is y * (+-norm) but for an exact zero, always +0. The
  // reference's zero is -0 only where a's lower value is -0 and its upper +0 (or both -0 for a sum), that is where
  // the block's inputs are signed zeros; a zero from values that cancel, and every value of a zero token, is +0, as
  // here. (Without the + 0 the carried signs turned such zeros into -0: e4m3 code 0x80 where the reference has 0.)
  const float signed_norm[4] = {norm, swap0 * norm, swap1 * norm, swap0 * swap1 * norm};
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int i = 0; i < 8; ++i) y[p][i] = __fmaf_rn(y[p][i], signed_norm[p], 0.f);

  // Per-token absmax: this lane's values are token tok1's, which is tok_w or tok_w + 1.
  const unsigned mx = __float_as_uint(abs_max<32>(&y[0][0]));
  const bool second = ts.tok1 != ts.tok_w;
  const unsigned m0 = __reduce_max_sync(0xffffffffu, second ? 0u : mx);
  const unsigned m1 = __reduce_max_sync(0xffffffffu, second ? mx : 0u);
  if (lane == 0 && ts.tok_w < live_tokens) atomicMax(&amax_bits[ts.tok_w], m0);
  if (lane == 0 && ts.split_j < 32 && ts.tok_w + 1 < live_tokens) atomicMax(&amax_bits[ts.tok_w + 1], m1);
  token_scales();

  const float inv = inv_scale[min(ts.tok1, kMaxTokensPerCta - 1)];
  uint32_t w[4][2];
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float* v = y[p] + 4 * h;
      const uint32_t lo = quantize_pair<FMT>(__fmul_rn(v[0], inv), __fmul_rn(v[1], inv), qmax);
      const uint32_t hi = quantize_pair<FMT>(__fmul_rn(v[2], inv), __fmul_rn(v[3], inv), qmax);
      w[p][h] = lo | (hi << 16);
    }
  if (!live) return;
  const int run = 16 * (lane & 1) + 8 * ((lane >> 1) & 1);   // this lane's columns in each 32 of the block
  uint8_t* block = static_cast<uint8_t*>(out) + (row0 + ts.tok1) * stride_out + ts.col1 - 32 * (lane & 3);
  if (gemm_order) {
    // the W4A8 GEMM's K order (gemm_a8_sm90.cu): K = 32q + 8j + 4h + e at 32j + 16h + 4q + e in its 128; position p
    // is q and run = 8j
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
      for (int h = 0; h < 2; ++h) *reinterpret_cast<uint32_t*>(block + 4 * run + 16 * h + 4 * p) = w[p][h];
  } else {
#pragma unroll
    for (int p = 0; p < 4; ++p) *reinterpret_cast<uint2*>(block + 32 * p + run) = make_uint2(w[p][0], w[p][1]);
  }
}

// LOG_B: log2 of the Hadamard block, fixed at compile time for the blocks and V that dispatch_v lists (0: read
// from log_b_arg). With it fixed, the stage loops have no exits, so the butterflies need no branches and no register
// copies back to the loop's registers (ncu: branches and copies were ~5 of 36 instructions a value).
//
// The grid is persistent: CTA b takes the token groups b, b + gridDim.x, ... and keeps the input of the next
// `stages - 1` groups in flight (copies into a shared-memory ring) while it rotates and quantizes the current
// one. One-shot CTAs (a CTA a token group) had no load in flight while they computed: 56-73% of copy bandwidth
// on the H200, long-scoreboard stalls 33% (ncu). sm_80: every thread copies exactly the 16-byte pieces
// it later reads (cp.async), so the plain path needs no barrier between a copy and its use; the ARS gather reads
// other threads' pieces and waits at a barrier first. Hopper: one bulk copy a token row, issued by thread 0, so no
// thread spends instructions on copies (their addresses were ~2.5 of 31.5 instructions a value, ncu),
// and an mbarrier a stage replaces the gather's barrier.
template <typename T, int V, int FMT, int LOG_B, bool TR>
__global__ void __launch_bounds__(Bounds<V>::kThreads, Bounds<V>::kMinBlocks) rotate_quant_kernel(
    const T* __restrict__ x, int64_t stride_x, const int16_t* __restrict__ perm16,
    const float* __restrict__ scale_lanes, void* __restrict__ out, int64_t stride_out,
    float* __restrict__ scales, int64_t m, int k, int log_b_arg, int tokens_per_cta, Layout lay, float norm,
    float qmax, bool gemm_order) {
  const int log_b = LOG_B ? LOG_B : log_b_arg;
  extern __shared__ __align__(16) float smem[];
  unsigned* amax_sets = reinterpret_cast<unsigned*>(smem);   // [2][kMaxTokensPerCta]
  T* ring = reinterpret_cast<T*>(smem + lay.ring_offset);     // [stages][R * K]
  float* exchange = smem + lay.exchange_offset;               // [R * K]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int cta_elems = tokens_per_cta * k;
  const int groups = static_cast<int>((m + tokens_per_cta - 1) / tokens_per_cta);   // < 2^31 (launcher)
  constexpr int kPieces = 8 * sizeof(T) / 16;                 // 16-byte pieces of a vector of 8 values
  // Tokens of the group starting at row0 that exist (the last group may be partial).
  const auto live_tokens_at = [&](int64_t row0) {
    return static_cast<int>(min(static_cast<int64_t>(tokens_per_cta), m - row0));
  };

  if (threadIdx.x < 2 * kMaxTokensPerCta) amax_sets[threadIdx.x] = 0u;
  const uint32_t bar0 = smem_u32(smem + kBarOffset);          // stage s's mbarrier at bar0 + 8 s
  // Thread 0 alone arms the barriers and issues the copies; the others first wait on a barrier after the
  // __syncthreads below.
  if (kBulkRing && threadIdx.x == 0)
    for (int s = 0; s < lay.stages; ++s) mbar_init(bar0 + 8 * s, 1);

  // A slot past the CTA's R * K elements has tok >= R, so `tok < live tokens` tells the slots to compute.
  int tok[V], col[V];
  vector_slots<V>(k, lane, warp, tok, col);
  TrSlots ts{};
  if constexpr (TR) ts = tr_slots<LOG_B>(k, lane, warp);

  // Copies group `grp`'s input into ring stage `slot` (nothing past the last group: on sm_80 an empty commit group
  // keeps the count of groups in flight the same on every iteration). Slot e of a stage is element e = tok * K + col.
  // Hopper: the calling thread 0 arms the stage's barrier with the group's bytes and copies each live token's row.
  auto fetch = [&](int grp, int slot) {
    if constexpr (kBulkRing) {
      if (threadIdx.x == 0 && grp < groups) {
        const int64_t row0 = static_cast<int64_t>(grp) * tokens_per_cta;
        const int live_tokens = live_tokens_at(row0);
        const uint32_t bar = bar0 + 8 * slot, row_bytes = static_cast<uint32_t>(k * sizeof(T));
        const uint32_t stage = smem_u32(ring + slot * lay.stage_elems);
        fence_proxy_async_shared();                           // after the reads of this stage's previous group
        mbar_expect_tx(bar, live_tokens * row_bytes);
        for (int t = 0; t < live_tokens; ++t)
          bulk_copy_g2s(stage + t * row_bytes, x + (row0 + t) * stride_x, row_bytes, bar);
      }
    } else {
      if (grp < groups) {
        const int64_t row0 = static_cast<int64_t>(grp) * tokens_per_cta;
        const int live_tokens = live_tokens_at(row0);
        T* stage = ring + slot * lay.stage_elems;
        if constexpr (TR) {                                   // the 32 values this lane reads in phase 1
          if (ts.tok1 < live_tokens) {
            const T* src = x + (row0 + ts.tok1) * stride_x + ts.col1;
            T* dst = stage + (warp << 10) + (lane << 5);
#pragma unroll
            for (int q = 0; q < 4 * kPieces; ++q) cp_async16(dst + q * (16 / sizeof(T)), src + q * (16 / sizeof(T)));
          }
          cp_async_commit();
          return;
        }
#pragma unroll
        for (int i = 0; i < V; ++i) {
          if (tok[i] >= live_tokens) continue;
          const T* src = x + (row0 + tok[i]) * stride_x + col[i];
          T* dst = stage + tok[i] * k + col[i];
#pragma unroll
          for (int q = 0; q < kPieces; ++q) cp_async16(dst + q * (16 / sizeof(T)), src + q * (16 / sizeof(T)));
        }
      }
      cp_async_commit();
    }
  };
  for (int s = 0; s + 1 < lay.stages; ++s) fetch(blockIdx.x + s * gridDim.x, s);
  __syncthreads();                                            // amax_sets initialised

  int slot = 0, parity = 0;
  uint32_t ring_phase = 0;                                    // bit s: the parity of stage s's next phase
  for (int grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t row0 = static_cast<int64_t>(grp) * tokens_per_cta;
    const int live_tokens = live_tokens_at(row0);
    unsigned* amax_bits = amax_sets + parity * kMaxTokensPerCta;

    if constexpr (kBulkRing) {
      mbar_wait(bar0 + 8 * slot, (ring_phase >> slot) & 1u);  // every row of this group has landed
      ring_phase ^= 1u << slot;
    } else {
      cp_async_wait_pending(lay.stages - 2);                  // this group's copies (this thread's) have landed
      if (perm16 != nullptr) __syncthreads();                 // ... and every thread's, for the gather
    }
    const T* stage = ring + slot * lay.stage_elems;
    // Refill the stage read on the previous iteration. sm_80 plain path: only this thread read it, and its values
    // were consumed then; gather: every thread's reads of it came before this iteration's barrier. Hopper: every
    // thread read it, before the previous iteration's amax barriers (FP8/INT codes), or before the barrier here.
    const auto refill = [&]() {
      if (kBulkRing && FMT == kSame) __syncthreads();
      fetch(grp + (lay.stages - 1) * gridDim.x, slot == 0 ? lay.stages - 1 : slot - 1);
      slot = slot + 1 == lay.stages ? 0 : slot + 1;
    };
    // Codes from a block of 4^n values (norm = 2^-n, exact): the butterflies' sums quantized with the inverse scale
    // times norm give the reference's codes (v * norm rounds to nothing, so (v * norm) * inv == v * (inv * norm)
    // unless v * norm is subnormal), and one multiply a value fewer. The amax of the unnormalised values times norm
    // is the reference's amax (docs/tuning.md: rq-fold-norm).
    constexpr bool kFoldNorm = FMT != kSame && LOG_B > 0 && LOG_B % 2 == 0;
    // Per-token scales from the amax bits, between two barriers. One IEEE division a token (not a vector). The
    // inverse scale replaces the amax bits in place. The other set is cleared for the next group: its last readers,
    // the previous group's quantize step, finished before this group's first barrier, and the next group's atomics
    // come after this group's second.
    float* inv_scale = reinterpret_cast<float*>(amax_bits);
    const auto token_scales = [&]() {
      __syncthreads();
      if (threadIdx.x < tokens_per_cta) {
        float amax = __uint_as_float(amax_bits[threadIdx.x]);
        if (kFoldNorm) amax = __fmul_rn(amax, norm);
        const int64_t row = row0 + threadIdx.x;
        if (row < m) scales[row] = __fdiv_rn(amax, qmax);
        const float inv = amax > 0.f ? __fdiv_rn(qmax, amax) : 0.f;
        inv_scale[threadIdx.x] = kFoldNorm ? __fmul_rn(inv, norm) : inv;
        amax_sets[(parity ^ 1) * kMaxTokensPerCta + threadIdx.x] = 0u;
      }
      __syncthreads();
      parity ^= 1;
    };

    if constexpr (TR && LOG_B <= 7) {
      four_lane_group<T, FMT, LOG_B>(stage, cta_elems, out, stride_out, row0, live_tokens, ts, lane, warp, amax_bits,
                                     inv_scale, norm, qmax, gemm_order, refill, token_scales);
    } else if constexpr (TR) {
      transposed_group<T, FMT, LOG_B>(stage, cta_elems, exchange, out, stride_out, row0, live_tokens, ts, lane, warp,
                                      amax_bits, inv_scale, norm, qmax, gemm_order, refill, token_scales);
    } else {
      bool live[V];
#pragma unroll
      for (int i = 0; i < V; ++i) live[i] = tok[i] < live_tokens;
      float v[V][8];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (!live[i]) {
#pragma unroll
          for (int j = 0; j < 8; ++j) v[i][j] = 0.f;
          continue;
        }
        if (perm16 == nullptr) {
          load8_shared<T>(stage + tok[i] * k + col[i], v[i]);
        } else {
          int idx[8];
          load_perm8(perm16, col[i], idx);
          const T* srow = stage + tok[i] * k;
#pragma unroll
          for (int j = 0; j < 8; ++j) v[i][j] = to_float<T>(srow[idx[j]]);
        }
        if (scale_lanes != nullptr) {
          float s[8];
          load_scales8(scale_lanes, col[i], k, s);
#pragma unroll
          for (int j = 0; j < 8; ++j) v[i][j] = __fmul_rn(v[i][j], s[j]);
        }
      }
      refill();

      block_hadamard<V, !kFoldNorm>(v, log_b, norm, lane, warp, exchange, cta_elems);

      if constexpr (FMT == kSame) {
#pragma unroll
        for (int i = 0; i < V; ++i)
          if (live[i]) store8<T>(static_cast<T*>(out) + (row0 + tok[i]) * stride_out + col[i], v[i]);
      } else {
        // Per-token absmax (abs_max), as float bits.
        if (tokens_per_cta == 1) {
          // Every slot of the CTA is token 0's or past it (zeros: their blocks never mix with token 0's), so one
          // reduction and one atomic a warp (the per-vector vote below cost ~6 instructions a vector: ncu).
          float m = abs_max<8>(v[0]);
#pragma unroll
          for (int i = 1; i < V; ++i) m = max_nan(m, abs_max<8>(v[i]));
          const unsigned mx = __reduce_max_sync(0xffffffffu, __float_as_uint(m));
          if (lane == 0) atomicMax(&amax_bits[0], mx);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) {
            unsigned mx = __float_as_uint(abs_max<8>(v[i]));
            const bool one_token = __all_sync(0xffffffffu, tok[i] == __shfl_sync(0xffffffffu, tok[i], 0));
            if (one_token) {
              mx = __reduce_max_sync(0xffffffffu, mx);
              if (lane == 0 && live[i]) atomicMax(&amax_bits[tok[i]], mx);   // lane 0's slot is the warp's first
            } else if (live[i]) {
              atomicMax(&amax_bits[tok[i]], mx);
            }
          }
        }
        token_scales();
#pragma unroll
        for (int i = 0; i < V; ++i) {
          if (!live[i]) continue;
          const float inv = inv_scale[tok[i]];
          uint32_t w[4];
#pragma unroll
          for (int j = 0; j < 4; ++j)
            w[j] = quantize_pair<FMT>(__fmul_rn(v[i][2 * j], inv), __fmul_rn(v[i][2 * j + 1], inv), qmax);
          const uint32_t lo = w[0] | (w[1] << 16), hi = w[2] | (w[3] << 16);
          uint8_t* dst = static_cast<uint8_t*>(out) + (row0 + tok[i]) * stride_out;
          if (gemm_order) {
            // the W4A8 GEMM's K order (gemm_a8_sm90.cu): K = 32q + 8j + 4h + e at 32j + 16h + 4q + e in its 128
            const int c = col[i] & 127, base = col[i] - c + 32 * ((c >> 3) & 3) + 4 * (c >> 5);
            *reinterpret_cast<uint32_t*>(dst + base) = lo;
            *reinterpret_cast<uint32_t*>(dst + base + 16) = hi;
          } else {
            *reinterpret_cast<uint2*>(dst + col[i]) = make_uint2(lo, hi);
          }
        }
      }
    }
  }
  if (!kBulkRing) cp_async_wait<0>();                         // no copy outlives the CTA (empty groups only)
}

// max_ctas_per_sm: 0 leaves CTAs an SM to the occupancy calculator.
struct Plan { int v, tokens, threads; size_t smem; Layout layout; bool transpose; int max_ctas_per_sm; };

// V, tokens a CTA and threads: tiling_for (hadamard.cuh).
// Ring stages: 4 where they fit in kRingBudget, down to 2 (the least a ring can be). With the ARS gather, 2: its
// scattered shared-memory reads want more CTAs an SM rather than more groups in flight (docs/tuning.md:
// rq-ring-stages).
// The transposed path (asked for by `transpose`; blocks of 128, 512 or 1024, K >= 1024, codes out, no gather) has
// tokens and threads of its own (lane_tokens for blocks of 128, tr_tokens for the others) and 2 stages, its exchange
// region (none for 128) counted in the budget; it is taken where they fit in kRingBudget + 8 KB (two CTAs an SM):
// every K of dit_shapes.json in bf16/fp16.
// 2 stages leave room for more CTAs an SM, which measured faster than deeper rings (docs/tuning.md:
// rq-ring-stages). Blocks of 128 (four_lane_group, without a transpose) also take 2 stages.
// x_bytes is x's element size.
constexpr size_t kRingBudget = 96 * 1024;

// Tokens a CTA on the transposed path (blocks of 512 and 1024), whose warps take 1024 of the CTA's R * K values each
// (the last one partly idle unless 1024 divides R * K): the least R with at least 3 warps' work and at most 1/32 of
// the last warp idle (K = 4608: 2 tokens in 9 warps; 1536: 2 in 3; K = 1024 n: 1, or 3 at K = 1024), else the
// least idle within 16 warps (13824: 1 in 14). Then fewer while the groups would not give every SM a CTA.
// 0: no R fits.
inline int tr_tokens(int64_t k, int64_t m, int sms) {
  int best = 0;
  double best_idle = 1.0;
  for (int r = 1; r <= kMaxTokensPerCta; ++r) {
    const int64_t warps = (r * k + 1023) / 1024;
    if (warps > 16) break;
    if (r * k < 3 * 1024) continue;
    const double idle = 1.0 - static_cast<double>(r * k) / static_cast<double>(warps * 1024);
    if (idle <= 1.0 / 32) { best = r; break; }
    if (idle < best_idle) { best = r; best_idle = idle; }
  }
  while (best > 1 && (m + best - 1) / best < sms) --best;
  return best;
}

// Tokens a CTA for blocks of 128 (four_lane_group): the least R with R * K >= 4096, 4 or 5 warps (K = 1152:
// 4 in 5 warps; 2432: 2 in 5), fewer while the groups would not give every SM a CTA. The path runs at most
// kLaneCtasPerSm CTAs an SM, the grid all resident CTAs, groups interleaved across them (docs/tuning.md:
// rq-lane-tokens).
constexpr int kLaneCtasPerSm = 4;
inline int lane_tokens(int64_t k, int64_t m, int sms) {
  int r = static_cast<int>(std::min<int64_t>(kMaxTokensPerCta, (4096 + k - 1) / k));
  while (r > 1 && (m + r - 1) / r < sms) --r;
  return r;
}

// m and sms (the device's SMs) only matter to the transposed path.
Plan plan_for(int64_t k, int block, int x_bytes, bool gather, bool transpose = false, int64_t m = 0, int sms = 0) {
  Plan p{};
  const Tiling t = tiling_for(k, block);
  p.v = t.v;
  p.tokens = t.rows;
  p.threads = t.threads;
  // blocks of 128: four_lane_group, no exchange region
  const auto exchange_for = [&](int threads) -> size_t {
    return block > 128 ? sizeof(float) * kTrWarpFloats * (threads / 32) : 0;
  };
  if (transpose && (block == 128 || block == 512 || block == 1024) && k >= 1024) {
    const int r = block == 128 ? lane_tokens(k, m, sms) : tr_tokens(k, m, sms);
    const size_t stage_bytes = static_cast<size_t>(r) * k * x_bytes;
    const int threads = static_cast<int>((r * k + 1023) / 1024) * 32;
    if (r > 0 && threads <= Bounds<4>::kThreads && 2 * stage_bytes + exchange_for(threads) <= kRingBudget + 8 * 1024) {
      p.transpose = true;
      p.v = 4;                                                   // the kernel's launch bounds: Bounds<4>
      p.tokens = r;
      p.threads = threads;
      p.max_ctas_per_sm = block == 128 ? kLaneCtasPerSm : 0;
    }
  }
  const bool cross_warp = !p.transpose && block > 256 * p.v;
  Layout& l = p.layout;
  l.stage_elems = p.tokens * k;
  const size_t stage_bytes = static_cast<size_t>(l.stage_elems) * x_bytes;
  const size_t tr_bytes = p.transpose ? exchange_for(p.threads) : 0;
  l.stages = gather || p.transpose ? 2 : 4;
  while (l.stages > 2 && l.stages * stage_bytes + tr_bytes > kRingBudget) --l.stages;
  l.ring_offset = kBarOffset + 2 * kMaxStages;                   // 16-byte aligned (bulk copies): 72 floats
  const int64_t ring_floats = (l.stages * stage_bytes + 15) / 16 * 4;
  l.exchange_offset = static_cast<int>(l.ring_offset + ring_floats);
  const size_t exchange_bytes = p.transpose ? tr_bytes : cross_warp ? sizeof(float) * l.stage_elems : 0;
  p.smem = sizeof(float) * l.exchange_offset + exchange_bytes;
  return p;
}

template <typename T, int V, int FMT, int LOG_B, bool TR = false>
std::string launch(const RotateQuantArgs& a, const Plan& p, int log_b) {
  auto kernel = rotate_quant_kernel<T, V, FMT, LOG_B, TR>;
  if (p.smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)p.smem);
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(rotate_quant)", e);
  }
  int per_sm = 0;
  cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, p.threads, p.smem);
  if (e != cudaSuccess) return cuda_error("cudaOccupancyMaxActiveBlocksPerMultiprocessor(rotate_quant)", e);
  if (p.max_ctas_per_sm > 0) per_sm = std::min(per_sm, p.max_ctas_per_sm);
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.block)));
  const int64_t groups = (a.m + p.tokens - 1) / p.tokens;
  if (groups + 4 * static_cast<int64_t>(sm_count(a.device)) * 32 >= (int64_t(1) << 31))
    return "rotate_quant: M=" + std::to_string(a.m) + " is too large (token groups must fit in 31 bits)";
  const int64_t grid = std::min<int64_t>(groups, static_cast<int64_t>(std::max(1, per_sm)) * sm_count(a.device));
  kernel<<<static_cast<unsigned>(grid), p.threads, p.smem, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const T*>(a.x), a.stride_x, a.perm16, a.scale_lanes, a.out, a.stride_out,
      a.scales, a.m, a.k, log_b, p.tokens, p.layout, norm, a.qmax, a.gemm_order);
  return last_launch_error("rotate_quant_kernel");
}

// Blocks with a kernel of their own: 128 and 512 at V = 2, 512 and 1024 at V = 4 (every block of dit_shapes.json
// but 64): faster than one kernel reading log2(block) at run time (docs/tuning.md: rq-compile-time-block).
template <typename T, int FMT>
std::string dispatch_v(const RotateQuantArgs& a, const Plan& p) {
  const int log_b = log2_of(a.block);
  if constexpr (FMT != kSame) {
    if (p.transpose) {
      if (log_b == 7) return launch<T, 4, FMT, 7, true>(a, p, log_b);
      if (log_b == 9) return launch<T, 4, FMT, 9, true>(a, p, log_b);
      if (log_b == 10) return launch<T, 4, FMT, 10, true>(a, p, log_b);
    }
  }
  switch (p.v) {
    case 2:
      if (log_b == 7) return launch<T, 2, FMT, 7>(a, p, log_b);
      if (log_b == 9) return launch<T, 2, FMT, 9>(a, p, log_b);
      return launch<T, 2, FMT, 0>(a, p, log_b);
    case 4:
      if (log_b == 10) return launch<T, 4, FMT, 10>(a, p, log_b);
      if (log_b == 9) return launch<T, 4, FMT, 9>(a, p, log_b);
      return launch<T, 4, FMT, 0>(a, p, log_b);
    case 8: return launch<T, 8, FMT, 0>(a, p, log_b);
  }
  return "rotate_quant: no kernel for V=" + std::to_string(p.v);
}

template <typename T>
std::string dispatch_fmt(const RotateQuantArgs& a, const Plan& p) {
  switch (a.out_format) {
    case kFP8: return dispatch_v<T, kFP8>(a, p);
    case kINT: return dispatch_v<T, kINT>(a, p);
    case kSame: return dispatch_v<T, kSame>(a, p);
  }
  return "rotate_quant: out_format must be 0 (fp8), 1 (int) or 2 (same as x), got " + std::to_string(a.out_format);
}

}  // namespace

std::string rotate_quant_unsupported(int64_t k, int block) {
  if (k <= 0 || k % 8) return "K must be a positive multiple of 8 (16-byte rows), got K=" + std::to_string(k);
  if (block < 1 || (block & (block - 1)) || k % block)
    return "block must be a power of two dividing K=" + std::to_string(k) + ", got " + std::to_string(block);
  if (block > 16384) return "block must be <= 16384, got " + std::to_string(block);
  const Plan p = plan_for(k, block, /*x_bytes=*/4, /*gather=*/false);   // fp32 x: the most shared memory
  const int max_threads = max_threads_for_v(p.v);
  if (p.threads > max_threads)
    return "K=" + std::to_string(k) + " needs more than " + std::to_string(max_threads) + " threads a CTA";
  if (p.smem > 200 * 1024) return "K=" + std::to_string(k) + " needs too much shared memory";
  return "";
}

std::string rotate_quant(const RotateQuantArgs& a) {
  std::string why = rotate_quant_unsupported(a.k, a.block);
  if (!why.empty()) return "rotate_quant: " + why;
  if (a.gemm_order && (a.out_format == kSame || a.k % 128 != 0))
    return "rotate_quant: codes in GEMM order need FP8 or INT codes and K % 128 == 0, got K=" + std::to_string(a.k);
  if (a.out_format == kFP8 && a.qmax != 448.f)
    return "rotate_quant: fp8 codes use qmax 448 (the .satfinite cast clamps there), got " + std::to_string(a.qmax);
  if (a.m == 0) return "";
  if ((reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(a.out)) % 16)
    return "rotate_quant: x and out must be 16-byte aligned";
  if ((reinterpret_cast<uintptr_t>(a.perm16) | reinterpret_cast<uintptr_t>(a.scale_lanes)) % 16)
    return "rotate_quant: perm16 and scale_lanes must be 16-byte aligned";
  if (a.perm16 != nullptr && a.k > 16384)
    return "rotate_quant: an int16 permutation needs K <= 16384, got K=" + std::to_string(a.k);
  if (a.stride_x % 8 || a.stride_x < a.k)
    return "rotate_quant: x's row stride must be a multiple of 8 elements and >= K, got " + std::to_string(a.stride_x);
  const DeviceScope scope(a.device);
  if (!scope.error().empty()) return scope.error();
  const int x_bytes = a.x_dtype == kF32 ? 4 : 2;
  // The transposed path stores the codes 16 bytes at a time.
  const bool transpose = a.out_format != kSame && a.perm16 == nullptr && a.scale_lanes == nullptr &&
                         reinterpret_cast<uintptr_t>(a.out) % 16 == 0 && a.stride_out % 16 == 0;
  const Plan p = plan_for(a.k, a.block, x_bytes, a.perm16 != nullptr, transpose, a.m, sm_count(a.device));
  switch (a.x_dtype) {
    case kBF16: return dispatch_fmt<__nv_bfloat16>(a, p);
    case kF16: return dispatch_fmt<__half>(a, p);
    case kF32: return dispatch_fmt<float>(a, p);
  }
  return "rotate_quant: x_dtype must be 0 (bf16), 1 (fp16) or 2 (fp32), got " + std::to_string(a.x_dtype);
}

}  // namespace lrq
