// W4A8 / W3A8 GEMM for Hopper (sm_90a): FP8 e4m3 activation codes x 4- or 3-bit weight codes decoded to e4m3
// in registers, on wgmma, with the tensor cores' partial sums added to a float32 accumulator every 128, 256 or 512
// of K (the 1e-3 bound needs it: Hopper's FP8 wgmma accumulates with fewer bits than float32; 512 gives 3.0e-4 on
// FLUX fc1; docs/tuning.md: gemm-a8-promote).
//
//   y[t, r] = (sum_k x[t, k] * codebook[code(r, k)]) * w_scales[r] * x_scales[t] + bias[r]
//
// The product is transposed, y^T = W x^T: the decoded weights are wgmma's A operand, built in registers, and the
// activation tile is B, in shared memory. A CTA has three warpgroups: a producer that fills a ring of stages
// (a K step's activation tile and weight codes), and two consumers (64 weight rows each) that decode the weights
// of K step s + 1 while the wgmmas of step s run, then wait and add. Each stage has a "full" mbarrier (its data
// has landed) and an "empty" one (both consumers' wgmmas are done with it), so the consumers drift apart and one's
// float32 adds overlap the other's wgmmas (with a CTA-wide barrier every step instead, the kernel took 665 us on
// FLUX fc1 against 551). The grid is persistent: a CTA an SM walks through tiles, and the
// producer fills the next tile's stages while the consumers store the last one.
//
// K order inside a 128-wide step. Thread (g = lane / 4, q = lane % 4) of a warp holds, for each k32 chunk j, the
// A fragment bytes at wgmma positions 4q..4q+3 and 16+4q..16+4q+3 of rows g and g+8 (CUTLASS's ALayout_64x32).
// The K index those positions stand for is permuted: position 16h + 4q + e of chunk j is K = 32q + 8j + 4h + e. So a
// thread's 32 codes of a row (K = 32q .. 32q+31) are one contiguous 16-byte load at 4 bits, and at 3 bits an 8-byte
// load of the 2-bit plane and a 4-byte load of the 1-bit plane (formats/packing.py); the same permutation on the
// activations leaves the dot product unchanged. Two producers bring the activations in that order:
//   - codes in natural order: the producer warpgroup copies them in 4-byte pieces (cp.async) to their places, in
//     "core matrices" of 8 tokens x 16 bytes (wgmma's K-major layout without swizzle); the 8 of one token group
//     along K are kLBO = 144 bytes apart, not 128, so that the 32 lanes copying one token's 128 bytes write 32
//     different banks;
//   - codes already permuted (x_gemm_order: rotate_quant writes them so, or cuda.gemm_order() permutes them): one
//     thread loads each stage as a TMA box of 128 tokens x 128 bytes in the 128-byte swizzle. docs/tuning.md:
//     gemm-order.
#include "common.cuh"
#include "decode_a8.cuh"
#include "mbarrier.cuh"
#include "lrq.h"
#include <cuda.h>              // CUtensorMap (the driver function itself comes via cudaGetDriverEntryPointByVersion)
#include <cudaTypedefs.h>
#include <cuda_fp8.h>
#include <type_traits>

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LRQ_SM90A 1
#endif

namespace lrq {
namespace {

constexpr int kTileW = 128;                   // weight rows a CTA, 64 a warpgroup (wgmma M)
constexpr int kTileT = 128;                   // tokens a CTA (wgmma N)
constexpr int kStepK = 128;                   // K a pipeline step: 4 wgmmas of k32
constexpr int kLBO = 144;                     // bytes between K-adjacent core matrices
constexpr int kSBO = 8 * kLBO;                // bytes between 8-token groups
constexpr int kStageBytes = (kTileT / 8) * kSBO;

template <typename OutT> __host__ __device__ constexpr int out_pitch() { return kTileW * static_cast<int>(sizeof(OutT)) + 16; }

#ifdef LRQ_SM90A
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Shared-memory matrix descriptor: start address, LBO, SBO (all >> 4), no swizzle (layout type 0).
__device__ __forceinline__ uint64_t desc_b(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(kLBO >> 4) << 16) |
         (static_cast<uint64_t>(kSBO >> 4) << 32);
}

// The same for a K-major tile of 128-byte rows in the 128-byte swizzle (what TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B): 8-row atoms 1024 bytes apart (SBO), no LBO, layout type 1. The tile must start on
// a 1024-byte boundary; a k32 slice starts 32 bytes further along the row.
__device__ __forceinline__ uint64_t desc_b_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

// d (+)= A (64 x 32, e4m3 in registers) x B (32 x 128 tokens, e4m3 in shared memory); ACC = 0 overwrites d
template <int ACC>
__device__ __forceinline__ void wgmma_k32(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "n"(ACC));
}

