#include "lmul_small_m.h"

#include <algorithm>

#include "lmul_arith.h"
#include "lmul_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMUL_HAVE_X86_SIMD 1
#else
#define LMUL_HAVE_X86_SIMD 0
#endif

namespace lmul {

namespace {

// The portable loop on columns [j0, j1): SPEC 1 for every product, exact for any data.
// Always inlined, so that each target clone of its caller gets its own copy.
template <bool kRound>
__attribute__((always_inline)) inline void portable_block(const uint32_t* a, size_t rows, size_t k, const float* b,
                                                          size_t ldb, size_t j0, size_t j1, int mantissa_bits,
                                                          float* c, size_t ldc) {
  const uint32_t bias = lmul_bias(mantissa_bits);
  const uint32_t drop = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
  for (size_t r = 0; r < rows; ++r) {
    float* __restrict out = c + r * ldc;
    std::fill(out + j0, out + j1, 0.0f);
    for (size_t p = 0; p < k; ++p) {
      const uint32_t x = a[r * k + p];
      const float* __restrict row = b + p * ldb;
      for (size_t j = j0; j < j1; ++j) {
        const uint32_t y = kRound ? round_dropping_bits(float_bits(row[j]), drop) : float_bits(row[j]);
        out[j] += bits_float(lmul_rounded_bits(x, y, bias));
      }
    }
  }
}

LMUL_TARGET_CLONES
void exact_block(const uint32_t* a, size_t rows, size_t k, const float* b, size_t ldb, size_t j0, size_t j1,
                 int mantissa_bits, float* c, size_t ldc) {
  if (mantissa_bits == kFloat32MantissaBits) {
    portable_block<false>(a, rows, k, b, ldb, j0, j1, mantissa_bits, c, ldc);
  } else {
    portable_block<true>(a, rows, k, b, ldb, j0, j1, mantissa_bits, c, ldc);
  }
}

// Whether every product of a non-zero A value (range a) and a non-zero B value (rounded
// magnitudes in [b_min, b_max], b_max >= infinity when B had a special value or a value
// that saturates when rounded) is one integer add: the conditions of choose_variant.
// Zeros need no condition here: their products are skipped, never computed.
bool one_add_exact(const OperandRange& a, uint32_t b_min, uint32_t b_max, uint32_t bias) {
  if (a.has_special || b_max >= kInfBits) return false;
  if (a.min_nonzero == 0xFFFFFFFFu || b_min == 0xFFFFFFFFu) return true;  // every product is a zero
  return uint64_t{a.min_nonzero} + b_min >= uint64_t{bias} + kSmallestNormalBits &&
         uint64_t{a.max_magnitude} + b_max < uint64_t{bias} + kInfBits;
}

#if LMUL_HAVE_X86_SIMD

// Rounded magnitudes of 16 float32 values to the kept bits (SPEC 1, step 1) without the
// saturation and the pass-through of specials: a value that would saturate, infinity and
// NaN all come out >= 0x7F800000, which sends the block to the portable loop.
__attribute__((target("avx512f"), always_inline)) inline __m512i round_avx512(__m512i magnitude, __m128i drop,
                                                                               __m512i half_minus_one,
                                                                               __m512i kept) {
  // (masked forms: GCC 12 warns about the unmasked ones' undefined pass-through operand)
  const __m512i shifted = _mm512_mask_srl_epi32(magnitude, 0xFFFF, magnitude, drop);
  const __m512i lsb = _mm512_and_si512(shifted, _mm512_set1_epi32(1));
  return _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(magnitude, half_minus_one), lsb), kept);
}

