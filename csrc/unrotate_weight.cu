// The weight in the layer's input space, from its packed codes: W[n, perm[i]] = cs[i] * (W_deq[n, :] H_B / sqrt(B))[i]
// with W_deq[n, k] = codebook[code(n, k)] * scale(n, k) (formats/weight.py). This is lrq_kernels/reference/gemm.py's
// unrotate_weight_ref (Rotation.unfold_weight of the dequantized weight), bit for bit before the final rounding:
// one float32 multiply for the dequantization, the butterflies of hadamard.cuh, one multiply by cs.
//
// Why: the weight-only forward at large M. There y = rotate(x) W_deq^T costs the rotation of every token (2 x 2MK
// bytes) plus a GEMM that decodes codes between its MMAs (docs/tuning.md: a16_dequant_min_m). W = W_deq R^T is one
// pass over N x K instead (0.5 byte read and 2 written a
// weight), after which cuBLAS's bf16 GEMM computes x W^T = rotate(x) W_deq^T directly.
//
// Persistent CTAs (a grid of occupancy x SMs) take groups of R weight rows in turn; the rows play the tokens' part
// in hadamard.cuh's layout. Codes come in 4-byte (4-bit) or byte (3-bit) loads, are looked up in a 16-entry table in
// shared memory and scaled; with a permutation the rotated rows are scattered into shared memory and written back
// in order, so every global store is 16 bytes (docs/tuning.md: unrotate-transposed). ncu (FLUX fc2): about 33
// instructions a value, issue slots 63% busy: instruction-bound more than memory-bound.
#include "hadamard.cuh"
#include "lrq.h"

namespace lrq {
namespace {

// LOG_B: log2 of the Hadamard block where it is fixed at compile time (the blocks dispatch_block lists; 0: log_b_arg),
// as in rotate_quant.cu: stage loops without exits. Blocks of 4^n (norm = 2^-n, exact) fold the norm into the scale:
// (c * (s * 2^-n)) is (c * s) * 2^-n exactly, and so is every butterfly sum of such values, so the reference's
// final multiply by norm is already done (one multiply a value fewer, the same floats).
template <typename T, int V, int BITS, int LOG_B>
__global__ void __launch_bounds__(Bounds<V>::kThreads, Bounds<V>::kMinBlocks) unrotate_weight_kernel(
    const uint8_t* __restrict__ packed, int row_bytes, const float* __restrict__ w_scales, int scale_stride,
    int group_shift, const float* __restrict__ codebook, const int32_t* __restrict__ perm,
    const float* __restrict__ channel_scale, T* __restrict__ out, int n, int k, int log_b_arg, int rows_per_cta,
    float norm) {
  const int log_b = LOG_B ? LOG_B : log_b_arg;
  constexpr bool kFoldNorm = LOG_B > 0 && LOG_B % 2 == 0;
  extern __shared__ __align__(16) float smem[];
  float* table = smem;                                        // [16] the codebook
  float* staging = smem + 16;                                 // [R * K] butterflies across warps; the scatter
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x < (1 << BITS)) table[threadIdx.x] = codebook[threadIdx.x];
  int row[V], col[V];
  vector_slots<V>(k, lane, warp, row, col);
  const int groups = (n + rows_per_cta - 1) / rows_per_cta;
  __syncthreads();                                            // table

  // Offsets in 32 bits (the launcher checks N * K < 2^31).
  for (int grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int row0 = grp * rows_per_cta;
    const int live_rows = min(rows_per_cta, n - row0);
    float v[V][8];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (row[i] >= live_rows) {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = 0.f;
        continue;
      }
      const int r = row0 + row[i];
      const uint8_t* prow = packed + r * row_bytes;
      uint32_t code[8];
      if constexpr (BITS == 4) {
        const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(prow + col[i] / 2));   // 8 codes, low nibble first
#pragma unroll
        for (int j = 0; j < 8; ++j) code[j] = (w >> (4 * j)) & 15u;
      } else {
        // 2-bit plane: bytes [0, K/4), four codes a byte; 1-bit plane: bytes [K/4, 3K/8), eight a byte
        const uint32_t lo = __ldg(prow + col[i] / 4) | (static_cast<uint32_t>(__ldg(prow + col[i] / 4 + 1)) << 8);
        const uint32_t hi = __ldg(prow + k / 4 + col[i] / 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) code[j] = ((lo >> (2 * j)) & 3u) | (((hi >> j) & 1u) << 2);
      }
      float s = __ldg(w_scales + r * scale_stride + (col[i] >> group_shift));
      if (kFoldNorm) s = __fmul_rn(s, norm);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = __fmul_rn(table[code[j]], s);
    }