#endif  // LRQ_SM90A

constexpr int kWsThreads = 384;               // producer warpgroup + two consumer warpgroups
[[maybe_unused]] constexpr int kWsConsumers = 256;

// A stage holds one K step's activation tile, then its weight codes. Activations copied (kTma false): the 4-byte
// pieces of the K order above, core matrices kLBO apart. By TMA (kTma true): the codes arrive already in that K
// order (rotate_quant writes them so, or gemm_order() permutes them), as one 2-D box of 128 tokens x 128 bytes in
// the 128-byte swizzle. (A 3-D box of 16-byte rows into the unswizzled layout measured 656 us on FLUX fc1 against
// 544 for the copies: TMA moves 16-byte rows slowly.)
// The weight codes come by TMA in both forms, one box of 128 rows a plane: at 4 bits 64 bytes a row; at 3 bits
// 32 bytes of the 2-bit plane, then 16 of the 1-bit plane. Loaded from global memory into registers two
// steps ahead instead, the ncu profile (FLUX fc1) put a quarter of the warps' stall samples on
// the decode waiting for those loads (long scoreboard); staged with the activations, they are as far ahead as
// the ring is deep.
template <bool kTma, int kBits> struct Stage {
  static constexpr int kXBytes = kTma ? kStepK * kTileT : kStageBytes;
  static constexpr int kWLoRow = kStepK * (kBits == 4 ? 4 : 2) / 8;  // a row's bytes: codes, or the 2-bit plane
  static constexpr int kWHiRow = kBits == 4 ? 0 : kStepK / 8;          // and the 1-bit plane (3-bit)
  static constexpr int kWLoBytes = kTileW * kWLoRow, kWHiBytes = kTileW * kWHiRow;
  static constexpr int kBytes = kXBytes + kWLoBytes + kWHiBytes;                 // a multiple of 1024
  static_assert(kBytes % 1024 == 0, "stages stay 1024-byte aligned for the swizzled TMA box");
};

// Shared memory: the ring of stages (1024-byte aligned for the swizzle: 1 KB of slack), then half an output tile
// (64 tokens; the epilogue stores a tile in two halves), then a "full" and an "empty" mbarrier a stage and the
// codebook's e4m3 bytes. The ring and the output have their own space, so that the producer fills the next
// tile's stages during the epilogue. As many stages as fit in the 227 KB a CTA may have, at most 8: 8 with
// TMA-loaded activations, 7 with the copied (padded) layout and float32 output.
template <bool kTma, int kBits, typename OutT> struct Smem {
  static constexpr int kOutBytes = (kTileT / 2) * out_pitch<OutT>();
  static constexpr int kMaxBytes = 227 * 1024;
  static constexpr int kFit = (kMaxBytes - 1024 - kOutBytes - 2 * 8 * 8 - 128) / Stage<kTma, kBits>::kBytes;
  static constexpr int kStages = kFit < 8 ? kFit : 8;
  static constexpr int kRingBytes = kStages * Stage<kTma, kBits>::kBytes;
  static constexpr int kBytes = 1024 + kRingBytes + kOutBytes + 2 * kStages * 8 + 128;   // + the codebook
  static_assert(kStages >= 4 && kBytes <= kMaxBytes, "the ring needs 4 stages or more");
};

