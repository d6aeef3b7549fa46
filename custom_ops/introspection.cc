// What `lmul-onnx doctor` reports about the built library: plain C functions, no
// onnxruntime types, so that any host can call them (Python reads them with ctypes).
#include <cstdint>

#include "api_version.h"
#include "kernels/lmul_gemm.h"

// The SIMD level of the matrix-product kernels on this CPU ("avx512f", "avx2" or "none"),
// after the LMUL_SIMD cap in the environment.
extern "C" __attribute__((visibility("default"))) const char* lmul_simd_level() {
  switch (lmul::simd_lanes()) {
    case 16:
      return "avx512f";
    case 8:
      return "avx2";
    default:
      return "none";
  }
}

// The onnxruntime C API version RegisterCustomOps asks for (onnxruntime >= 1.<version>).
extern "C" __attribute__((visibility("default"))) uint32_t lmul_ort_api_version() { return lmul::kOrtApiVersion; }