    block_hadamard<V, !kFoldNorm>(v, log_b, norm, lane, warp, staging, rows_per_cta * k);

    if (channel_scale != nullptr) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (row[i] >= live_rows) continue;
        float c[8];
        load8<float>(channel_scale + col[i], c);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = __fmul_rn(v[i][j], c[j]);
      }
    }
    if (perm != nullptr) {
      __syncthreads();                                        // staging's last readers (butterflies) are done
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (row[i] >= live_rows) continue;
        const int4 a = __ldg(reinterpret_cast<const int4*>(perm + col[i]));
        const int4 b = __ldg(reinterpret_cast<const int4*>(perm + col[i]) + 1);
        float* srow = staging + row[i] * k;
        srow[a.x] = v[i][0]; srow[a.y] = v[i][1]; srow[a.z] = v[i][2]; srow[a.w] = v[i][3];
        srow[b.x] = v[i][4]; srow[b.y] = v[i][5]; srow[b.z] = v[i][6]; srow[b.w] = v[i][7];
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (row[i] < live_rows) load8_shared<float>(staging + row[i] * k + col[i], v[i]);
      __syncthreads();                                        // read back before the next group writes staging
    }
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (row[i] < live_rows) store8<T>(out + ((row0 + row[i]) * k + col[i]), v[i]);
  }
}

// Blocks of 1024 without permutation or channel scale (the weight-only forward of Hadamard layers; FLUX and Wan
// weights): hadamard.cuh's transposed layout, a warp one block of a row. A lane decodes 32 contiguous codes (one
// 16-byte load at 4 bits), the ten stages run in registers (transposed_hadamard<10>), and the rotated row leaves
// through the warp's shared memory as 16-byte stores. Same floats as the kernel above (tests/test_cuda_kernels.py).
template <typename T, int BITS>
__global__ void __launch_bounds__(Bounds<4>::kThreads, Bounds<4>::kMinBlocks) unrotate_weight_tr_kernel(
    const uint8_t* __restrict__ packed, int row_bytes, const float* __restrict__ w_scales, int scale_stride,
    int group_shift, const float* __restrict__ codebook, T* __restrict__ out, int n, int k, int rows_per_cta,
    float norm) {
  extern __shared__ __align__(16) float smem[];
  float* table = smem;                                        // [16] the codebook
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* xw = smem + 16 + warp * kTrWarpFloats;               // the warp's exchange region, then its output row
  if (threadIdx.x < (1 << BITS)) table[threadIdx.x] = codebook[threadIdx.x];
  // This warp's block: row row_w of the CTA's group, columns col_w ... col_w + 1023 (K % 1024 == 0); the lane's
  // 32 codes start at column col.
  const int row_w = (warp << 10) / k, col_w = (warp << 10) - row_w * k, col = col_w + (lane << 5);
  const int groups = (n + rows_per_cta - 1) / rows_per_cta;
  __syncthreads();                                            // table
  for (int grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int r = grp * rows_per_cta + row_w;
    if (r >= n) continue;                                     // the whole warp: no CTA barrier in this loop
    const uint8_t* prow = packed + r * row_bytes;
    uint32_t code[32];
    if constexpr (BITS == 4) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(prow + col / 2));   // low nibble first
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int c = 0; c < 32; ++c) code[c] = (words[c >> 3] >> (4 * (c & 7))) & 15u;
    } else {
      const uint2 lo = __ldg(reinterpret_cast<const uint2*>(prow + col / 4));   // the 2-bit plane
      const uint32_t hi = __ldg(reinterpret_cast<const uint32_t*>(prow + k / 4 + col / 8));   // the 1-bit plane
#pragma unroll
      for (int c = 0; c < 32; ++c)
        code[c] = (((c < 16 ? lo.x : lo.y) >> (2 * (c & 15))) & 3u) | (((hi >> c) & 1u) << 2);
    }
    const float s = __fmul_rn(__ldg(w_scales + r * scale_stride + (col >> group_shift)), norm);   // 2^-5: exact
    float a[32], b[32];