// A position in the ring: the stage and the parity of its use (flips each time the ring wraps).
template <int kStages> struct RingPos {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) { stage = 0; phase ^= 1u; }
  }
};

// Tile i of the persistent loop -> its first token and weight row, in grouped order: 8 token tiles take each
// weight tile in turn, so that a wave of CTAs shares few weight tiles and token tiles in L2.
__device__ __forceinline__ void tile_origin(int tile, int m, int n, int& t0, int& w0) {
  constexpr int kGroupT = 8;
  const int tiles_t = (m + kTileT - 1) / kTileT, tiles_w = (n + kTileW - 1) / kTileW;
  const int per_group = kGroupT * tiles_w, first_t = (tile / per_group) * kGroupT;
  const int size = min(tiles_t - first_t, kGroupT);
  t0 = (first_t + (tile % per_group) % size) * kTileT;
  w0 = ((tile % per_group) / size) * kTileW;
}

#ifdef LRQ_SM90A
// the arrival happens when all of this thread's earlier cp.async have landed (.noinc: counted in the init count)
__device__ __forceinline__ void cp_async_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar) : "memory");
}
__device__ __forceinline__ void consumer_barrier() {   // the two consumer warpgroups only (named barrier 1)
  asm volatile("bar.sync 1, %0;\n" ::"n"(kWsConsumers) : "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {   // at most N committed groups still in flight
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// One stage's weight boxes (rows past N arrive as zeros), issued by one thread; its mbarrier counts their bytes.
template <bool kTma, int kBits>
__device__ __forceinline__ void load_weights(uint32_t dst, const CUtensorMap* w_map, const CUtensorMap* w_map_hi,
                                             int step, int w0, int k, uint32_t bar) {
  using S = Stage<kTma, kBits>;
  tma_load_2d(dst + S::kXBytes, w_map, step * S::kWLoRow, w0, bar);
  if constexpr (kBits == 3)      // the 1-bit plane starts K / 4 bytes into the row
    tma_load_2d(dst + S::kXBytes + S::kWLoBytes, w_map_hi, k / 4 + step * S::kWHiRow, w0, bar);
}
#endif

// kPromote: K steps whose wgmmas chain in the tensor cores before the float32 add: 4 (every 512 of K) where the
// step count allows it, else 2, else 1 (the launcher picks: promote_steps; docs/tuning.md: gemm-a8-promote).
// Persistent: a CTA a multiprocessor, each taking tiles blockIdx.x, + gridDim.x, ...; the producer runs on into
// the next tile while the consumers store the last one.
template <int kBits, int kPromote, bool kTma, typename OutT>
__global__ void __launch_bounds__(kWsThreads, 1)
    gemm_wa8_sm90_kernel(const uint8_t* __restrict__ x, int64_t stride_x, const __grid_constant__ CUtensorMap x_map,
                         const __grid_constant__ CUtensorMap w_map, const __grid_constant__ CUtensorMap w_map_hi,
                         const float* __restrict__ x_scales, const float* __restrict__ w_scales,
                         const float* __restrict__ codebook, const float* __restrict__ bias,
                         OutT* __restrict__ y, int m, int n, int k) {
#ifdef LRQ_SM90A
  using S = Stage<kTma, kBits>;
  using M = Smem<kTma, kBits, OutT>;
  constexpr int kStages = M::kStages;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t smem_base = smem_u32(smem), smem0 = (smem_base + 1023) & ~1023u;
  uint8_t* const smem_ring = smem + (smem0 - smem_base);
  uint8_t* const smem_out = smem_ring + M::kRingBytes;
  const uint32_t full0 = smem0 + M::kRingBytes + M::kOutBytes;
  const uint32_t empty0 = full0 + kStages * 8;
  const int tiles = ((m + kTileT - 1) / kTileT) * ((n + kTileW - 1) / kTileW);
  const int nk = k / kStepK;

  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      // TMA: the issuer's one arrival; copies: one cp.async arrival a copying thread, plus the weights' issuer
      mbar_init(full0 + 8 * st, kTma ? 1 : 129);
      mbar_init(empty0 + 8 * st, kWsConsumers);       // every consumer thread, once that step's wgmmas are done
    }
  }
  __syncthreads();

  if (warp < 4) {
    // producer. TMA: one thread issues a stage's boxes, its mbarrier counting the bytes (rows past M or N arrive
    // as zeros). Copies: warp w copies tokens w, w + 4, ...; lane l the 4 bytes at K = 4l of the step, to their
    // permuted place (see the K order at the top of the file); rows past M copy nothing (zero-filled); thread 0
    // issues the weight boxes.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n");
    if (kTma && tid != 0) return;
    RingPos<kStages> pos;
    int uses = 0;                                     // stages filled so far (the first kStages need no wait)
    // copies: token warp + 4i sits in row (warp + 4 (i & 1)) of core-matrix group i / 2
    const uint32_t dst0 = (lane & 7) * kLBO + (lane >> 3) * 4 + warp * 16;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      int t0, w0;
      tile_origin(tile, m, n, t0, w0);
      const uint8_t* src0 = x + static_cast<int64_t>(t0 + warp) * stride_x + 4 * lane;
      const int rows = m - t0 - warp;                 // token warp + 4i exists when 4i < rows
      for (int s = 0; s < nk; ++s, ++uses, pos.advance()) {
        const uint32_t stage = smem0 + pos.stage * S::kBytes, full = full0 + 8 * pos.stage;
        if (uses >= kStages) mbar_wait(empty0 + 8 * pos.stage, pos.phase ^ 1u);
        if constexpr (kTma) {
          mbar_expect_tx(full, S::kBytes);
          tma_load_2d(stage, &x_map, s * kStepK, t0, full);
        } else {
          const uint8_t* src = src0 + s * kStepK;
#pragma unroll 8
          for (int i = 0; i < kTileT / 4; ++i, src += 4 * stride_x)
            cp_async4(stage + dst0 + (i & 1) * 64 + (i >> 1) * kSBO, src, 4 * i < rows);
          cp_async_arrive(full);
          if (tid == 0) mbar_expect_tx(full, S::kWLoBytes + S::kWHiBytes);
        }
        if (tid == 0) load_weights<kTma, kBits>(stage, &w_map, &w_map_hi, s, w0, k, full);
      }
    }
    if constexpr (!kTma) asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n");
  const int cw = warp - 4, ctid = tid - 128;          // consumer warp 0..7, thread 0..255
  const int g = lane >> 2, q = lane & 3;
  // The 16 codebook entries as e4m3 bytes, 4 a word, in 8 copies that lanes read by lane % 8. (Computed in every
  // lane, or read from one address, the words are provably the same in a warp, and ptxas kept them in uniform
  // registers and copied one into a vector register for every byte permute: 32 IMAD a step.)
  uint32_t* const table_smem = reinterpret_cast<uint32_t*>(smem_out + M::kOutBytes + 2 * kStages * 8);
  if (ctid < 32) table_smem[ctid] = codebook_e4m3_word<kBits>(codebook, ctid & 3);
  consumer_barrier();
  uint32_t table[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) table[i] = table_smem[4 * (lane & 7) + i];
  const int row_local = (cw >> 2) * 64 + (cw & 3) * 16 + g;

  // this thread's codes of the step in stage st for rows g and g + 8: 16 bytes a row (4-bit), or 8 bytes of the
  // 2-bit plane and 4 of the 1-bit plane (3-bit); a warp's loads cover 8 consecutive rows, free of bank conflicts
  auto load_codes = [&](int st, uint4 (&r)[2]) {
    const uint8_t* w = smem_ring + st * S::kBytes + S::kXBytes;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row_local + 8 * h;
      if constexpr (kBits == 4) {
        r[h] = *reinterpret_cast<const uint4*>(w + row * 64 + 16 * q);
      } else {
        const uint2 lo = *reinterpret_cast<const uint2*>(w + row * 32 + 8 * q);
        r[h] = make_uint4(lo.x, lo.y, *reinterpret_cast<const uint32_t*>(w + S::kWLoBytes + row * 16 + 4 * q), 0u);
      }
    }
  };
  auto decode = [&](const uint4 (&r)[2], uint32_t (&frag)[16]) {
    if constexpr (kBits == 4) decode_step(r[0], r[1], table, frag);
    else decode_step3(r[0], r[1], table, frag);
  };
  // wgmma descriptor of k32 slice j of stage st: an offset to the start-address field (bits 0-13, in 16-byte
  // units, which shared memory never overflows) of stage 0's
  const uint64_t desc0 = kTma ? desc_b_sw128(smem0) : desc_b(smem0);
  const uint32_t desc_lo = static_cast<uint32_t>(desc0), desc_hi = static_cast<uint32_t>(desc0 >> 32);
  auto desc = [&](int st, int j) {
    uint64_t d;
    asm("mov.b64 %0, {%1, %2};" : "=l"(d)
        : "r"(desc_lo + ((st * S::kBytes + (kTma ? 32 * j : 2 * j * kLBO)) >> 4)), "r"(desc_hi));
    return d;
  };

  // A fragments: two buffers. Step t's wgmmas read a[t % 2]; step t + 1 is decoded into the other once step
  // t - 1's wgmmas, which read it, are done (wgmma_wait<1>, just after step t's are issued). That wait also
  // frees step t - 1's stage for the producer.
  constexpr int kUnroll = kPromote > 2 ? kPromote : 2;   // a buffer index and place in a promotion group each
  float acc[64], part[64];
  uint32_t a[2][16];
  uint4 codes[2];
  RingPos<kStages> pos;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int t0, w0;
    tile_origin(tile, m, n, t0, w0);
    const int r0 = w0 + row_local, r1 = r0 + 8;
    const float sw0 = r0 < n ? w_scales[r0] : 0.f, sw1 = r1 < n ? w_scales[r1] : 0.f;
    const float b0 = (bias != nullptr && r0 < n) ? bias[r0] : 0.f, b1 = (bias != nullptr && r1 < n) ? bias[r1] : 0.f;
