#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <string>

namespace lrq {

inline std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorString(e);
}

// Launches go to the caller's device and stream (PyTorch's current ones, passed from Python). The device is made
// current for the launch and the caller's current device restored when the scope ends, as PyTorch's device guard
// does, so a launch on another GPU leaves the thread's device as it found it.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    cudaError_t e = cudaGetDevice(&previous_);
    if (e == cudaSuccess && previous_ != device) {
      e = cudaSetDevice(device);
      changed_ = e == cudaSuccess;
    }
    if (e != cudaSuccess) error_ = cuda_error("cudaSetDevice", e);
  }
  ~DeviceScope() {
    if (changed_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  const std::string& error() const { return error_; }

 private:
  int previous_ = 0;
  bool changed_ = false;
  std::string error_;
};

inline std::string last_launch_error(const char* kernel) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : cuda_error(kernel, e);
}

inline int sm_count(int device) {
  int n = 0;
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  return n > 0 ? n : 1;
}

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

// A shared-memory pointer as the 32-bit address PTX's shared-state-space instructions take.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Asynchronous copies global -> shared (cp.async, sm_80+), for kernels that keep loads in flight without holding
// them in registers. A thread's copies complete in commit order; cp_async_wait_pending(n) waits until at most n
// of the thread's committed groups are still in flight (other threads' copies are not waited for: a CTA barrier
// is needed before reading what another thread copied).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src) : "memory");
}
// 4 bytes, L1-allocating; !valid writes zeros and reads nothing.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
// n in 0..2 (rings of 2 to 4 stages); the branch is uniform across the CTA.
__device__ __forceinline__ void cp_async_wait_pending(int n) {
  if (n >= 2) cp_async_wait<2>();
  else if (n == 1) cp_async_wait<1>();
  else cp_async_wait<0>();
}

}  // namespace lrq