// Columns [j0, j1) (a multiple of 16 wide) of R rows; KU rows of B per pass over the
// columns, so that the accumulators go through memory once per KU products.
template <int R, bool kRound>
__attribute__((target("avx512f"))) bool fast_block_avx512(const uint32_t* a, size_t k, const OperandRange& a_range,
                                                          const float* b, size_t ldb, size_t j0, size_t j1,
                                                          int mantissa_bits, float* c, size_t ldc) {
  constexpr size_t KU = 4;
  const uint32_t bias = lmul_bias(mantissa_bits);
  const uint32_t drop = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
  const __m128i drop_count = _mm_cvtsi32_si128(static_cast<int>(drop));
  const __m512i half_minus_one = _mm512_set1_epi32(kRound ? static_cast<int>((1u << (drop - 1u)) - 1u) : 0);
  const __m512i kept = _mm512_set1_epi32(static_cast<int>(~((1u << drop) - 1u)));
  const __m512i magnitude_mask = _mm512_set1_epi32(static_cast<int>(kMagnitudeMask));
  const __m512i sign_mask = _mm512_set1_epi32(static_cast<int>(kSignBit));
  const __m512i smallest_normal = _mm512_set1_epi32(static_cast<int>(kSmallestNormalBits));
  __m512i b_min = _mm512_set1_epi32(-1), b_max = _mm512_setzero_si512();
  for (size_t p0 = 0; p0 < k; p0 += KU) {
    const size_t steps = std::min(KU, k - p0);
    // A' = a - bias per row and k, and a lane mask that skips the products of a zero.
    int a_prepared[KU][R];
    __mmask16 a_lanes[KU][R];
    for (size_t s = 0; s < KU; ++s) {
      for (int r = 0; r < R; ++r) {
        const uint32_t x = s < steps ? a[r * k + p0 + s] : 0u;
        a_prepared[s][r] = static_cast<int>(x - bias);
        a_lanes[s][r] = (x & kMagnitudeMask) >= kSmallestNormalBits ? 0xFFFF : 0;
      }
    }
    for (size_t j = j0; j < j1; j += 16) {
      __m512 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = p0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc + j);
      for (size_t s = 0; s < steps; ++s) {
        __m512i y = _mm512_loadu_si512(b + (p0 + s) * ldb + j);
        __m512i magnitude = _mm512_and_si512(y, magnitude_mask);
        if (kRound) {
          magnitude = round_avx512(magnitude, drop_count, half_minus_one, kept);
          y = _mm512_or_si512(magnitude, _mm512_and_si512(y, sign_mask));
        }
        const __mmask16 nonzero = _mm512_cmpge_epu32_mask(magnitude, smallest_normal);
        b_min = _mm512_mask_min_epu32(b_min, nonzero, b_min, magnitude);
        b_max = _mm512_mask_max_epu32(b_max, 0xFFFF, b_max, magnitude);  // the unmasked form warns in GCC 12
        for (int r = 0; r < R; ++r) {
          const __m512 product = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32(a_prepared[s][r]), y));
          acc[r] = _mm512_mask_add_ps(acc[r], static_cast<__mmask16>(nonzero & a_lanes[s][r]), acc[r], product);
        }
      }
      for (int r = 0; r < R; ++r) _mm512_storeu_ps(c + r * ldc + j, acc[r]);
    }
  }
  alignas(64) uint32_t lo[16], hi[16];
  _mm512_store_si512(lo, b_min);
  _mm512_store_si512(hi, b_max);
  return one_add_exact(a_range, *std::min_element(lo, lo + 16), *std::max_element(hi, hi + 16), bias);
}