#pragma unroll
    for (int i = 0; i < 64; ++i) { acc[i] = 0.f; part[i] = 0.f; }
    mbar_wait(full0 + 8 * pos.stage, pos.phase);
    load_codes(pos.stage, codes);
    decode(codes, a[0]);
    int last = 0;                                     // the stage of the step before
    for (int s0 = 0; s0 < nk; s0 += kUnroll) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = s0 + u;
        if (t >= nk) break;
        const int v = u % kPromote;                   // place in its promotion group
        const int cur = pos.stage;
        uint32_t (&ac)[16] = a[u % 2];
        wgmma_fence();
        if (v == 0) wgmma_k32<0>(part, ac[0], ac[1], ac[2], ac[3], desc(cur, 0));
        else wgmma_k32<1>(part, ac[0], ac[1], ac[2], ac[3], desc(cur, 0));
        wgmma_k32<1>(part, ac[4], ac[5], ac[6], ac[7], desc(cur, 1));
        wgmma_k32<1>(part, ac[8], ac[9], ac[10], ac[11], desc(cur, 2));
        wgmma_k32<1>(part, ac[12], ac[13], ac[14], ac[15], desc(cur, 3));
        wgmma_commit();
        pos.advance();
        const bool more = t + 1 < nk;
        if (more) {                                   // the next step's codes load while step t - 1 finishes
          mbar_wait(full0 + 8 * pos.stage, pos.phase);
          load_codes(pos.stage, codes);
        }
        wgmma_wait<1>();
        if (t > 0) mbar_arrive(empty0 + 8 * last);
        last = cur;
        if (more) decode(codes, a[(u + 1) % 2]);
        if (v == kPromote - 1) {
          wgmma_wait<0>();
#pragma unroll
          for (int i = 0; i < 64; ++i) acc[i] += part[i];
        }
      }
    }
    wgmma_wait<0>();   // nothing is in flight here; said so, ptxas injects no wait of its own on the loop's exit
    mbar_arrive(empty0 + 8 * last);                   // the tile's last stage (its wgmmas are done)

    // epilogue, in two halves of 64 tokens through shared memory, for 16-byte stores
    constexpr int kPitch = out_pitch<OutT>();
    constexpr int kChunk = 16 / static_cast<int>(sizeof(OutT));
    constexpr int kChunksPerRow = kTileW / kChunk;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      consumer_barrier();                             // the staging area's last contents are stored
