// Small-M weight-only GEMM: y [M, N] = x [M, K] @ W_deq^T + bias, M <= 16, x bf16/fp16, W as packed 4- or 3-bit
// codes (formats/packing.py) into a per-layer codebook, times per-channel or per-group float32 scales.
//
// It streams the packed weights once, at the memory's speed, and does the arithmetic on tensor cores
// (mma.sync m16n8k16, fp32 accumulation): x's M <= 16 rows are the A operand (rows past M are zero), 8 weight
// rows the B operand. The order of the reduction inside one mma does not matter, so each lane takes a run of
// consecutive codes: lane q (of the 4 that share a weight row in the B fragment) reads CPT = 32 codes with one
// 16-byte load (4-bit), and mma tile t of a chunk uses its codes 4t..4t+3 as the logical k = 2q, 2q+1, 2q+8,
// 2q+9. The A fragment takes x at the same physical k, so x is read as 16-byte runs too.
//
// Decoding: one shared-memory lookup gives two decoded weights as the bf16x2 (or half2) register the B fragment
// wants: a table of all 256 byte values (4-bit: two codes a byte) or 64 pairs of 3-bit codes, replicated for
// each of the 32 lanes (entry e of lane l at word e * 32 + l: lane l only reads bank l, so no lookup conflicts).
// The table is built once a CTA, while the CTA's first weight loads are in flight.
//
// Work split: a CTA of 8 warps owns 8 * NG weight rows and splits K between its warps (chunks of CH codes,
// interleaved), then adds the 8 partial sums in shared memory. CTAs are persistent (one table build each), and
// a warp requests the weights of several chunks before it decodes them.
// Group scales: a chunk is exactly one group (CH = group size), so a group's partial product is scaled once.
#include "common.cuh"
#include "lrq.h"

namespace lrq {
namespace {

constexpr int kWarps = 8;

template <typename T> struct Pair;
template <> struct Pair<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
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
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Streaming loads of the weights: read once, so keep them out of L1.
template <int BYTES>
__device__ __forceinline__ void load_stream(const uint8_t* p, uint32_t* w) {
  if constexpr (BYTES == 16) {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
  } else if constexpr (BYTES == 8) {
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
  } else if constexpr (BYTES == 4) {
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(w[0]) : "l"(p));
  } else {
    static_assert(BYTES == 2, "2, 4, 8 or 16 bytes");
    unsigned short s;
    asm volatile("ld.global.nc.L1::no_allocate.u16 %0, [%1];\n" : "=h"(s) : "l"(p));
    w[0] = s;
  }
}

template <int BITS, int CPT>
struct Codes {
  static constexpr int kLoBytes = BITS == 4 ? CPT / 2 : CPT / 4;   // 4-bit: the codes; 3-bit: the 2-bit plane
  static constexpr int kHiBytes = BITS == 4 ? 0 : CPT / 8;         // 3-bit: the 1-bit plane
  uint32_t lo[(kLoBytes + 3) / 4];
  uint32_t hi[kHiBytes ? (kHiBytes + 3) / 4 : 1];

