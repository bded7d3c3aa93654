// Hopper (sm_90+) shared-memory barriers and bulk copies, for kernels whose loads land in shared memory without
// passing through registers (gemm_a8_sm90.cu's TMA pipeline, rotate_quant.cu's input ring). `bar` is the 32-bit
// shared address (smem_u32) of an 8-byte-aligned uint64. The bodies compile to nothing in the sm_80 machine code,
// where no caller uses them.
#pragma once
#include "common.cuh"

namespace lrq {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LRQ_SM90_BODY(...) __VA_ARGS__
#else
#define LRQ_SM90_BODY(...)
#endif

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  LRQ_SM90_BODY(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");)
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  LRQ_SM90_BODY(asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");)
}
// Spins until the barrier's phase of this parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  LRQ_SM90_BODY(asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");)
}
// One arrival that also expects `bytes` of asynchronous copies to land before the phase completes.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  LRQ_SM90_BODY(asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n"
                             ::"r"(bar), "r"(bytes) : "memory");)
}
// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory in one instruction, counted
// on `bar` as they land.
__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  LRQ_SM90_BODY(asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
      ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");)
}
// Orders this thread's earlier shared-memory accesses before its later asynchronous-proxy ones (a bulk copy into
// memory that was just read).
__device__ __forceinline__ void fence_proxy_async_shared() {
  LRQ_SM90_BODY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");)
}

#undef LRQ_SM90_BODY

}  // namespace lrq