#pragma unroll
    for (int c = 0; c < 32; ++c) a[c] = __fmul_rn(table[code[c]], s);
    transposed_hadamard<10>(a, b, xw, lane);
    __syncwarp();                                             // every lane's exchange reads are done
    // 2 KB: the block in the output dtype. b[c] is column lane + 32 (c ^ 16 (lane >> 4)) (the halves swapped on
    // lanes 16-31).
    T* row = reinterpret_cast<T*>(xw);
    const int swap = (lane >> 4) << 9;
#pragma unroll
    for (int c = 0; c < 32; ++c) row[lane + 32 * c + (c < 16 ? swap : -swap)] = from_float<T>(b[c]);
    __syncwarp();
    T* dst = out + r * k + col_w;
#pragma unroll
    for (int q = 0; q < 4; ++q)
      *reinterpret_cast<uint4*>(dst + 8 * lane + 256 * q) = *reinterpret_cast<const uint4*>(row + 8 * lane + 256 * q);
  }
}

// The persistent grid of either kernel (occupancy x SMs CTAs, no more than groups of rows), once its shared memory
// is allowed; the scale layout both read.
template <typename Kernel>
std::string persistent_grid(Kernel kernel, const UnrotateWeightArgs& a, const Tiling& t, size_t smem, int64_t& grid) {
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(unrotate_weight)", e);
  }
  int per_sm = 0;
  cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, t.threads, smem);
  if (e != cudaSuccess) return cuda_error("cudaOccupancyMaxActiveBlocksPerMultiprocessor(unrotate_weight)", e);
  const int64_t groups = (a.n + t.rows - 1) / t.rows;
  grid = std::min<int64_t>(groups, static_cast<int64_t>(std::max(1, per_sm)) * sm_count(a.device));
  return "";
}
struct ScaleLayout { int stride, shift; };
ScaleLayout scale_layout(const UnrotateWeightArgs& a) {   // shift 30: col < 2^30 shifts to scale 0
  return a.group_size ? ScaleLayout{a.k / a.group_size, log2_of(a.group_size)} : ScaleLayout{1, 30};
}

template <typename T>
std::string launch_tr(const UnrotateWeightArgs& a, const Tiling& t) {
  auto kernel = a.bits == 4 ? unrotate_weight_tr_kernel<T, 4> : unrotate_weight_tr_kernel<T, 3>;
  const size_t smem = sizeof(float) * (16 + static_cast<size_t>(kTrWarpFloats) * (t.threads / 32));
  int64_t grid = 0;
  const std::string why = persistent_grid(kernel, a, t, smem, grid);
  if (!why.empty()) return why;
  const ScaleLayout sl = scale_layout(a);
  kernel<<<static_cast<unsigned>(grid), t.threads, smem, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      a.packed, static_cast<int>(a.row_bytes), a.w_scales, sl.stride, sl.shift, a.codebook,
      static_cast<T*>(a.out), a.n, a.k, t.rows, 1.f / 32.f);
  return last_launch_error("unrotate_weight_tr_kernel");
}

template <typename T, int V, int BITS, int LOG_B>
std::string launch_kernel(const UnrotateWeightArgs& a, const Tiling& t) {
  auto kernel = unrotate_weight_kernel<T, V, BITS, LOG_B>;
  const bool staging = a.perm != nullptr || a.block > 256 * V;
  const size_t smem = sizeof(float) * (16 + (staging ? static_cast<size_t>(t.rows) * a.k : 0));
  int64_t grid = 0;
  const std::string why = persistent_grid(kernel, a, t, smem, grid);
  if (!why.empty()) return why;
  const ScaleLayout sl = scale_layout(a);
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.block)));
  kernel<<<static_cast<unsigned>(grid), t.threads, smem, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      a.packed, static_cast<int>(a.row_bytes), a.w_scales, sl.stride, sl.shift, a.codebook, a.perm,
      a.channel_scale, static_cast<T*>(a.out), a.n, a.k, log2_of(a.block), t.rows, norm);
  return last_launch_error("unrotate_weight_kernel");
}

template <typename T, int V, int LOG_B>
std::string launch_bits(const UnrotateWeightArgs& a, const Tiling& t) {
  return a.bits == 4 ? launch_kernel<T, V, 4, LOG_B>(a, t) : launch_kernel<T, V, 3, LOG_B>(a, t);
}

