// lrq_kernels._C: launchers of the CUDA kernels. Plain pointers, sizes and a stream: nothing here depends on
// PyTorch, so one build serves any torch version and the module imports on a machine without a GPU. Python
// (lrq_kernels/cuda/) validates the tensors and passes their data pointers; these functions only check what the
// kernels themselves require and return an error message ("" when the launch succeeded).
#pragma once
#include <cstdint>
#include <string>

namespace lrq {

enum DType : int { kBF16 = 0, kF16 = 1, kF32 = 2 };
// What rotate_quant writes: FP8 e4m3 codes, INT8 codes (INT8 or INT4 levels), or the rotated values themselves
// in the input's dtype (the weight-only path, which rotates without quantizing).
enum OutFormat : int { kFP8 = 0, kINT = 1, kSame = 2 };

struct RotateQuantArgs {
  const void* x; int64_t stride_x;       // [M, K] row stride in elements
  int x_dtype;                            // DType
  // The ARS gather, x[:, perm] * channel_scale, as lrq_kernels/cuda's gather_tables lays it out (both optional,
  // nullptr: none; 16-byte aligned): perm16 the permutation as int16 (K <= 16384), scale_lanes the channel scales
  // reordered so that a warp's loads of them are contiguous (rotate_quant.cu: load_scales8).
  const int16_t* perm16;
  const float* scale_lanes;
  void* out; int64_t stride_out;          // codes [M, K] (int8/e4m3) or rotated values (x's dtype)
  float* scales;                          // [M] float32 (ignored for kSame)
  int64_t m; int k; int block;            // block: power of two dividing K, <= 16384
  int out_format;                         // OutFormat
  float qmax;                             // 448, 127 or 7
  int device; uintptr_t stream;
  bool gemm_order;                        // codes in the W4A8 GEMM's K order (gemm_a8_sm90.cu), K % 128 == 0
};

struct GemvA16Args {
  const void* x; int x_dtype;             // [M, K] contiguous, bf16 or fp16, M <= 16
  int m; int k; int n;
  const uint8_t* packed; int bits;        // [N, row bytes] (formats/packing.py)
  const float* w_scales; int group_size;  // [N] (group 0) or [N, K/group] (group 64, 128)
  const float* codebook;                  // [2^bits] float32, values exact in bf16/fp16 (e4m3-exact)
  const float* bias;                      // [N] float32 or nullptr
  void* y;                                // [M, N] in x's dtype
  int device; uintptr_t stream;
  // Optional: the layer's rotation of x, fused in front of the product (gemv_a16.cu, "Fused rotation"): x[:, perm]
  // * channel_scale times the normalised block Hadamard, rounded to x's dtype as rotate_quant's kSame output is.
  // The tables as in RotateQuantArgs (nullptr: none); block 1 with neither table: x as it is.
  const int16_t* perm16; const float* scale_lanes; int block;
};

// W4A8 / W3A8 GEMM on Hopper (sm_90a only): y[t, r] = x_scales[t] * w_scales[r] * sum_k x[t, k] codebook[code(r, k)]
// + bias[r]. 3- or 4-bit codes, per-channel scales, K % 128 == 0, N % 8 == 0 (gemm_a8_unsupported says why not).
struct GemmA8Args {
  const void* x; int64_t stride_x;        // [M, K] FP8 e4m3 codes, row stride in bytes (multiple of 16)
  const float* x_scales;                  // [M] float32
  int m; int k; int n;
  const uint8_t* packed; int64_t row_bytes; int bits;   // [N, row_bytes] (formats/packing.py), 16-byte aligned
  const float* w_scales; int group_size;  // [N] (group 0)
  const float* codebook;                  // [2^bits] float32, e4m3-exact values
  const float* bias;                      // [N] float32 or nullptr
  void* y; int out_dtype;                 // [M, N] contiguous, DType
  int device; uintptr_t stream;
  bool x_gemm_order;                      // x's K permuted within each 128 (gemm_a8_sm90.cu, "K order"): TMA loads
};

// The weight in the layer's input space, from its packed codes (unrotate_weight.cu): out[n, perm[i]] =
// channel_scale[i] * (W_deq[n, :] H_B / sqrt(B))[i], W_deq[n, k] = codebook[code(n, k)] * scale(n, k).
struct UnrotateWeightArgs {
  const uint8_t* packed; int64_t row_bytes; int bits;   // [N, row_bytes] (formats/packing.py), K % 8 == 0
  const float* w_scales; int group_size;  // [N] (group 0) or [N, K/group] (group 64, 128)
  const float* codebook;                  // [2^bits] float32
  const int32_t* perm;                    // [K] or nullptr
  const float* channel_scale;             // [K] or nullptr
  int n; int k; int block;                // block: power of two dividing K, <= 16384
  void* out; int out_dtype;               // [N, K] contiguous, DType
  int device; uintptr_t stream;
};

// The weight's codebook values as FP8 e4m3 bytes (decode_weight.cu): out[n, k] = e4m3(codebook[code(n, k)]), no
// scales (cuBLAS's FP8 GEMM applies the channel scales as its row-wise scales).
struct DecodeWeightArgs {
  const uint8_t* packed; int64_t row_bytes; int bits;   // [N, row_bytes] contiguous, 16-byte aligned
  const float* codebook;                  // [2^bits] float32, e4m3-exact values
  int64_t n; int k;                       // K % 64 == 0
  void* out;                              // [N, K] bytes, contiguous, 16-byte aligned
  int device; uintptr_t stream;
};

std::string rotate_quant(const RotateQuantArgs& a);
std::string decode_weight_e4m3(const DecodeWeightArgs& a);
std::string unrotate_weight(const UnrotateWeightArgs& a);
std::string gemv_a16(const GemvA16Args& a);
std::string gemm_a8(const GemmA8Args& a);

// Requirements, so that Python can ask before it dispatches (the same rules the launchers check).
std::string rotate_quant_unsupported(int64_t k, int block);
std::string unrotate_weight_unsupported(int k, int block, int bits, int group_size);
std::string decode_weight_e4m3_unsupported(int64_t n, int k, int bits);
std::string gemv_a16_unsupported(int m, int k, int bits, int group_size);
std::string gemv_a16_rotate_unsupported(int m, int k, int block);   // on top of gemv_a16_unsupported
std::string gemm_a8_unsupported(int m, int k, int n, int bits, int group_size);

}  // namespace lrq