#pragma unroll
      for (int i = 8 * h; i < 8 * h + 8; ++i) {
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const int tl = 8 * i + 2 * q + v;
          const float sa = t0 + tl < m ? x_scales[t0 + tl] : 0.f;
          OutT* row = reinterpret_cast<OutT*>(smem_out + (tl - 64 * h) * kPitch);
          row[row_local] = from_float<OutT>(acc[4 * i + v] * sw0 * sa + b0);
          row[row_local + 8] = from_float<OutT>(acc[4 * i + 2 + v] * sw1 * sa + b1);
        }
      }
      consumer_barrier();
#pragma unroll
      for (int c = ctid; c < (kTileT / 2) * kChunksPerRow; c += kWsConsumers) {
        const int tl = c / kChunksPerRow, col = (c % kChunksPerRow) * kChunk;
        if (t0 + 64 * h + tl < m && w0 + col < n)
          *reinterpret_cast<uint4*>(y + static_cast<int64_t>(t0 + 64 * h + tl) * n + w0 + col) =
              *reinterpret_cast<const uint4*>(smem_out + tl * kPitch + col * sizeof(OutT));
      }
    }
  }
#endif  // LRQ_SM90A
}

// A 2-D TMA descriptor of a byte matrix [rows, inner] with a row stride (bytes) and a box of box_inner x box_rows.
// cuTensorMapEncodeTiled is a driver function: fetched once through the runtime, so that the module links no
// libcuda and imports on a machine without a driver.
std::string encode_u8_2d(CUtensorMap* map, const void* base, uint64_t inner, uint64_t rows, uint64_t stride,
                         uint32_t box_inner, uint32_t box_rows, CUtensorMapSwizzle swizzle) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  if (encode == nullptr) {
    cudaDriverEntryPointQueryResult found;
    void* fn = nullptr;
    cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || fn == nullptr)
      return "gemm_a8: cuTensorMapEncodeTiled not found in the CUDA driver";
    encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }
  const cuuint64_t dims[2] = {inner, rows};
  const cuuint64_t strides[1] = {stride};
  const cuuint32_t box[2] = {box_inner, box_rows};
  const cuuint32_t unit[2] = {1, 1};
  CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base), dims, strides, box, unit,
                      CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? std::string() : "gemm_a8: cuTensorMapEncodeTiled failed, error " + std::to_string(r);
}

