// The weight's codebook values as FP8 e4m3 bytes, in natural order: out[n, k] = e4m3(codebook[code(n, k)]), the
// channel scales left out (lrq_kernels/reference/gemm.py: decode_weight_e4m3_ref).
//
// Why: the W·A8 forward at large M. There cuBLAS's FP8 GEMM with row-wise scales (torch._scaled_mm: per-token
// scales of the activations, per-channel scales of the weight) on this N x K byte matrix is faster than our GEMM
// that decodes the codes between its MMAs (docs/tuning.md: a8_dequant_min_m), and the decode is one pass over
// N x K: half a byte read (3/8 at 3 bits) and
// one written a weight.
//
// A thread decodes 32 codes of a row a step (16 packed bytes at 4 bits, 8 + 4 at 3 bits) by byte permutes over
// the 16 codebook bytes held in four registers (decode_a8.cuh, the GEMM's decoders, checked on the host by
// tests/host/decode_a8_test.cu), and writes them as two 16-byte stores. The grid strides over the row pieces
// (docs/tuning.md: decode-e4m3).
#include "common.cuh"
#include "decode_a8.cuh"
#include "lrq.h"

#include <algorithm>

namespace lrq {
namespace {

constexpr int kThreads = 256;
constexpr int kCodesPerStep = 32;

template <int kBits>
__global__ void __launch_bounds__(kThreads) decode_weight_e4m3_kernel(
    const uint8_t* __restrict__ packed, int64_t row_bytes, const float* __restrict__ codebook, int k,
    uint32_t pieces_per_row, uint32_t pieces, uint8_t* __restrict__ out) {
  __shared__ uint32_t table[4];
  if (threadIdx.x < 4) table[threadIdx.x] = codebook_e4m3_word<kBits>(codebook, threadIdx.x);
  __syncthreads();
  const uint32_t t[4] = {table[0], table[1], table[2], table[3]};

  for (uint32_t p = blockIdx.x * kThreads + threadIdx.x; p < pieces; p += gridDim.x * kThreads) {
    const uint32_t row = p / pieces_per_row, piece = p - row * pieces_per_row;
    const uint8_t* prow = packed + row * row_bytes;
    uint32_t o[8];
    if constexpr (kBits == 4) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(prow) + piece);     // codes 32 piece .. + 31
      decode8(w.x, t, o[0], o[1]);
      decode8(w.y, t, o[2], o[3]);
      decode8(w.z, t, o[4], o[5]);
      decode8(w.w, t, o[6], o[7]);
    } else {
      // 2-bit plane: bytes [0, K/4), 8 bytes a piece; 1-bit plane: bytes [K/4, 3K/8), 4 bytes a piece
      const uint2 lo = __ldg(reinterpret_cast<const uint2*>(prow) + piece);
      const uint32_t hi = __ldg(reinterpret_cast<const uint32_t*>(prow + k / 4) + piece);
      decode32_3bit(lo.x, lo.y, hi, t, o);
    }
    uint4* dst = reinterpret_cast<uint4*>(out + static_cast<int64_t>(row) * k) + 2 * piece;
    dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
    dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
}

}  // namespace

std::string decode_weight_e4m3_unsupported(int64_t n, int k, int bits) {
  if (bits != 3 && bits != 4) return "decode_weight_e4m3 takes 3- or 4-bit codes, got bits=" + std::to_string(bits);
  // 64 keeps every 3-bit piece's 8-byte and 4-byte loads aligned (a row is 3K/8 bytes)
  if (k <= 0 || k % 64 != 0) return "decode_weight_e4m3 needs K % 64 == 0, got K=" + std::to_string(k);
  if (n < 0 || n * (k / kCodesPerStep) >= (int64_t{1} << 31))
    return "decode_weight_e4m3 needs 0 <= N * K / 32 < 2^31, got N=" + std::to_string(n) + ", K=" + std::to_string(k);
  return "";
}

std::string decode_weight_e4m3(const DecodeWeightArgs& a) {
  std::string why = decode_weight_e4m3_unsupported(a.n, a.k, a.bits);
  if (!why.empty()) return why;
  const int64_t want_row = a.bits == 4 ? a.k / 2 : 3 * a.k / 8;
  if (a.row_bytes != want_row)
    return "decode_weight_e4m3: packed rows must be contiguous (" + std::to_string(want_row) +
           " bytes), got a stride of " + std::to_string(a.row_bytes);
  if (reinterpret_cast<uintptr_t>(a.packed) % 16 != 0 || reinterpret_cast<uintptr_t>(a.out) % 16 != 0)
    return "decode_weight_e4m3: packed and out must be 16-byte aligned";
  if (a.n == 0) return "";
  const DeviceScope scope(a.device);
  if (!scope.error().empty()) return scope.error();
  const uint32_t per_row = static_cast<uint32_t>(a.k / kCodesPerStep);
  const uint32_t pieces = static_cast<uint32_t>(a.n) * per_row;
  // 8 CTAs of 256 threads an SM fill it (2048 threads, one 16-byte load in flight each); more only adds tails
  const uint32_t blocks = std::min<uint32_t>((pieces + kThreads - 1) / kThreads, 8u * sm_count(a.device));
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.stream);
  auto* out = static_cast<uint8_t*>(a.out);
  if (a.bits == 4)
    decode_weight_e4m3_kernel<4><<<blocks, kThreads, 0, stream>>>(a.packed, a.row_bytes, a.codebook, a.k, per_row,
                                                                   pieces, out);
  else
    decode_weight_e4m3_kernel<3><<<blocks, kThreads, 0, stream>>>(a.packed, a.row_bytes, a.codebook, a.k, per_row,
                                                                   pieces, out);
  return last_launch_error("decode_weight_e4m3");
}

}  // namespace lrq
