// One step of lmul_gemm.h's clamped product, for the kernels that run it: the panel
// tiles (lmul_gemm.cc) and the small-M pass against a B read in place (lmul_small_m.cc).
// Both prepare A as a'' = |a| + kClampOffset - bias with s_a = a's sign as +-1.0 (0.0 for
// a zero, whose a'' keeps every sum u below kClampHigh), and B, once per k and vector, as
// |b| and its constant (b & sign) | kClampOffset. Then per 16 (8) products
//     u = a'' + |b|,  r = min(u, kClampHigh) - constant,  acc += s_a * r
// in the lanes where u >= kClampLow (no underflow) and b is not zero; kLow / kHigh leave
// out the compare / the clamp where the data cannot underflow / overflow.
#pragma once

#include "lmul_gemm.h"
#include "lmul_kernels.h"

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>

namespace lmul {

// AVX-512: B's constant for the vector b (its bits, rounded), and the step itself; `lanes`
// are B's non-zero lanes (all of them where B has no zeros).
__attribute__((target("avx512f"), always_inline)) inline __m512i clamped_constant_avx512(__m512i b) {
  return _mm512_ternarylogic_epi32(b, _mm512_set1_epi32(static_cast<int>(kSignBit)),
                                   _mm512_set1_epi32(static_cast<int>(kClampOffset)), 0xEA);  // (b & sign) | offset
}

template <bool kLow, bool kHigh>
__attribute__((target("avx512f"), always_inline)) inline __m512 clamped_step_avx512(__m512 acc, __m512i a_prepared,
                                                                                    __m512 a_sign,
                                                                                    __m512i b_magnitude,
                                                                                    __m512i b_constant,
                                                                                    __mmask16 lanes) {
  const __m512i u = _mm512_add_epi32(a_prepared, b_magnitude);
  const __mmask16 keep =
      kLow ? _mm512_mask_cmpge_epu32_mask(lanes, u, _mm512_set1_epi32(static_cast<int>(kClampLow))) : lanes;
  // (maskz with all lanes: GCC 12 warns about _mm512_min_epu32's undefined source)
  const __m512i clamped =
      kHigh ? _mm512_maskz_min_epu32(0xFFFF, u, _mm512_set1_epi32(static_cast<int>(kClampHigh))) : u;
  return _mm512_mask3_fmadd_ps(_mm512_castsi512_ps(_mm512_sub_epi32(clamped, b_constant)), a_sign, acc, keep);
}

// AVX2 has no unsigned compares: u is kept offset by 2^31, as a signed value (A's
// a'' ^ 2^31, B's constant ^ 2^31), and the lanes to skip are zeroed before the
// multiply-add. `threshold`: per lane, the largest u - 2^31 to skip (clamped_threshold_avx2).
__attribute__((target("avx2"), always_inline)) inline __m256i clamped_constant_avx2(__m256i b) {
  return _mm256_xor_si256(_mm256_and_si256(b, _mm256_set1_epi32(static_cast<int>(kSignBit))),
                          _mm256_set1_epi32(static_cast<int>(kClampOffset ^ kSignBit)));
}

// kLow: u below kClampLow is an underflow (else every u of a non-zero b is kept); a lane
// where b is zero (`zero`: all ones) gets a threshold no u exceeds.
template <bool kLow>
__attribute__((target("avx2"), always_inline)) inline __m256i clamped_threshold_avx2(__m256i zero) {
  const __m256i low = _mm256_set1_epi32(kLow ? static_cast<int>(kClampLow - kSignBit - 1u) : INT32_MIN);
  return _mm256_blendv_epi8(low, _mm256_set1_epi32(0x7FFFFFFF), zero);
}

template <bool kTest, bool kHigh>
__attribute__((target("avx2,fma"), always_inline)) inline __m256 clamped_step_avx2(__m256 acc, __m256i a_prepared,
                                                                                   __m256 a_sign, __m256i b_magnitude,
                                                                                   __m256i b_constant,
                                                                                   __m256i threshold) {
  const __m256i u = _mm256_add_epi32(a_prepared, b_magnitude);
  const __m256i high = _mm256_set1_epi32(static_cast<int>(kClampHigh - kSignBit));
  const __m256i r = _mm256_sub_epi32(kHigh ? _mm256_min_epi32(u, high) : u, b_constant);
  const __m256i masked = kTest ? _mm256_and_si256(r, _mm256_cmpgt_epi32(u, threshold)) : r;
  return _mm256_fmadd_ps(_mm256_castsi256_ps(masked), a_sign, acc);
}

}  // namespace lmul

#endif  // LMUL_HAVE_X86_SIMD