// The longest float32-add interval (1, 2 or 4 steps of 128) that divides the step count.
int promote_steps(int nk) { return nk % 4 == 0 ? 4 : nk % 2 == 0 ? 2 : 1; }

template <int kBits, typename OutT>
std::string launch(const GemmA8Args& a) {
  const int64_t tiles = static_cast<int64_t>((a.m + kTileT - 1) / kTileT) * ((a.n + kTileW - 1) / kTileW);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.stream);
  const uint8_t* x = static_cast<const uint8_t*>(a.x);
  OutT* y = static_cast<OutT*>(a.y);
  const int promote = promote_steps(a.k / kStepK);
  // x in GEMM order: one box of 128 bytes x 128 tokens a stage, in the 128-byte swizzle. Weights: one box of
  // 128 rows a plane, 64 bytes (4-bit) or 32 + 16 bytes (3-bit) a row, unswizzled.
  CUtensorMap x_map{}, w_map{}, w_map_hi{};
  std::string why;
  if (a.x_gemm_order)
    why = encode_u8_2d(&x_map, a.x, a.k, a.m, a.stride_x, kStepK, kTileT, CU_TENSOR_MAP_SWIZZLE_128B);
  using W = Stage<false, kBits>;                      // the weight boxes are the same in both forms
  const uint64_t plane_lo = kBits == 4 ? a.k / 2 : a.k / 4;
  if (why.empty())
    why = encode_u8_2d(&w_map, a.packed, plane_lo, a.n, a.row_bytes, W::kWLoRow, kTileW, CU_TENSOR_MAP_SWIZZLE_NONE);
  if (why.empty() && kBits == 3)
    why = encode_u8_2d(&w_map_hi, a.packed, a.k / 4 + a.k / 8, a.n, a.row_bytes, W::kWHiRow, kTileW,
                       CU_TENSOR_MAP_SWIZZLE_NONE);
  if (!why.empty()) return why;
  auto pick = [&](auto tma_c) {
    constexpr bool kTma = decltype(tma_c)::value;
    return promote == 4 ? gemm_wa8_sm90_kernel<kBits, 4, kTma, OutT>
         : promote == 2 ? gemm_wa8_sm90_kernel<kBits, 2, kTma, OutT>
                        : gemm_wa8_sm90_kernel<kBits, 1, kTma, OutT>;
  };
  auto kernel = a.x_gemm_order ? pick(std::true_type{}) : pick(std::false_type{});
  const int smem = a.x_gemm_order ? Smem<true, kBits, OutT>::kBytes : Smem<false, kBits, OutT>::kBytes;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(gemm_wa8_sm90)", e);
  const int64_t grid = tiles < sm_count(a.device) ? tiles : sm_count(a.device);   // persistent: a CTA an SM
  kernel<<<static_cast<unsigned>(grid), kWsThreads, smem, stream>>>(
      x, a.stride_x, x_map, w_map, w_map_hi, a.x_scales, a.w_scales, a.codebook, a.bias, y, a.m, a.n, a.k);
  return last_launch_error("gemm_wa8_sm90_kernel");
}

