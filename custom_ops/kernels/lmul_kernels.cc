#include "lmul_kernels.h"

#include <algorithm>

// Builds the hot loop for AVX-512, AVX2 and baseline x86-64, chosen at load time from
// CPUID. Every clone computes the same sums in the same order: the results do not
// depend on which one runs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(LMUL_NO_CLONES)
#define LMUL_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LMUL_TARGET_CLONES
#endif

namespace lmul {

LMUL_TARGET_CLONES
void lmul_matmul_rows(const uint32_t* a, const uint32_t* b, size_t k, size_t n, size_t row_begin,
                      size_t row_end, uint32_t bias, float* acc) {
  for (size_t r = row_begin; r < row_end; ++r) {
    float* __restrict c = acc + (r - row_begin) * n;
    std::fill(c, c + n, 0.0f);
    const uint32_t* a_row = a + r * k;
    for (size_t p = 0; p < k; ++p) {
      const uint32_t a_value = a_row[p];
      const uint32_t* __restrict b_row = b + p * n;
      for (size_t j = 0; j < n; ++j) c[j] += bits_float(lmul_rounded_bits(a_value, b_row[j], bias));
    }
  }
}

}  // namespace lmul
