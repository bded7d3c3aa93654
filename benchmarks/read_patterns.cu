// How fast can a kernel read a packed weight matrix, by access pattern? A standalone probe (no torch) for the
// small-M GEMV's design: it reads N rows of `row_bytes` bytes and does nothing with them but an xor, so the times
// are the load pattern's alone. Each row of output is one kernel over one of several copies of the data that
// together exceed L2 three times (as benchmarks/timing.py's cold_us), launched from a CUDA graph, µs a call.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I csrc benchmarks/read_patterns.cu -o /tmp/rp
//   /tmp/rp
//
// Patterns:
//   gemv   the load pattern of csrc/gemv_a16.cu at M = 1: 16-row tiles, 8 warps a CTA splitting K in chunks of
//          64 bytes a row (lane g, q reads 16 bytes of rows g and g + 8), up to 4 chunks in flight a warp, one CTA
//          barrier a tile, persistent CTAs (3 an SM) with equal numbers of tiles.
//   flat   a grid-stride stream of 16-byte loads, 4 in flight a thread, 8 CTAs of 256 threads an SM: the ceiling
//          for loads into registers.
//   bulk   one CTA an SM streams a contiguous 1/grid of the bytes through a ring of shared-memory stages filled
//          by cp.async.bulk (one producer thread; 8 consumer warps read each stage and release it).
#include "mbarrier.cuh"

#include <algorithm>
#include <cstdio>
#include <vector>