template <typename OutT>
std::string launch_bits(const GemmA8Args& a) {
  return a.bits == 3 ? launch<3, OutT>(a) : launch<4, OutT>(a);
}

}  // namespace

std::string gemm_a8_unsupported(int m, int k, int n, int bits, int group_size) {
  if (bits != 3 && bits != 4) return "the CUDA W·A8 GEMM takes 3- or 4-bit codes, got bits=" + std::to_string(bits);
  if (group_size != 0) return "the CUDA W·A8 GEMM takes per-channel scales, got group_size=" + std::to_string(group_size);
  if (k <= 0 || k % kStepK != 0) return "the CUDA W·A8 GEMM needs K % 128 == 0, got K=" + std::to_string(k);
  if (n <= 0 || n % 8 != 0) return "the CUDA W·A8 GEMM needs N % 8 == 0, got N=" + std::to_string(n);
  if (m <= 0) return "the CUDA W·A8 GEMM needs M > 0, got M=" + std::to_string(m);
  return "";
}

std::string gemm_a8(const GemmA8Args& a) {
  std::string why = gemm_a8_unsupported(a.m, a.k, a.n, a.bits, a.group_size);
  if (!why.empty()) return why;
  if (a.stride_x % 16 != 0 || a.row_bytes % 16 != 0)
    return "gemm_a8: x's row stride and the packed row must be multiples of 16 bytes";
  const DeviceScope scope(a.device);
  if (!scope.error().empty()) return scope.error();
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, a.device);
  if (major != 9 || minor != 0)
    return "the CUDA W·A8 GEMM runs on sm_90 (Hopper) only, got sm_" + std::to_string(major) + std::to_string(minor);
  switch (a.out_dtype) {
    case kBF16: return launch_bits<__nv_bfloat16>(a);
    case kF16: return launch_bits<__half>(a);
    case kF32: return launch_bits<float>(a);
  }
  return "gemm_a8: unknown out_dtype " + std::to_string(a.out_dtype);
}

}  // namespace lrq
