// Bulk L-Mul kernels over whole buffers, without onnxruntime types.
//
// The binding (ort_ops.cc) validates shapes and splits the work into independent pieces;
// each function here computes one piece and never allocates, so pieces can run on any
// thread without sharing state.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lmul_arith.h"

// Builds a bulk loop for AVX-512, AVX2 and baseline x86-64, chosen at load time from
// CPUID. Every clone computes the same values in the same order: results do not depend
// on which one runs. Functions it calls must be inlined to benefit (always_inline).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(LMUL_NO_CLONES)
#define LMUL_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LMUL_TARGET_CLONES
#endif

// Whether the x86 SIMD kernels (AVX2, AVX-512 intrinsics) are compiled in.
#if defined(__x86_64__) && defined(__GNUC__)
#define LMUL_HAVE_X86_SIMD 1
#else
#define LMUL_HAVE_X86_SIMD 0
#endif

namespace lmul {

// Storage traits: how an element type is kept in memory and widened/narrowed.
struct Float32Storage {
  using type = float;
  static constexpr ElementType kind = ElementType::kFloat32;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
struct Float16Storage {
  using type = uint16_t;
  static constexpr ElementType kind = ElementType::kFloat16;
  static float load(uint16_t x) { return float16_to_float(x); }
  static uint16_t store(float x) { return float_to_float16(x); }
};
struct BFloat16Storage {
  using type = uint16_t;
  static constexpr ElementType kind = ElementType::kBFloat16;
  static float load(uint16_t x) { return bfloat16_to_float(x); }
  static uint16_t store(float x) { return float_to_bfloat16(x); }
};

// float32 out[i] = LMul(a[i * a_step], b[i * b_step]) for i < length (steps 0 or 1),
// vectorised; the same bits as lmul_run<Float32Storage>. `bias` is lmul_bias_for_offset
// of the node's offset (SPEC 4). `stream`: write `out` with streaming stores (for outputs
// too large to stay in the cache), with a store fence at the end.
void lmul_run_float32(const float* a, size_t a_step, const float* b, size_t b_step, float* out, size_t length,
                      int mantissa_bits, uint32_t bias, bool stream = false);

// out[i] = LMul(a[i * a_step], b[i * b_step]) for i < length (steps are 0 or 1).
template <class S>
void lmul_run(const typename S::type* a, size_t a_step, const typename S::type* b, size_t b_step,
              typename S::type* out, size_t length, int mantissa_bits, uint32_t bias) {
  for (size_t i = 0; i < length; ++i) {
    out[i] = S::store(lmul_float(S::load(a[i * a_step]), S::load(b[i * b_step]), mantissa_bits, bias));
  }
}

// Packs a rows x cols matrix (element (r, c) at src[r * row_stride + c * col_stride]) into
// dense row-major float32 bit patterns, each rounded to `mantissa_bits` (SPEC 1, step 1).
template <class S>
void pack_rounded(const typename S::type* src, size_t rows, size_t cols, size_t row_stride,
                  size_t col_stride, int mantissa_bits, uint32_t* dst) {
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const float value = S::load(src[r * row_stride + c * col_stride]);
      dst[r * cols + c] = round_mantissa_bits(float_bits(value), mantissa_bits);
    }
  }
}

// Rows [row_begin, row_end) of S = A (*) B, where A (M x K) and B (K x N) are packed
// rounded operands and every product is an L-Mul; sums in float32. Row r of the result
// goes to acc + (r - row_begin) * n.
void lmul_matmul_rows(const uint32_t* a, const uint32_t* b, size_t k, size_t n, size_t row_begin,
                      size_t row_end, uint32_t bias, float* acc);

// The same for operands that are all normal numbers (lmul_normal_bits): products may
// still underflow or overflow. Same sums, same order, same bits.
void lmul_matmul_rows_normal(const uint32_t* a, const uint32_t* b, size_t k, size_t n, size_t row_begin,
                             size_t row_end, uint32_t bias, float* acc);

}  // namespace lmul
