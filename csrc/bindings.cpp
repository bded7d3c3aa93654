// pybind11 module lrq_kernels._C. Every function takes data pointers (Python ints), sizes and a stream handle, and
// raises RuntimeError with the launcher's message when a launch is refused or fails.
#include <pybind11/pybind11.h>
#include <stdexcept>
#include "lrq.h"

namespace py = pybind11;

namespace {

template <typename T>
const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }

void raise_if(const std::string& err) {
  if (!err.empty()) throw std::runtime_error(err);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lrq_kernels CUDA kernels (pointer-level; use lrq_kernels.ops, which validates tensors)";
  m.attr("BF16") = static_cast<int>(lrq::kBF16);
  m.attr("F16") = static_cast<int>(lrq::kF16);
  m.attr("F32") = static_cast<int>(lrq::kF32);
  m.attr("OUT_FP8") = static_cast<int>(lrq::kFP8);
  m.attr("OUT_INT") = static_cast<int>(lrq::kINT);
  m.attr("OUT_SAME") = static_cast<int>(lrq::kSame);
#ifdef LRQ_CUDA_ARCHS
  m.attr("CUDA_ARCHS") = LRQ_CUDA_ARCHS;
#endif

  m.def("rotate_quant",
        [](uintptr_t x, int64_t stride_x, int x_dtype, uintptr_t perm16, uintptr_t scale_lanes,
           uintptr_t out, int64_t stride_out, uintptr_t scales, int64_t m, int k, int block, int out_format,
           float qmax, int device, uintptr_t stream, bool gemm_order) {
          lrq::RotateQuantArgs a{cptr<void>(x), stride_x, x_dtype, cptr<int16_t>(perm16),
                                 cptr<float>(scale_lanes), reinterpret_cast<void*>(out), stride_out,
                                 reinterpret_cast<float*>(scales), m, k, block, out_format, qmax, device, stream,
                                 gemm_order};
          py::gil_scoped_release nogil;
          raise_if(lrq::rotate_quant(a));
        },
        py::arg("x"), py::arg("stride_x"), py::arg("x_dtype"), py::arg("perm16"),
        py::arg("scale_lanes"), py::arg("out"), py::arg("stride_out"), py::arg("scales"), py::arg("m"),
        py::arg("k"), py::arg("block"), py::arg("out_format"), py::arg("qmax"), py::arg("device"), py::arg("stream"),
        py::arg("gemm_order") = false);

  m.def("unrotate_weight",
        [](uintptr_t packed, int64_t row_bytes, int bits, uintptr_t w_scales, int group_size, uintptr_t codebook,
           uintptr_t perm, uintptr_t channel_scale, int n, int k, int block, uintptr_t out, int out_dtype, int device,
           uintptr_t stream) {
          lrq::UnrotateWeightArgs a{cptr<uint8_t>(packed), row_bytes, bits, cptr<float>(w_scales), group_size,
                                    cptr<float>(codebook), cptr<int32_t>(perm), cptr<float>(channel_scale), n, k,
                                    block, reinterpret_cast<void*>(out), out_dtype, device, stream};
          py::gil_scoped_release nogil;
          raise_if(lrq::unrotate_weight(a));
        },
        py::arg("packed"), py::arg("row_bytes"), py::arg("bits"), py::arg("w_scales"), py::arg("group_size"),
        py::arg("codebook"), py::arg("perm"), py::arg("channel_scale"), py::arg("n"), py::arg("k"), py::arg("block"),
        py::arg("out"), py::arg("out_dtype"), py::arg("device"), py::arg("stream"));

  m.def("decode_weight_e4m3",
        [](uintptr_t packed, int64_t row_bytes, int bits, uintptr_t codebook, int64_t n, int k, uintptr_t out,
           int device, uintptr_t stream) {
          lrq::DecodeWeightArgs a{cptr<uint8_t>(packed), row_bytes, bits, cptr<float>(codebook), n, k,
                                  reinterpret_cast<void*>(out), device, stream};
          py::gil_scoped_release nogil;
          raise_if(lrq::decode_weight_e4m3(a));
        },
        py::arg("packed"), py::arg("row_bytes"), py::arg("bits"), py::arg("codebook"), py::arg("n"), py::arg("k"),
        py::arg("out"), py::arg("device"), py::arg("stream"));

  m.def("gemv_a16",
        [](uintptr_t x, int x_dtype, int m, int k, int n, uintptr_t packed, int bits, uintptr_t w_scales,
           int group_size, uintptr_t codebook, uintptr_t bias, uintptr_t y, int device, uintptr_t stream,
           uintptr_t perm16, uintptr_t scale_lanes, int block) {
          lrq::GemvA16Args a{cptr<void>(x), x_dtype, m, k, n, cptr<uint8_t>(packed), bits, cptr<float>(w_scales),
                             group_size, cptr<float>(codebook), cptr<float>(bias), reinterpret_cast<void*>(y),
                             device, stream, cptr<int16_t>(perm16), cptr<float>(scale_lanes), block};
          py::gil_scoped_release nogil;
          raise_if(lrq::gemv_a16(a));
        },
        py::arg("x"), py::arg("x_dtype"), py::arg("m"), py::arg("k"), py::arg("n"), py::arg("packed"),
        py::arg("bits"), py::arg("w_scales"), py::arg("group_size"), py::arg("codebook"), py::arg("bias"),
        py::arg("y"), py::arg("device"), py::arg("stream"), py::arg("perm16") = 0, py::arg("scale_lanes") = 0,
        py::arg("block") = 1);

  m.def("gemm_a8",
        [](uintptr_t x, int64_t stride_x, uintptr_t x_scales, int m, int k, int n, uintptr_t packed,
           int64_t row_bytes, int bits, uintptr_t w_scales, int group_size, uintptr_t codebook, uintptr_t bias,
           uintptr_t y, int out_dtype, int device, uintptr_t stream, bool x_gemm_order) {
          lrq::GemmA8Args a{cptr<void>(x), stride_x, cptr<float>(x_scales), m, k, n, cptr<uint8_t>(packed),
                            row_bytes, bits, cptr<float>(w_scales), group_size, cptr<float>(codebook),
                            cptr<float>(bias), reinterpret_cast<void*>(y), out_dtype, device, stream,
                            x_gemm_order};
          py::gil_scoped_release nogil;
          raise_if(lrq::gemm_a8(a));
        },
        py::arg("x"), py::arg("stride_x"), py::arg("x_scales"), py::arg("m"), py::arg("k"), py::arg("n"),
        py::arg("packed"), py::arg("row_bytes"), py::arg("bits"), py::arg("w_scales"), py::arg("group_size"),
        py::arg("codebook"), py::arg("bias"), py::arg("y"), py::arg("out_dtype"), py::arg("device"),
        py::arg("stream"), py::arg("x_gemm_order") = false);

  m.def("rotate_quant_unsupported", &lrq::rotate_quant_unsupported, py::arg("k"), py::arg("block"),
        "Why rotate_quant cannot run this shape ('' if it can).");
  m.def("unrotate_weight_unsupported", &lrq::unrotate_weight_unsupported, py::arg("k"), py::arg("block"),
        py::arg("bits"), py::arg("group_size"), "Why unrotate_weight cannot run this shape ('' if it can).");
  m.def("decode_weight_e4m3_unsupported", &lrq::decode_weight_e4m3_unsupported, py::arg("n"), py::arg("k"),
        py::arg("bits"), "Why decode_weight_e4m3 cannot run this shape ('' if it can).");
  m.def("gemv_a16_unsupported", &lrq::gemv_a16_unsupported, py::arg("m"), py::arg("k"), py::arg("bits"),
        py::arg("group_size"), "Why gemv_a16 cannot run this shape ('' if it can).");
  m.def("gemv_a16_rotate_unsupported", &lrq::gemv_a16_rotate_unsupported, py::arg("m"), py::arg("k"),
        py::arg("block"), "Why gemv_a16 cannot fuse the rotation of x at this shape ('' if it can).");
  m.def("gemm_a8_unsupported", &lrq::gemm_a8_unsupported, py::arg("m"), py::arg("k"), py::arg("n"), py::arg("bits"),
        py::arg("group_size"), "Why gemm_a8 cannot run this shape ('' if it can; it also needs an sm_90 GPU).");
}
