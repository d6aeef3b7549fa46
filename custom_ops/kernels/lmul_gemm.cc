#include "lmul_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "lmul_arith.h"

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>
#endif

namespace lmul {

LMUL_TARGET_CLONES
void OperandRange::scan(const uint32_t* bits, size_t count) {
  // Plain min/max reductions over masked values (GCC does not vectorise select
  // reductions): zeros show as a smallest magnitude below 2^23, specials as a largest
  // one at or above infinity; shifts of the sign make the masks without compares.
  uint32_t smallest = 0xFFFFFFFFu, largest = 0, lo = 0xFFFFFFFFu, hi = 0;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t m = bits[i] & kMagnitudeMask;
    smallest = std::min(smallest, m);
    largest = std::max(largest, m);
    const uint32_t below_normal = static_cast<uint32_t>(static_cast<int32_t>(m - kSmallestNormalBits) >> 31);
    const uint32_t not_finite = static_cast<uint32_t>(static_cast<int32_t>(kInfBits - 1u - m) >> 31);
    lo = std::min(lo, m | below_normal);  // zeros excluded; specials only matter with has_special
    hi = std::max(hi, m & ~not_finite);
  }
  min_nonzero = std::min(min_nonzero, lo);
  max_magnitude = std::max(max_magnitude, hi);
  has_zero = has_zero || smallest < kSmallestNormalBits;
  has_special = has_special || largest >= kInfBits;
}

void OperandRange::merge(const OperandRange& other) {
  min_nonzero = std::min(min_nonzero, other.min_nonzero);
  max_magnitude = std::max(max_magnitude, other.max_magnitude);
  has_zero = has_zero || other.has_zero;
  has_special = has_special || other.has_special;
}

const char* variant_name(GemmVariant variant) {
  switch (variant) {
    case GemmVariant::kAdd:
      return "add";
    case GemmVariant::kAddMaskedA:
      return "add-masked-a";
    case GemmVariant::kAddMaskedB:
      return "add-masked-b";
    case GemmVariant::kAddMaskedAB:
      return "add-masked-ab";
    case GemmVariant::kNormal:
      return "normal";
    default:
      return "general";
  }
}

// Magnitudes add modulo 2^31 (the sign bits add on their own): with these stand-ins,
//   a zero A entry meets b:        (2^23 - min|b|) + |b|           in [2^23, 2^23 + spread(B)]
//   a zero B entry meets a:        |a| - bias + (min|b| - 2^23)     in [0, max|a| + max|b| - bias - 2^23]
//   two zeros meet:                (2^23 - min|b|) + (min|b| - 2^23) = 0
// all finite when B's spread is below 0x7F000000 and the non-zero products are safe.
uint32_t zero_stand_in_a(const OperandRange& b) { return kSmallestNormalBits - b.min_nonzero; }
uint32_t zero_stand_in_b(const OperandRange& b) { return b.min_nonzero - kSmallestNormalBits; }

GemmVariant choose_variant(const OperandRange& a, const OperandRange& b, uint32_t bias, bool simd) {
  if (a.has_special || b.has_special) return GemmVariant::kGeneral;
  const bool normal_only = !a.has_zero && !b.has_zero;
  const GemmVariant fallback = normal_only ? GemmVariant::kNormal : GemmVariant::kGeneral;
  if (!simd) return fallback;
  const bool a_all_zero = a.min_nonzero == 0xFFFFFFFFu, b_all_zero = b.min_nonzero == 0xFFFFFFFFu;
  if (b_all_zero) return fallback;  // no B range to derive stand-ins from
  // Every product of non-zero operands must land in [2^23, 0x7F800000) before the sign.
  const uint64_t smallest = uint64_t{a.min_nonzero} + b.min_nonzero;
  const uint64_t largest = uint64_t{a.max_magnitude} + b.max_magnitude;
  if (!a_all_zero && smallest < uint64_t{bias} + kSmallestNormalBits) return fallback;
  if (largest >= uint64_t{bias} + kInfBits) return fallback;
  if (normal_only) return GemmVariant::kAdd;
  if (b.max_magnitude - b.min_nonzero >= kInfBits - kSmallestNormalBits) return GemmVariant::kGeneral;
  if (a.has_zero && b.has_zero) return GemmVariant::kAddMaskedAB;
  return a.has_zero ? GemmVariant::kAddMaskedA : GemmVariant::kAddMaskedB;
}