// Blocks with kernels of their own: rotate_quant.cu's list (every block of dit_shapes.json but 64), for bf16 and
// fp16 weights (the GEMM's dtypes; float32 takes the run-time block).
template <typename T, int V>
std::string dispatch_block(const UnrotateWeightArgs& a, const Tiling& t) {
  if constexpr (!std::is_same<T, float>::value) {
    const int log_b = log2_of(a.block);
    if constexpr (V == 2) {
      if (log_b == 7) return launch_bits<T, V, 7>(a, t);
      if (log_b == 9) return launch_bits<T, V, 9>(a, t);
    }
    if constexpr (V == 4) {
      if (log_b == 9) return launch_bits<T, V, 9>(a, t);
      if (log_b == 10) return launch_bits<T, V, 10>(a, t);
    }
  }
  return launch_bits<T, V, 0>(a, t);
}

template <typename T>
std::string launch_v(const UnrotateWeightArgs& a, const Tiling& t) {
  switch (t.v) {
    case 2: return dispatch_block<T, 2>(a, t);
    case 4: return dispatch_block<T, 4>(a, t);
    case 8: return dispatch_block<T, 8>(a, t);
  }
  return "unrotate_weight: no kernel for V=" + std::to_string(t.v);
}

}  // namespace

std::string unrotate_weight_unsupported(int k, int block, int bits, int group_size) {
  if (k <= 0 || k % 8) return "K must be a positive multiple of 8, got K=" + std::to_string(k);
  if (bits != 3 && bits != 4) return "bits must be 3 or 4, got " + std::to_string(bits);
  if (group_size != 0 && group_size != 64 && group_size != 128)
    return "group_size must be 0, 64 or 128, got " + std::to_string(group_size);
  if (group_size && k % group_size)
    return "K=" + std::to_string(k) + " must be a multiple of group_size=" + std::to_string(group_size);
  if (block < 1 || (block & (block - 1)) || k % block || block > 16384)
    return "block must be a power of two <= 16384 dividing K=" + std::to_string(k) + ", got " + std::to_string(block);
  const Tiling t = tiling_for(k, block);
  if (t.threads > max_threads_for_v(t.v))
    return "K=" + std::to_string(k) + " needs more than " + std::to_string(max_threads_for_v(t.v)) + " threads a CTA";
  if (sizeof(float) * (16 + static_cast<size_t>(t.rows) * k) > 200 * 1024)
    return "K=" + std::to_string(k) + " needs too much shared memory";
  return "";
}

std::string unrotate_weight(const UnrotateWeightArgs& a) {
  std::string why = unrotate_weight_unsupported(a.k, a.block, a.bits, a.group_size);
  if (!why.empty()) return "unrotate_weight: " + why;
  if (a.row_bytes != (a.bits == 4 ? a.k / 2 : 3 * a.k / 8))
    return "unrotate_weight: row_bytes must be the packed row of K=" + std::to_string(a.k) + ", got " +
           std::to_string(a.row_bytes);
  if (a.n == 0) return "";
  if (static_cast<int64_t>(a.n) * a.k >= (int64_t(1) << 31))
    return "unrotate_weight: N * K must be below 2^31 (32-bit offsets), got N=" + std::to_string(a.n) + ", K=" +
           std::to_string(a.k);
  if ((reinterpret_cast<uintptr_t>(a.out) | reinterpret_cast<uintptr_t>(a.perm) |
       reinterpret_cast<uintptr_t>(a.channel_scale)) % 16 || reinterpret_cast<uintptr_t>(a.packed) % 4)
    return "unrotate_weight: out, perm and channel_scale must be 16-byte aligned, packed 4-byte aligned";
  const DeviceScope scope(a.device);
  if (!scope.error().empty()) return scope.error();
  const Tiling t = tiling_for(a.k, a.block);
  // The transposed kernel: blocks of 1024 without permutation or channel scale, 16-bit output, 16-byte code rows.
  if (a.block == 1024 && a.k % 1024 == 0 && a.perm == nullptr && a.channel_scale == nullptr && a.out_dtype != kF32 &&
      reinterpret_cast<uintptr_t>(a.packed) % 16 == 0)
    return a.out_dtype == kBF16 ? launch_tr<__nv_bfloat16>(a, t) : launch_tr<__half>(a, t);
  switch (a.out_dtype) {
    case kBF16: return launch_v<__nv_bfloat16>(a, t);
    case kF16: return launch_v<__half>(a, t);
    case kF32: return launch_v<float>(a, t);
  }
  return "unrotate_weight: out_dtype must be 0 (bf16), 1 (fp16) or 2 (fp32), got " + std::to_string(a.out_dtype);
}

}  // namespace lrq