  // chunk: index of the CH = 4 * CPT codes; q: this lane's run inside it
  __device__ __forceinline__ void load(const uint8_t* row, int k, int chunk, int q) {
    load_stream<kLoBytes>(row + (chunk * 4 + q) * kLoBytes, lo);
    if constexpr (BITS == 3) load_stream<kHiBytes>(row + k / 4 + (chunk * 4 + q) * kHiBytes, hi);
  }
  __device__ __forceinline__ void zero() {
    for (auto& w : lo) w = 0;
    for (auto& w : hi) w = 0;
  }
  // Table indices of codes (4t, 4t+1) and (4t+2, 4t+3) of this run.
  __device__ __forceinline__ void pair_index(int t, uint32_t& i0, uint32_t& i1) const {
    if constexpr (BITS == 4) {
      const uint32_t w = lo[t >> 1] >> ((t & 1) * 16);
      i0 = w & 0xFF;
      i1 = (w >> 8) & 0xFF;
    } else {
      // 3-bit table index: low bits of both codes, then their high bits (the table is built in this order)
      const uint32_t l = (lo[t >> 2] >> ((t & 3) * 8)) & 0xFF;       // low 2 bits of codes 4t..4t+3
      const uint32_t h = (hi[t >> 3] >> ((t & 7) * 4)) & 0xF;        // bit 2 of codes 4t..4t+3
      i0 = (l & 0xF) | ((h & 3) << 4);
      i1 = (l >> 4) | ((h >> 2) << 4);
    }
  }
};

template <typename T, int BITS, int NG, int GROUP>
__global__ void __launch_bounds__(kWarps * 32, 2) gemv_a16_kernel(
    const T* __restrict__ x, int m, int k, int n, const uint8_t* __restrict__ packed, int row_bytes,
    const float* __restrict__ w_scales, const float* __restrict__ codebook, const float* __restrict__ bias,
    T* __restrict__ y) {
  constexpr int CH = GROUP == 64 ? 64 : 128;   // codes a chunk (4 lanes x CPT)
  constexpr int CPT = CH / 4;                  // codes a lane a chunk
  constexpr int TILES = CPT / 4;               // mma k-tiles a chunk
  constexpr int ENTRIES = BITS == 4 ? 256 : 64;
  constexpr int ROWS = 8 * NG;
  extern __shared__ uint32_t smem[];
  uint32_t* lut = smem;                                               // [ENTRIES][32]
  float* partial = reinterpret_cast<float*>(smem + ENTRIES * 32);     // [kWarps][NG * 4][32]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int chunks = k / CH;
  const int groups = GROUP ? k / GROUP : 1;
  const int tiles = (n + ROWS - 1) / ROWS;
  const bool row_g = g < m, row_g8 = g + 8 < m;

  // A warp's chunks of a tile are warp, warp + kWarps, ...; it requests the weights of up to MAXC of them at once
  // and then decodes them (all of a tile's chunks in one round for K = 3072), so that each warp has several loads
  // in flight: with one chunk ahead only, a 4.7 MB weight took 8.9 µs (bench_cuda.md, second run).
  constexpr int MAXC = NG == 4 ? 2 : 4;
  auto load_round = [&](Codes<BITS, CPT> (*dst)[NG], int tile, int c0) {
#pragma unroll
    for (int i = 0; i < MAXC; ++i) {
      const int c = c0 + i * kWarps;
#pragma unroll
      for (int j = 0; j < NG; ++j) {
        const int row = tile * ROWS + j * 8 + g;
        if (c < chunks && row < n) dst[i][j].load(packed + static_cast<int64_t>(row) * row_bytes, k, c, q);
        else dst[i][j].zero();
      }
    }
  };
  Codes<BITS, CPT> w[MAXC][NG];
  int tile = blockIdx.x;
  bool loaded = false;
  if (tile < tiles) { load_round(w, tile, warp); loaded = true; }

  // The decode table, built while the first loads are in flight: thread t computes entry t once and writes its
  // 32 lane copies with 16-byte stores.
  for (int e = threadIdx.x; e < ENTRIES; e += blockDim.x) {
    const int lo = BITS == 4 ? (e & 15) : ((e & 3) | (((e >> 4) & 1) << 2));
    const int hi = BITS == 4 ? (e >> 4) : (((e >> 2) & 3) | (((e >> 5) & 1) << 2));
    const uint32_t val = Pair<T>::pack(__ldg(codebook + lo), __ldg(codebook + hi));
    uint4* dst = reinterpret_cast<uint4*>(lut + e * 32);
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = make_uint4(val, val, val, val);
  }
  __syncthreads();

  for (; tile < tiles; tile += gridDim.x) {
    const int n0 = tile * ROWS;
    float acc[NG][4] = {};
    for (int c0 = warp; c0 < chunks; c0 += MAXC * kWarps) {
      if (!loaded) load_round(w, tile, c0);
      loaded = false;
#pragma unroll
      for (int i = 0; i < MAXC; ++i) {
        const int c = c0 + i * kWarps;
        if (c >= chunks) break;
        uint32_t xa[CPT / 2], xb[CPT / 2];                             // x rows g and g + 8, bf16x2 words
        const int kx = c * CH + q * CPT;
#pragma unroll
        for (int u = 0; u < CPT / 8; ++u) {
          const uint4 za = row_g ? __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(g) * k + kx) + u)
                                 : make_uint4(0, 0, 0, 0);
          const uint4 zb = row_g8 ? __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(g + 8) * k + kx) + u)
                                  : make_uint4(0, 0, 0, 0);
          xa[4 * u] = za.x; xa[4 * u + 1] = za.y; xa[4 * u + 2] = za.z; xa[4 * u + 3] = za.w;
          xb[4 * u] = zb.x; xb[4 * u + 1] = zb.y; xb[4 * u + 2] = zb.z; xb[4 * u + 3] = zb.w;
        }
        float part[NG][4] = {};
#pragma unroll
        for (int t = 0; t < TILES; ++t) {
          const uint32_t a[4] = {xa[2 * t], xb[2 * t], xa[2 * t + 1], xb[2 * t + 1]};
#pragma unroll
          for (int j = 0; j < NG; ++j) {
            uint32_t i0, i1;
            w[i][j].pair_index(t, i0, i1);
            Pair<T>::mma(GROUP ? part[j] : acc[j], a, lut[i0 * 32 + lane], lut[i1 * 32 + lane]);
          }
        }
        if constexpr (GROUP != 0) {                                    // chunk c is group c
#pragma unroll
          for (int j = 0; j < NG; ++j) {
            const int col = n0 + j * 8 + 2 * q;                        // accumulator columns 2q, 2q + 1
            const float s0 = col < n ? __ldg(w_scales + static_cast<int64_t>(col) * groups + c) : 0.f;
            const float s1 = col + 1 < n ? __ldg(w_scales + static_cast<int64_t>(col + 1) * groups + c) : 0.f;
            acc[j][0] += part[j][0] * s0; acc[j][1] += part[j][1] * s1;
            acc[j][2] += part[j][2] * s0; acc[j][3] += part[j][3] * s1;
          }
        }
      }
    }
    loaded = false;