// The same with AVX2: 8 columns per vector; a skipped product adds +0, which leaves every
// sum as it was (a sum that starts at +0 never becomes -0).
template <int R, bool kRound>
__attribute__((target("avx2"))) bool fast_block_avx2(const uint32_t* a, size_t k, const OperandRange& a_range,
                                                     const float* b, size_t ldb, size_t j0, size_t j1,
                                                     int mantissa_bits, float* c, size_t ldc) {
  constexpr size_t KU = 4;
  const uint32_t bias = lmul_bias(mantissa_bits);
  const uint32_t drop = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
  const __m128i drop_count = _mm_cvtsi32_si128(static_cast<int>(drop));
  const __m256i half_minus_one = _mm256_set1_epi32(kRound ? static_cast<int>((1u << (drop - 1u)) - 1u) : 0);
  const __m256i kept = _mm256_set1_epi32(static_cast<int>(~((1u << drop) - 1u)));
  const __m256i magnitude_mask = _mm256_set1_epi32(static_cast<int>(kMagnitudeMask));
  const __m256i below_normal = _mm256_set1_epi32(static_cast<int>(kSmallestNormalBits - 1u));
  const __m256i ones = _mm256_set1_epi32(-1), lsb_bit = _mm256_set1_epi32(1);
  __m256i b_min = ones, b_max = _mm256_setzero_si256();
  for (size_t p0 = 0; p0 < k; p0 += KU) {
    const size_t steps = std::min(KU, k - p0);
    int a_prepared[KU][R], a_lanes[KU][R];
    for (size_t s = 0; s < KU; ++s) {
      for (int r = 0; r < R; ++r) {
        const uint32_t x = s < steps ? a[r * k + p0 + s] : 0u;
        a_prepared[s][r] = static_cast<int>(x - bias);
        a_lanes[s][r] = (x & kMagnitudeMask) >= kSmallestNormalBits ? -1 : 0;
      }
    }
    for (size_t j = j0; j < j1; j += 8) {
      __m256 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = p0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * ldc + j);
      for (size_t s = 0; s < steps; ++s) {
        __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (p0 + s) * ldb + j));
        __m256i magnitude = _mm256_and_si256(y, magnitude_mask);
        if (kRound) {
          const __m256i lsb = _mm256_and_si256(_mm256_srl_epi32(magnitude, drop_count), lsb_bit);
          magnitude = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(magnitude, half_minus_one), lsb), kept);
          y = _mm256_or_si256(magnitude, _mm256_andnot_si256(magnitude_mask, y));
        }
        // Signed compare: a magnitude >= 2^31 (rounded NaN) counts as zero here, but
        // b_max (unsigned) still sees it.
        const __m256i nonzero = _mm256_cmpgt_epi32(magnitude, below_normal);
        b_min = _mm256_min_epu32(b_min, _mm256_blendv_epi8(ones, magnitude, nonzero));
        b_max = _mm256_max_epu32(b_max, magnitude);
        for (int r = 0; r < R; ++r) {
          const __m256i product = _mm256_add_epi32(_mm256_set1_epi32(a_prepared[s][r]), y);
          const __m256i kept_product = _mm256_and_si256(product, _mm256_and_si256(nonzero, _mm256_set1_epi32(a_lanes[s][r])));
          acc[r] = _mm256_add_ps(acc[r], _mm256_castsi256_ps(kept_product));
        }
      }
      for (int r = 0; r < R; ++r) _mm256_storeu_ps(c + r * ldc + j, acc[r]);
    }
  }
  alignas(32) uint32_t lo[8], hi[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lo), b_min);
  _mm256_store_si256(reinterpret_cast<__m256i*>(hi), b_max);
  return one_add_exact(a_range, *std::min_element(lo, lo + 8), *std::max_element(hi, hi + 8), bias);
}

using FastBlock = bool (*)(const uint32_t*, size_t, const OperandRange&, const float*, size_t, size_t, size_t, int,
                           float*, size_t);

template <int R>
FastBlock fast_block_for(bool avx512, bool round) {
  if (avx512) return round ? fast_block_avx512<R, true> : fast_block_avx512<R, false>;
  return round ? fast_block_avx2<R, true> : fast_block_avx2<R, false>;
}

FastBlock select_fast_block(size_t rows, bool avx512, bool round) {
  switch (rows) {
    case 1: return fast_block_for<1>(avx512, round);
    case 2: return fast_block_for<2>(avx512, round);
    case 3: return fast_block_for<3>(avx512, round);
    case 4: return fast_block_for<4>(avx512, round);
    case 5: return fast_block_for<5>(avx512, round);
    case 6: return fast_block_for<6>(avx512, round);
    case 7: return fast_block_for<7>(avx512, round);
    default: return fast_block_for<8>(avx512, round);
  }
}

#endif  // LMUL_HAVE_X86_SIMD

}  // namespace

bool lmul_small_m(const uint32_t* a, size_t rows, size_t k, const OperandRange& a_range, const float* b, size_t ldb,
                  size_t j0, size_t j1, int mantissa_bits, float* c, size_t ldc) {
  if (rows == 0 || j1 <= j0) return true;
  size_t vector_end = j0;
  bool exact = true;
#if LMUL_HAVE_X86_SIMD
  const int lanes = simd_lanes();
  if (lanes > 0 && rows <= kSmallMMaxRows && k > 0 && !a_range.has_special) {
    vector_end = j0 + (j1 - j0) / static_cast<size_t>(lanes) * static_cast<size_t>(lanes);
    if (vector_end > j0) {
      const FastBlock fast = select_fast_block(rows, lanes == 16, mantissa_bits != kFloat32MantissaBits);
      exact = fast(a, k, a_range, b, ldb, j0, vector_end, mantissa_bits, c, ldc);
      if (!exact) exact_block(a, rows, k, b, ldb, j0, vector_end, mantissa_bits, c, ldc);
    }
  }
#endif
  // Columns short of a whole vector (or every column, without SIMD).
  if (vector_end < j1) exact_block(a, rows, k, b, ldb, vector_end, j1, mantissa_bits, c, ldc);
  return exact && vector_end > j0;
}

}  // namespace lmul