using namespace lrq;

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  std::printf("%s: %s\n", #x, cudaGetErrorString(e_)); std::exit(1); } } while (0)

__device__ __forceinline__ void ld_stream16(const uint8_t* p, uint4& v) {
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
}

__global__ void __launch_bounds__(256) gemv_pattern(const uint8_t* w, int n, int row_bytes, int tiles_per_cta,
                                                    uint32_t* sink) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int chunks = row_bytes / 64, tiles = n / 16;
  uint32_t acc = 0;
  for (int t = blockIdx.x * tiles_per_cta; t < min(tiles, (blockIdx.x + 1) * tiles_per_cta); ++t) {
    for (int c0 = warp; c0 < chunks; c0 += 4 * 8) {
      uint4 v[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int c = c0 + i * 8;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint8_t* row = w + static_cast<int64_t>(t * 16 + h * 8 + g) * row_bytes;
          if (c < chunks) ld_stream16(row + c * 64 + q * 16, v[i][h]);
          else v[i][h] = make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) acc ^= v[i][h].x ^ v[i][h].y ^ v[i][h].z ^ v[i][h].w;
    }
    __syncthreads();
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

__global__ void __launch_bounds__(256) flat_pattern(const uint8_t* w, int64_t bytes, uint32_t* sink) {
  const int64_t vecs = bytes / 16, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < vecs; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (i + j * stride < vecs) ld_stream16(w + (i + j * stride) * 16, v[j]);
      else v[j] = make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

// 8 consumer warps + 1 producer warp; STAGE bytes a stage.
template <int STAGES, int STAGE>
__global__ void __launch_bounds__(288) bulk_pattern(const uint8_t* w, int64_t bytes, uint32_t* sink) {
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ __align__(8) uint64_t full[STAGES], empty[STAGES];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t per_cta = (bytes / gridDim.x + 15) / 16 * 16;
  const int64_t begin = blockIdx.x * per_cta, end = min(bytes, begin + per_cta);
  const int nstages = begin < end ? static_cast<int>((end - begin + STAGE - 1) / STAGE) : 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) { mbar_init(smem_u32(&full[s]), 1); mbar_init(smem_u32(&empty[s]), 8); }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (warp == 8) {
    if (lane == 0)
      for (int i = 0; i < nstages; ++i) {
        const int s = i % STAGES;
        if (i >= STAGES) mbar_wait(smem_u32(&empty[s]), ((i / STAGES) - 1) & 1);
        const int64_t off = begin + static_cast<int64_t>(i) * STAGE;
        const uint32_t len = static_cast<uint32_t>(end - off < STAGE ? end - off : STAGE);
        mbar_expect_tx(smem_u32(&full[s]), len);
        bulk_copy_g2s(smem_u32(ring + s * STAGE), w + off, len, smem_u32(&full[s]));
      }
    return;
  }
  uint32_t acc = 0;
  for (int i = 0; i < nstages; ++i) {
    const int s = i % STAGES;
    mbar_wait(smem_u32(&full[s]), (i / STAGES) & 1);
    const int64_t off = begin + static_cast<int64_t>(i) * STAGE;
    const int len = static_cast<int>(end - off < STAGE ? end - off : STAGE);
    for (int b = threadIdx.x * 16; b < len; b += 256 * 16) {
      const uint4 v = *reinterpret_cast<const uint4*>(ring + s * STAGE + b);
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(smem_u32(&empty[s]));
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

template <typename Launch>
float time_us(Launch launch, int copies) {
  cudaStream_t st;
  CHECK(cudaStreamCreate(&st));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  for (int c = 0; c < copies; ++c) launch(c, st);
  CHECK(cudaStreamEndCapture(st, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < 25; ++r) {
    CHECK(cudaEventRecord(a, st));
    CHECK(cudaGraphLaunch(exec, st));
    CHECK(cudaEventRecord(b, st));
    CHECK(cudaEventSynchronize(b));
    float t;
    CHECK(cudaEventElapsedTime(&t, a, b));
    if (r >= 5) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  CHECK(cudaStreamDestroy(st));
  return ms[ms.size() / 2] * 1e3f / copies;
}

template <int STAGES, int STAGE>
void run_bulk(const uint8_t* buf, int64_t bytes, int copies, int sms, uint32_t* sink, const char* name) {
  auto k = bulk_pattern<STAGES, STAGE>;
  CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, STAGES * STAGE));
  for (int per_sm : {1, 2}) {
    if (per_sm * STAGES * STAGE > 220 * 1024) continue;
    const float us = time_us([&](int c, cudaStream_t st) {
      k<<<sms * per_sm, 288, STAGES * STAGE, st>>>(buf + c * bytes, bytes, sink);
    }, copies);
    std::printf("  bulk %s x%d an SM: %7.2f us  %6.0f GB/s\n", name, per_sm, us, bytes / us / 1e3);
  }
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  int l2 = 0;
  CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, L2 %d MB\n", prop.name, sms, l2 >> 20);
  uint32_t* sink;
  CHECK(cudaMalloc(&sink, 4));
  // (K, N) of the FLUX.1 linear layers at 4 bits: row_bytes = K / 2.
  const int shapes[][2] = {{3072, 3072}, {3072, 12288}, {12288, 3072}, {3072, 21504}, {15360, 3072}};
  for (auto& s : shapes) {
    const int k = s[0], n = s[1], row_bytes = k / 2;
    const int64_t bytes = static_cast<int64_t>(n) * row_bytes;
    const int copies = static_cast<int>(std::min<int64_t>(64, (3LL * l2 + bytes - 1) / bytes));
    uint8_t* buf;
    CHECK(cudaMalloc(&buf, bytes * copies));
    CHECK(cudaMemset(buf, 1, bytes * copies));
    std::printf("K=%d N=%d: %.1f MB a copy, %d copies\n", k, n, bytes / 1e6, copies);
    {
      const int tiles = n / 16, ctas = 3 * sms, per_cta = (tiles + ctas - 1) / ctas;
      const int grid = (tiles + per_cta - 1) / per_cta;
      const float us = time_us([&](int c, cudaStream_t st) {
        gemv_pattern<<<grid, 256, 0, st>>>(buf + c * bytes, n, row_bytes, per_cta, sink);
      }, copies);
      std::printf("  gemv (%d CTAs, %d tiles each): %7.2f us  %6.0f GB/s\n", grid, per_cta, us, bytes / us / 1e3);
    }
    {
      const float us = time_us([&](int c, cudaStream_t st) {
        flat_pattern<<<8 * sms, 256, 0, st>>>(buf + c * bytes, bytes, sink);
      }, copies);
      std::printf("  flat: %7.2f us  %6.0f GB/s\n", us, bytes / us / 1e3);
    }
    run_bulk<4, 16384>(buf, bytes, copies, sms, sink, "4 x 16 KB");
    run_bulk<6, 16384>(buf, bytes, copies, sms, sink, "6 x 16 KB");
    run_bulk<8, 8192>(buf, bytes, copies, sms, sink, "8 x 8 KB");
    run_bulk<12, 8192>(buf, bytes, copies, sms, sink, "12 x 8 KB");
    run_bulk<4, 32768>(buf, bytes, copies, sms, sink, "4 x 32 KB");
    CHECK(cudaFree(buf));
  }
  {  // the empty graph node's cost: a kernel that does nothing
    const float us = time_us([&](int, cudaStream_t st) { flat_pattern<<<sms, 256, 0, st>>>(nullptr, 0, sink); }, 16);
    std::printf("empty kernel: %.2f us a call\n", us);
  }
  return 0;
}