#pragma unroll
    for (int j = 0; j < NG; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) partial[(warp * NG * 4 + j * 4 + r) * 32 + lane] = acc[j][r];
    __syncthreads();
    // Warp w finishes accumulator entries j * 4 + r with (j * 4 + r) % kWarps == w.
    for (int idx = warp; idx < NG * 4; idx += kWarps) {
      float s = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kWarps; ++w2) s += partial[(w2 * NG * 4 + idx) * 32 + lane];
      const int j = idx >> 2, r = idx & 3;
      const int row = g + (r >= 2 ? 8 : 0);                            // c0, c1: row g; c2, c3: row g + 8
      const int col = n0 + j * 8 + 2 * q + (r & 1);
      if (row < m && col < n) {
        if constexpr (GROUP == 0) s *= __ldg(w_scales + col);
        if (bias != nullptr) s += __ldg(bias + col);
        y[static_cast<int64_t>(row) * n + col] = from_float<T>(s);
      }
    }
    __syncthreads();
  }
}

size_t smem_bytes(int bits, int ng) {
  return sizeof(uint32_t) * ((bits == 4 ? 256 : 64) * 32 + kWarps * ng * 4 * 32);
}

template <typename T, int BITS, int NG, int GROUP>
std::string launch(const GemvA16Args& a) {
  auto kernel = gemv_a16_kernel<T, BITS, NG, GROUP>;
  const size_t smem = smem_bytes(BITS, NG);
  int per_sm = 0;
  cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem);
  if (e != cudaSuccess) return cuda_error("cudaOccupancyMaxActiveBlocksPerMultiprocessor(gemv_a16)", e);
  const int tiles = (a.n + 8 * NG - 1) / (8 * NG);
  const int grid = std::max(1, std::min(tiles, std::max(1, per_sm) * sm_count(a.device)));
  const int row_bytes = BITS == 4 ? (a.k + 1) / 2 : 3 * ((a.k + 7) / 8);
  kernel<<<grid, kWarps * 32, smem, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const T*>(a.x), a.m, a.k, a.n, a.packed, row_bytes, a.w_scales, a.codebook, a.bias,
      static_cast<T*>(a.y));
  return last_launch_error("gemv_a16_kernel");
}

// NG (weight rows a warp, in groups of 8). Every CTA reads all of x once a tile, so x's traffic grows with M
// over the rows a tile: at M = 16 on FLUX fc2 (N = 3072, K = 12288), 16-row tiles read 4x more x than weight
// bytes from L2 (bench_cuda.md, first run); 32-row tiles halve that. Small M: the most CTAs that fill the GPU.
template <typename T, int BITS, int GROUP>
std::string dispatch_ng(const GemvA16Args& a) {
  if (a.m > 4) return launch<T, BITS, 4, GROUP>(a);
  if (a.n >= 8192) return launch<T, BITS, 2, GROUP>(a);
  return launch<T, BITS, 1, GROUP>(a);
}

template <typename T, int BITS>
std::string dispatch_group(const GemvA16Args& a) {
  switch (a.group_size) {
    case 0: return dispatch_ng<T, BITS, 0>(a);
    case 64: return dispatch_ng<T, BITS, 64>(a);
    case 128: return dispatch_ng<T, BITS, 128>(a);
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