namespace {

int detect_simd_lanes() {
#if LMUL_HAVE_X86_SIMD
  const char* cap = std::getenv("LMUL_SIMD");
  const bool allow_512 = !cap || (std::strcmp(cap, "avx2") != 0 && std::strcmp(cap, "none") != 0);
  const bool allow_256 = !cap || std::strcmp(cap, "none") != 0;
  __builtin_cpu_init();
  if (allow_512 && __builtin_cpu_supports("avx512f")) return 16;
  if (allow_256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 0;
}

}  // namespace

int simd_lanes() {
  static const int lanes = detect_simd_lanes();
  return lanes;
}

size_t narrow_panel_width() { return simd_lanes() == 16 ? 32 : 0; }

size_t panel_width() {
  switch (simd_lanes()) {
    case 16:
      return 64;
    case 8:
      return 24;
    default:
      return 0;
  }
}

LMUL_TARGET_CLONES
void prepare_a(uint32_t* a, float* mask, size_t count, GemmVariant variant, uint32_t bias, uint32_t zero_stand_in) {
  const bool masked = masks_a(variant);
  for (size_t i = 0; i < count; ++i) {
    const bool zero = (a[i] & kMagnitudeMask) < kSmallestNormalBits;
    if (mask) mask[i] = zero ? 0.0f : 1.0f;
    a[i] = (masked && zero) ? zero_stand_in : a[i] - bias;
  }
}

#if LMUL_HAVE_X86_SIMD

// MR x (16 NV) tile: NV zmm of B per k (a panel of 64 columns, or 32 for narrow B), one
// broadcast of A' per row, MR x NV accumulators. Masked variants multiply each
// integer-sum product by its 0/1 select before adding. Half of the plain sums are
// fma(x, 1, acc), the same single rounding as x + acc: on Zen 4 they issue to the FMA
// pipes while the adds take the FADD pipes.
template <int MR, int NV, bool kMaskA, bool kMaskB>
__attribute__((target("avx512f"))) void tile_avx512(const uint32_t* a, const float* a_mask, size_t lda,
                                                    const uint32_t* panel, const float* b_mask, size_t k,
                                                    float* out, size_t ldo) {
  constexpr int kWidth = 16 * NV;
  __m512 acc[MR][NV];
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (size_t p = 0; p < k; ++p) {
    __m512i b[NV];
    __m512 mb[NV];
    for (int v = 0; v < NV; ++v) {
      b[v] = _mm512_loadu_si512(panel + p * kWidth + 16 * v);
      mb[v] = kMaskB ? _mm512_loadu_ps(b_mask + p * kWidth + 16 * v) : _mm512_setzero_ps();
    }
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
      const __m512 ma = kMaskA ? _mm512_set1_ps(a_mask[i * lda + p]) : one;
      for (int v = 0; v < NV; ++v) {
        const __m512 x = _mm512_castsi512_ps(_mm512_add_epi32(av, b[v]));
        if (kMaskA && kMaskB) {
          acc[i][v] = _mm512_fmadd_ps(x, _mm512_mul_ps(mb[v], ma), acc[i][v]);
        } else if (kMaskB) {
          acc[i][v] = _mm512_fmadd_ps(x, mb[v], acc[i][v]);
        } else if (kMaskA) {
          acc[i][v] = _mm512_fmadd_ps(x, ma, acc[i][v]);
        } else if (v % 2 == 1) {
          acc[i][v] = _mm512_fmadd_ps(x, one, acc[i][v]);
        } else {
          acc[i][v] = _mm512_add_ps(acc[i][v], x);
        }
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + i * ldo + v * 16, acc[i][v]);
}

// MR x 24 tile with AVX2: 3 ymm of B per k, MR x 3 accumulators.
template <int MR, bool kMaskA, bool kMaskB>
__attribute__((target("avx2,fma"))) void tile_avx2(const uint32_t* a, const float* a_mask, size_t lda,
                                                  const uint32_t* panel, const float* b_mask, size_t k,
                                                  float* out, size_t ldo) {
  __m256 acc[MR][3];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 3; ++v) acc[i][v] = _mm256_setzero_ps();
  for (size_t p = 0; p < k; ++p) {
    const uint32_t* bp = panel + p * 24;
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 8));
    const __m256i b2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 16));
    __m256 mb0 = _mm256_setzero_ps(), mb1 = mb0, mb2 = mb0;
    if (kMaskB) {
      mb0 = _mm256_loadu_ps(b_mask + p * 24);
      mb1 = _mm256_loadu_ps(b_mask + p * 24 + 8);
      mb2 = _mm256_loadu_ps(b_mask + p * 24 + 16);
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_set1_epi32(static_cast<int>(a[i * lda + p]));
      const __m256 x0 = _mm256_castsi256_ps(_mm256_add_epi32(av, b0));
      const __m256 x1 = _mm256_castsi256_ps(_mm256_add_epi32(av, b1));
      const __m256 x2 = _mm256_castsi256_ps(_mm256_add_epi32(av, b2));
      if (kMaskA && kMaskB) {
        const __m256 ma = _mm256_set1_ps(a_mask[i * lda + p]);
        acc[i][0] = _mm256_fmadd_ps(x0, _mm256_mul_ps(mb0, ma), acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(x1, _mm256_mul_ps(mb1, ma), acc[i][1]);
        acc[i][2] = _mm256_fmadd_ps(x2, _mm256_mul_ps(mb2, ma), acc[i][2]);
      } else if (kMaskB) {
        acc[i][0] = _mm256_fmadd_ps(x0, mb0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(x1, mb1, acc[i][1]);
        acc[i][2] = _mm256_fmadd_ps(x2, mb2, acc[i][2]);
      } else if (kMaskA) {
        const __m256 m = _mm256_set1_ps(a_mask[i * lda + p]);
        acc[i][0] = _mm256_fmadd_ps(x0, m, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(x1, m, acc[i][1]);
        acc[i][2] = _mm256_fmadd_ps(x2, m, acc[i][2]);
      } else {
        acc[i][0] = _mm256_add_ps(acc[i][0], x0);
        acc[i][1] = _mm256_add_ps(acc[i][1], x1);
        acc[i][2] = _mm256_add_ps(acc[i][2], x2);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 3; ++v) _mm256_storeu_ps(out + i * ldo + v * 8, acc[i][v]);
}

// Computes a rows x nr tile and stores it at out (row stride ldo).
using TileFn = void (*)(const uint32_t*, const float*, size_t, const uint32_t*, const float*, size_t, float*, size_t);

template <bool kMaskA, bool kMaskB>
TileFn avx512_tile(size_t rows) {
  switch (rows) {
    case 1: return tile_avx512<1, 4, kMaskA, kMaskB>;
    case 2: return tile_avx512<2, 4, kMaskA, kMaskB>;
    case 3: return tile_avx512<3, 4, kMaskA, kMaskB>;
    case 4: return tile_avx512<4, 4, kMaskA, kMaskB>;
    case 5: return tile_avx512<5, 4, kMaskA, kMaskB>;
    default: return tile_avx512<6, 4, kMaskA, kMaskB>;
  }
}

// Narrow panels (32 columns): up to 12 rows.
template <bool kMaskA, bool kMaskB>
TileFn avx512_narrow_tile(size_t rows) {
  static constexpr TileFn kTiles[] = {
      tile_avx512<1, 2, kMaskA, kMaskB>, tile_avx512<2, 2, kMaskA, kMaskB>,  tile_avx512<3, 2, kMaskA, kMaskB>,
      tile_avx512<4, 2, kMaskA, kMaskB>, tile_avx512<5, 2, kMaskA, kMaskB>,  tile_avx512<6, 2, kMaskA, kMaskB>,
      tile_avx512<7, 2, kMaskA, kMaskB>, tile_avx512<8, 2, kMaskA, kMaskB>,  tile_avx512<9, 2, kMaskA, kMaskB>,
      tile_avx512<10, 2, kMaskA, kMaskB>, tile_avx512<11, 2, kMaskA, kMaskB>, tile_avx512<12, 2, kMaskA, kMaskB>};
  return kTiles[std::min<size_t>(rows, 12) - 1];
}

template <bool kMaskA, bool kMaskB>
TileFn avx2_tile(size_t rows) {
  switch (rows) {
    case 1: return tile_avx2<1, kMaskA, kMaskB>;
    case 2: return tile_avx2<2, kMaskA, kMaskB>;
    case 3: return tile_avx2<3, kMaskA, kMaskB>;
    default: return tile_avx2<4, kMaskA, kMaskB>;
  }
}

template <bool kMaskA, bool kMaskB>
TileFn tile_for(size_t rows, bool narrow) {
  if (narrow) return avx512_narrow_tile<kMaskA, kMaskB>(rows);
  return simd_lanes() == 16 ? avx512_tile<kMaskA, kMaskB>(rows) : avx2_tile<kMaskA, kMaskB>(rows);
}

TileFn select_tile(GemmVariant variant, size_t rows, bool narrow) {
  switch (variant) {
    case GemmVariant::kAddMaskedA: return tile_for<true, false>(rows, narrow);
    case GemmVariant::kAddMaskedB: return tile_for<false, true>(rows, narrow);
    case GemmVariant::kAddMaskedAB: return tile_for<true, true>(rows, narrow);
    default: return tile_for<false, false>(rows, narrow);
  }
}

#endif  // LMUL_HAVE_X86_SIMD

void lmul_gemm_fast(GemmVariant variant, const uint32_t* a, const float* a_mask, const uint32_t* panels,
                    const float* b_masks, size_t k, size_t n, size_t row_begin, size_t row_end, size_t panel_begin,
                    size_t panel_end, float* c, size_t ldc, size_t panel_columns) {
#if LMUL_HAVE_X86_SIMD
  const size_t nr = panel_columns ? panel_columns : panel_width();
  const bool narrow = nr != panel_width() && nr == narrow_panel_width();
  const size_t mr = narrow ? 12 : simd_lanes() == 16 ? 6 : 4;
  alignas(64) float tile[6 * 64];
  for (size_t r = row_begin; r < row_end; r += mr) {
    const size_t rows = std::min(mr, row_end - r);
    const TileFn fn = select_tile(variant, rows, narrow);
    for (size_t panel = panel_begin; panel < panel_end; ++panel) {
      const size_t j0 = panel * nr, width = std::min(nr, n - j0);
      // Full panels go straight to C; the last, narrower one through a tile buffer.
      float* out = width == nr ? c + r * ldc + j0 : tile;
      fn(a + r * k, a_mask ? a_mask + r * k : nullptr, k, panels + panel * k * nr,
         b_masks ? b_masks + panel * k * nr : nullptr, k, out, width == nr ? ldc : nr);
      if (width != nr) {
        for (size_t i = 0; i < rows; ++i) std::memcpy(c + (r + i) * ldc + j0, tile + i * nr, width * sizeof(float));
      }
    }
  }
#else
  (void)variant, (void)a, (void)a_mask, (void)panels, (void)b_masks, (void)k, (void)n, (void)row_begin, (void)row_end;
  (void)panel_begin, (void)panel_end, (void)c, (void)ldc, (void)panel_columns;
#endif
}

}  // namespace lmul
