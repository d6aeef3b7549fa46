#include "lmul_gemm.h"

#include <algorithm>
#include <cassert>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "clamped_step.h"
#include "lmul_arith.h"

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>
#endif

namespace lmul {

LMUL_TARGET_CLONES
void OperandRange::scan(const uint32_t* bits, size_t count) {
  // Block by block: first the plain smallest and largest magnitudes (two min/max
  // reductions, which GCC vectorises); where those show no zero and no special value they
  // are the range. Only a block with one is read again, its zeros (and subnormals) and
  // specials left out by moving them to the far end of the reductions: m - 2^23 wraps the
  // ones below the smallest normal to the top of the unsigned order, m + 2^23 takes the
  // ones at or above infinity below zero in the signed order.
  constexpr size_t kBlock = 4096;  // 16 KiB: the second read hits the L1 cache
  for (size_t begin = 0; begin < count; begin += kBlock) {
    const size_t end = std::min(count, begin + kBlock);
    uint32_t smallest = 0xFFFFFFFFu, largest = 0;
    for (size_t i = begin; i < end; ++i) {
      const uint32_t m = bits[i] & kMagnitudeMask;
      smallest = std::min(smallest, m);
      largest = std::max(largest, m);
    }
    const bool zero = smallest < kSmallestNormalBits, special = largest >= kInfBits;
    uint32_t lo = smallest, hi = largest;
    if (zero || special) {
      uint32_t lo_shifted = 0xFFFFFFFFu, below_normal = 0;
      int32_t hi_shifted = static_cast<int32_t>(kSmallestNormalBits);  // hi = 0
      for (size_t i = begin; i < end; ++i) {
        const uint32_t m = bits[i] & kMagnitudeMask;
        lo_shifted = std::min(lo_shifted, m - kSmallestNormalBits);
        hi_shifted = std::max(hi_shifted, static_cast<int32_t>(m + kSmallestNormalBits));
        below_normal += m < kSmallestNormalBits;
      }
      zeros += below_normal;
      // (normal and special magnitudes shift to at most 0x7F7FFFFF: above, none was seen)
      lo = lo_shifted > 0x7FFFFFFFu ? 0xFFFFFFFFu : lo_shifted + kSmallestNormalBits;
      hi = static_cast<uint32_t>(hi_shifted) - kSmallestNormalBits;
    }
    min_nonzero = std::min(min_nonzero, lo);  // zeros excluded; specials only matter with has_special
    max_magnitude = std::max(max_magnitude, hi);
    has_zero = has_zero || zero;
    has_special = has_special || special;
  }
}

void OperandRange::merge(const OperandRange& other) {
  min_nonzero = std::min(min_nonzero, other.min_nonzero);
  max_magnitude = std::max(max_magnitude, other.max_magnitude);
  has_zero = has_zero || other.has_zero;
  has_special = has_special || other.has_special;
  zeros += other.zeros;
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
    case GemmVariant::kClamped:
      return "clamped";
    case GemmVariant::kClampedMaskedB:
      return "clamped-masked-b";
    case GemmVariant::kClampedHigh:
      return "clamped-high";
    case GemmVariant::kClampedHighMaskedB:
      return "clamped-high-masked-b";
    case GemmVariant::kClampedLow:
      return "clamped-low";
    case GemmVariant::kClampedLowMaskedB:
      return "clamped-low-masked-b";
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

// For the clamped kernels a zero A entry adds 0 * r, which needs r finite: with this
// stand-in u = 2^30 + |b| - min|b| lies in [2^30, 2^30 + 0x7F000000), so r is finite.
uint32_t zero_stand_in_a(const OperandRange& b, GemmVariant variant) {
  if (!is_clamped(variant)) return zero_stand_in_a(b);
  return b.min_nonzero == 0xFFFFFFFFu ? 0u : kClampOffset - b.min_nonzero;
}

GemmVariant choose_variant(const OperandRange& a, const OperandRange& b, uint32_t bias, bool simd, bool clamped) {
  if (a.has_special || b.has_special) return GemmVariant::kGeneral;
  const bool normal_only = !a.has_zero && !b.has_zero;
  const GemmVariant portable = normal_only ? GemmVariant::kNormal : GemmVariant::kGeneral;
  if (!simd) return portable;
  const bool a_all_zero = a.min_nonzero == 0xFFFFFFFFu, b_all_zero = b.min_nonzero == 0xFFFFFFFFu;
  // Every product of non-zero operands must land in [2^23, 0x7F800000) before the sign.
  const uint64_t smallest = uint64_t{a.min_nonzero} + b.min_nonzero;
  const uint64_t largest = uint64_t{a.max_magnitude} + b.max_magnitude;
  const bool may_underflow = !a_all_zero && !b_all_zero && smallest < uint64_t{bias} + kSmallestNormalBits;
  const bool may_overflow = largest >= uint64_t{bias} + kInfBits;
  // Where no one-add kernel is exact: the clamped kernel with the checks the data needs,
  // when the caller runs them (the underflow check doubles as the zero-B mask).
  const bool z = b.has_zero;
  const GemmVariant fallback =
      !clamped                        ? portable
      : may_underflow && may_overflow ? (z ? GemmVariant::kClampedMaskedB : GemmVariant::kClamped)
      : may_overflow                  ? (z ? GemmVariant::kClampedHighMaskedB : GemmVariant::kClampedHigh)
                                      : (z ? GemmVariant::kClampedLowMaskedB : GemmVariant::kClampedLow);
  if (b_all_zero || may_underflow || may_overflow) return fallback;  // (all of B zero: no stand-ins)
  if (normal_only) return GemmVariant::kAdd;
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
  // (BW for the 16-bit panels' unpacking: every AVX-512 CPU but the Xeon Phi has it)
  if (allow_512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 16;
  if (allow_256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 0;
}

}  // namespace

int simd_lanes() {
  static const int lanes = detect_simd_lanes();
  return lanes;
}

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

size_t narrow_panel_width() { return simd_lanes() == 16 ? 32 : 0; }

LMUL_TARGET_CLONES
void mask_panel_zeros(uint32_t* panel, float* masks, size_t k, size_t nr, size_t width, uint32_t stand_in,
                      uint32_t fold) {
  for (size_t p = 0; p < k; ++p) {
    uint32_t* row = panel + p * nr;
    float* mask_row = masks + p * nr;
    for (size_t j = 0; j < nr; ++j) {
      const bool zero = j >= width || ((row[j] + fold) & kMagnitudeMask) < kSmallestNormalBits;
      mask_row[j] = zero ? 0.0f : 1.0f;
      row[j] = (zero && j < width) ? stand_in - fold : row[j];
    }
  }
}

LMUL_TARGET_CLONES
void prepare_a(uint32_t* a, float* mask, size_t count, GemmVariant variant, uint32_t bias, uint32_t zero_stand_in) {
  if (is_clamped(variant)) {
    for (size_t i = 0; i < count; ++i) {
      const uint32_t magnitude = a[i] & kMagnitudeMask;
      const bool zero = magnitude < kSmallestNormalBits;
      mask[i] = zero ? 0.0f : (a[i] & kSignBit) ? -1.0f : 1.0f;
      a[i] = zero ? zero_stand_in : magnitude + (kClampOffset - bias);
    }
    return;
  }
  const bool masked = masks_a(variant);
  for (size_t i = 0; i < count; ++i) {
    const bool zero = (a[i] & kMagnitudeMask) < kSmallestNormalBits;
    if (mask) mask[i] = zero ? 0.0f : 1.0f;
    a[i] = (masked && zero) ? zero_stand_in : a[i] - bias;
  }
}

#if LMUL_HAVE_X86_SIMD

// How a tile kernel treats B's zero entries: there are none (or A's masks cover them),
// a 0/1 float mask per entry (lmul_gemm_fast), or entries that hold 0 and are tested
// (compact panels, lmul_gemm_panels).
enum class ZerosOfB { kNone, kFloatMask, kTested };

// One row of a panel as NV x 16 32-bit bit patterns (64 columns, or 32 for narrow
// panels). 16-bit panels (always 64 wide) are stored in the order of AVX-512BW's word
// unpacking (half_panel_slot), so that unpacking each word under a zero word (one
// instruction per vector) yields the columns in order, already shifted into the high half.
template <int NV>
__attribute__((target("avx512f"), always_inline)) inline void load_row(const uint32_t* p, __m512i b[NV]) {
  for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(p + 16 * v);
}
template <int NV>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void load_row(const uint16_t* p, __m512i b[NV]) {
  static_assert(NV == 4, "16-bit panels are 64 columns wide");
  const __m512i zero = _mm512_setzero_si512(), low = _mm512_loadu_si512(p), high = _mm512_loadu_si512(p + 32);
  b[0] = _mm512_unpacklo_epi16(zero, low);
  b[1] = _mm512_unpackhi_epi16(zero, low);
  b[2] = _mm512_unpacklo_epi16(zero, high);
  b[3] = _mm512_unpackhi_epi16(zero, high);
}

// 8 entries of a 24-wide panel (AVX2) as 32-bit bit patterns: 16-bit ones widened and
// shifted into the high half.
__attribute__((target("avx2"), always_inline)) inline __m256i load_b8(const uint32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
__attribute__((target("avx2"), always_inline)) inline __m256i load_b8(const uint16_t* p) {
  return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
}

// Which masks k step p of an MR-row tile needs (the tiles below run each step without the
// masks it does not need): B's tested zeros only in the rows of the panel that zero_rows
// (zero_row_bits; null: every row) shows with a zero (quantised weights have one in about
// 2% of their panel rows; masked adds all take the FADD pipes, and on AVX2 the lane
// clearing costs an op per product), A's masks (0.0f or 1.0f) only where one of the
// tile's rows has a zero at p. Where all of them have one (a causal mask's zeros in p.V),
// the step is skipped: its products are all +-0, and adding +-0 never changes a sum that
// starts at +0.
struct StepMasks {
  bool skip, mask_a, mask_b;
};
template <int MR, bool kMaskA, ZerosOfB kZeros>
__attribute__((always_inline)) inline StepMasks step_masks(const float* a_mask, size_t lda, const uint64_t* zero_rows,
                                                           size_t p) {
  StepMasks step{false, kMaskA, kZeros != ZerosOfB::kNone};
  if constexpr (kMaskA) {
    uint32_t all = ~0u, any = 0;
    for (int i = 0; i < MR; ++i) {
      uint32_t bits;
      std::memcpy(&bits, a_mask + i * lda + p, sizeof bits);
      all &= bits;
      any |= bits;
    }
    step.skip = any == 0;
    step.mask_a = all == 0;
  }
  if constexpr (kZeros == ZerosOfB::kTested) {
    step.mask_b = zero_rows == nullptr || ((zero_rows[p / 64] >> (p % 64)) & 1u) != 0;
  }
  return step;
}

// One k step (row p of the panel) of tile_avx512: NV zmm of B, one broadcast of A' per
// row, MR x NV accumulators. Float masks multiply each integer-sum product by its 0/1
// select before adding; tested zeros of B leave their lanes out of the add (a k-mask),
// whatever the sum holds there. Half of the plain sums are fma(x, 1, acc), the same
// single rounding as x + acc: on Zen 4 they issue to the FMA pipes while the adds take the
// FADD pipes.
template <int MR, int NV, bool kMaskA, ZerosOfB kZeros, class W>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void tile_step_avx512(
    __m512 (&acc)[MR][NV], const uint32_t* a, const float* a_mask, size_t lda, const W* panel, const float* b_mask,
    size_t p) {
  constexpr bool kFloatMaskB = kZeros == ZerosOfB::kFloatMask, kTestB = kZeros == ZerosOfB::kTested;
  constexpr int kWidth = 16 * NV;
  const __m512 one = _mm512_set1_ps(1.0f);
  const W* bp = panel + p * kWidth;
  __m512i b[NV];
  __m512 mb[NV];
  __mmask16 nonzero[NV];
  load_row<NV>(bp, b);
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    mb[v] = kFloatMaskB ? _mm512_loadu_ps(b_mask + p * kWidth + 16 * v) : _mm512_setzero_ps();
    nonzero[v] = kTestB ? _mm512_test_epi32_mask(b[v], b[v]) : __mmask16{0xFFFF};
  }
  for (int i = 0; i < MR; ++i) {
    const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
    const __m512 ma = kMaskA ? _mm512_set1_ps(a_mask[i * lda + p]) : one;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 x = _mm512_castsi512_ps(_mm512_add_epi32(av, b[v]));
      if (kMaskA && kFloatMaskB) {
        acc[i][v] = _mm512_fmadd_ps(x, _mm512_mul_ps(mb[v], ma), acc[i][v]);
      } else if (kMaskA && kTestB) {
        acc[i][v] = _mm512_mask3_fmadd_ps(x, ma, acc[i][v], nonzero[v]);
      } else if (kFloatMaskB) {
        acc[i][v] = _mm512_fmadd_ps(x, mb[v], acc[i][v]);
      } else if (kTestB) {
        acc[i][v] = _mm512_mask_add_ps(acc[i][v], nonzero[v], acc[i][v], x);
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

// A tile's zero steps from its rows' zero_bits_of_rows (`rows` x `words`): `steps` gets the
// k steps where one row has a zero (`any`), where every row has (`all`), then the rows'
// own bits.
void tile_zero_steps(const uint64_t* row_bits, size_t rows, size_t words, uint64_t* steps) {
  for (size_t w = 0; w < words; ++w) {
    uint64_t any = 0, all = ~uint64_t{0};
    for (size_t i = 0; i < rows; ++i) {
      any |= row_bits[i * words + w];
      all &= row_bits[i * words + w];
    }
    steps[w] = any;
    steps[words + w] = all;
  }
  std::copy(row_bits, row_bits + rows * words, steps + 2 * words);
}

// 16-bit panels against more rows than one tile: each step's row of the panel, widened,
// is stored for the later tiles (lmul_gemm_panels), skipped steps' rows too.
template <int NV, class W>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void store_widened_row(const W* panel,
                                                                                       uint32_t* widened, size_t p) {
  if constexpr (std::is_same_v<W, uint16_t>) {
    if (widened) {
      __m512i b[NV];
      load_row<NV>(panel + p * 16 * NV, b);
      for (int v = 0; v < NV; ++v) _mm512_storeu_si512(widened + p * 16 * NV + 16 * v, b[v]);
    }
  }
}

// The first set bit of `bits` at or after bit `from`, or `end`.
inline size_t next_set_bit(const uint64_t* bits, size_t from, size_t end) {
  for (size_t w = from / 64; w * 64 < end; ++w) {
    const uint64_t word = w == from / 64 ? bits[w] & (~uint64_t{0} << (from % 64)) : bits[w];
    if (word != 0) return std::min(end, w * 64 + static_cast<size_t>(__builtin_ctzll(word)));
  }
  return end;
}

// tile_avx512 for an A with few zeros and a B without (GELU outputs against weights: 0.02 %
// of them are zeros, from erf saturating). The steps between the zeros run as the plain
// tight loop, found from the tile's zero steps (tile_zero_steps), with no test per step:
// tested in the loop against A's float masks, which every panel read again (and which
// A's preparation wrote), the 6-row tile ran 7 % slower. A step where some row has a zero
// adds that row's sums under an all-or-nothing k-mask (no vector register taken from the
// sums); where every row has one it is skipped. The sums are the same: a left-out
// product is +-0, and adding +-0 never changes a sum that starts at +0.
template <int MR, int NV, class W>
__attribute__((target("avx512f,avx512bw"))) void tile_sparse_zeros_a_avx512(const uint32_t* a, size_t lda,
                                                                           const W* panel, size_t k, float* out,
                                                                           size_t ldo, uint32_t* widened,
                                                                           const uint64_t* zero_steps) {
  constexpr int kWidth = 16 * NV;
  const size_t words = zero_row_words(k);
  const uint64_t *any = zero_steps, *all = zero_steps + words, *row_bits = zero_steps + 2 * words;
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (size_t p = 0; p < k; ++p) {
    for (const size_t plain_end = next_set_bit(any, p, k); p < plain_end; ++p) {
      store_widened_row<NV>(panel, widened, p);
      tile_step_avx512<MR, NV, false, ZerosOfB::kNone>(acc, a, nullptr, lda, panel, nullptr, p);
    }
    if (p == k) break;
    store_widened_row<NV>(panel, widened, p);
    if ((all[p / 64] >> (p % 64)) & 1u) continue;
    __m512i b[NV];
    load_row<NV>(panel + p * kWidth, b);
    for (int i = 0; i < MR; ++i) {
      const bool zero = (row_bits[i * words + p / 64] >> (p % 64)) & 1u;
      const __mmask16 keep = zero ? __mmask16(0) : __mmask16(0xFFFF);
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
      for (int v = 0; v < NV; ++v) {
        acc[i][v] = _mm512_mask_add_ps(acc[i][v], keep, acc[i][v], _mm512_castsi512_ps(_mm512_add_epi32(av, b[v])));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + i * ldo + v * 16, acc[i][v]);
}

// MR x (16 NV) tile (a panel of 64 columns, or 32 for narrow B), k steps of
// tile_step_avx512, each with the masks step_masks says it needs.
template <int MR, int NV, bool kMaskA, ZerosOfB kZeros, class W>
__attribute__((target("avx512f,avx512bw"))) void tile_avx512(const uint32_t* a, const float* a_mask, size_t lda,
                                                    const W* panel, const float* b_mask,
                                                    const uint64_t* zero_rows, size_t k, float* out, size_t ldo,
                                                    uint32_t* widened, const uint64_t* a_zero_steps) {
  if constexpr (kMaskA && kZeros == ZerosOfB::kNone) {
    if (a_zero_steps) {
      tile_sparse_zeros_a_avx512<MR, NV, W>(a, lda, panel, k, out, ldo, widened, a_zero_steps);
      return;
    }
  }
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  constexpr ZerosOfB kNone = ZerosOfB::kNone;
  for (size_t p = 0; p < k; ++p) {
    if constexpr (std::is_same_v<W, uint16_t>) {
      if (widened) {  // (the loads are the step's own; the stores go under its adds)
        __m512i b[NV];
        load_row<NV>(panel + p * 16 * NV, b);
        for (int v = 0; v < NV; ++v) _mm512_storeu_si512(widened + p * 16 * NV + 16 * v, b[v]);
      }
    }
    const StepMasks step = step_masks<MR, kMaskA, kZeros>(a_mask, lda, zero_rows, p);
    if (step.skip) continue;
    if (step.mask_a && step.mask_b) {
      tile_step_avx512<MR, NV, kMaskA, kZeros>(acc, a, a_mask, lda, panel, b_mask, p);
    } else if (step.mask_a) {
      tile_step_avx512<MR, NV, kMaskA, kNone>(acc, a, a_mask, lda, panel, b_mask, p);
    } else if (step.mask_b) {
      tile_step_avx512<MR, NV, false, kZeros>(acc, a, a_mask, lda, panel, b_mask, p);
    } else {
      tile_step_avx512<MR, NV, false, kNone>(acc, a, a_mask, lda, panel, b_mask, p);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + i * ldo + v * 16, acc[i][v]);
}

// One k step (row p of the panel) of tile_avx2: 3 ymm of B, MR x 3 accumulators. Without
// mask registers, the sums of tested zeros of B are cleared to +0 before the add (adding
// +0 leaves every sum as it was: a sum that starts at +0 never becomes -0).
template <int MR, bool kMaskA, ZerosOfB kZeros, class W>
__attribute__((target("avx2,fma"), always_inline)) inline void tile_step_avx2(__m256 (&acc)[MR][3], const uint32_t* a,
                                                                             const float* a_mask, size_t lda,
                                                                             const W* panel, const float* b_mask,
                                                                             size_t p) {
  constexpr bool kFloatMaskB = kZeros == ZerosOfB::kFloatMask, kTestB = kZeros == ZerosOfB::kTested;
  const W* bp = panel + p * 24;
  __m256i b[3], zero[3];
  __m256 mb[3];
#pragma GCC unroll 3
  for (int v = 0; v < 3; ++v) {
    b[v] = load_b8(bp + 8 * v);
    mb[v] = kFloatMaskB ? _mm256_loadu_ps(b_mask + p * 24 + 8 * v) : _mm256_setzero_ps();
    zero[v] = kTestB ? _mm256_cmpeq_epi32(b[v], _mm256_setzero_si256()) : _mm256_setzero_si256();
  }
  for (int i = 0; i < MR; ++i) {
    const __m256i av = _mm256_set1_epi32(static_cast<int>(a[i * lda + p]));
    const __m256 ma = kMaskA ? _mm256_set1_ps(a_mask[i * lda + p]) : _mm256_setzero_ps();
#pragma GCC unroll 3
    for (int v = 0; v < 3; ++v) {
      __m256i sum = _mm256_add_epi32(av, b[v]);
      if (kTestB) sum = _mm256_andnot_si256(zero[v], sum);
      const __m256 x = _mm256_castsi256_ps(sum);
      if (kMaskA && kFloatMaskB) {
        acc[i][v] = _mm256_fmadd_ps(x, _mm256_mul_ps(mb[v], ma), acc[i][v]);
      } else if (kFloatMaskB) {
        acc[i][v] = _mm256_fmadd_ps(x, mb[v], acc[i][v]);
      } else if (kMaskA) {
        acc[i][v] = _mm256_fmadd_ps(x, ma, acc[i][v]);
      } else {
        acc[i][v] = _mm256_add_ps(acc[i][v], x);
      }
    }
  }
}

// MR x 24 tile with AVX2: k steps of tile_step_avx2, each with the masks step_masks says
// it needs.
template <int MR, bool kMaskA, ZerosOfB kZeros, class W>
__attribute__((target("avx2,fma"))) void tile_avx2(const uint32_t* a, const float* a_mask, size_t lda, const W* panel,
                                                  const float* b_mask, const uint64_t* zero_rows, size_t k,
                                                  float* out, size_t ldo, uint32_t* /*widened: not used*/,
                                                  const uint64_t* /*a_zero_steps: not used*/) {
  __m256 acc[MR][3];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 3; ++v) acc[i][v] = _mm256_setzero_ps();
  constexpr ZerosOfB kNone = ZerosOfB::kNone;
  for (size_t p = 0; p < k; ++p) {
    const StepMasks step = step_masks<MR, kMaskA, kZeros>(a_mask, lda, zero_rows, p);
    if (step.skip) continue;
    if (step.mask_a && step.mask_b) {
      tile_step_avx2<MR, kMaskA, kZeros>(acc, a, a_mask, lda, panel, b_mask, p);
    } else if (step.mask_a) {
      tile_step_avx2<MR, kMaskA, kNone>(acc, a, a_mask, lda, panel, b_mask, p);
    } else if (step.mask_b) {
      tile_step_avx2<MR, false, kZeros>(acc, a, a_mask, lda, panel, b_mask, p);
    } else {
      tile_step_avx2<MR, false, kNone>(acc, a, a_mask, lda, panel, b_mask, p);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 3; ++v) _mm256_storeu_ps(out + i * ldo + v * 8, acc[i][v]);
}

// MR x (16 NV) clamped tile (lmul_gemm.h, clamped_step.h; 64 columns, or 32 for narrow
// B), with b read as panel entry + b_fold; with kMaskB, B's zeros (and their stand-ins)
// are the entries below b_min, its smallest non-zero magnitude. |b|, b's constant and the
// zero mask are made once per k.
template <int MR, int NV, bool kMaskB, bool kLow, bool kHigh>
__attribute__((target("avx512f"))) void tile_clamped_avx512(const uint32_t* a, const float* a_sign, size_t lda,
                                                            const uint32_t* panel, uint32_t b_min, uint32_t b_fold,
                                                            size_t k, float* out, size_t ldo) {
  constexpr int kWidth = 16 * NV;
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  const __m512i magnitude_mask = _mm512_set1_epi32(static_cast<int>(kMagnitudeMask));
  const __m512i smallest = _mm512_set1_epi32(static_cast<int>(b_min));
  const __m512i fold = _mm512_set1_epi32(static_cast<int>(b_fold));
  for (size_t p = 0; p < k; ++p) {
    __m512i bm[NV], bc[NV];
    __mmask16 nonzero[NV];
    for (int v = 0; v < NV; ++v) {
      const __m512i b = _mm512_add_epi32(_mm512_loadu_si512(panel + p * kWidth + 16 * v), fold);
      bm[v] = _mm512_and_si512(b, magnitude_mask);
      bc[v] = clamped_constant_avx512(b);
      nonzero[v] = kMaskB ? _mm512_cmpge_epu32_mask(bm[v], smallest) : static_cast<__mmask16>(0xFFFF);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
      const __m512 sv = _mm512_set1_ps(a_sign[i * lda + p]);
      for (int v = 0; v < NV; ++v) {
        acc[i][v] = clamped_step_avx512<kLow, kHigh>(acc[i][v], av, sv, bm[v], bc[v], nonzero[v]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + i * ldo + v * 16, acc[i][v]);
}

// MR x 24 clamped tile with AVX2 (clamped_step.h: u kept offset by 2^31).
template <int MR, bool kMaskB, bool kLow, bool kHigh>
__attribute__((target("avx2,fma"))) void tile_clamped_avx2(const uint32_t* a, const float* a_sign, size_t lda,
                                                          const uint32_t* panel, uint32_t b_min, uint32_t b_fold,
                                                          size_t k, float* out, size_t ldo) {
  __m256 acc[MR][3];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 3; ++v) acc[i][v] = _mm256_setzero_ps();
  const __m256i magnitude_mask = _mm256_set1_epi32(static_cast<int>(kMagnitudeMask));
  const __m256i sign_bit = _mm256_set1_epi32(static_cast<int>(kSignBit));
  const __m256i smallest = _mm256_set1_epi32(static_cast<int>(b_min ^ kSignBit));
  const __m256i fold = _mm256_set1_epi32(static_cast<int>(b_fold));
  for (size_t p = 0; p < k; ++p) {
    const uint32_t* bp = panel + p * 24;
    __m256i bm[3], bc[3], threshold[3];
    for (int v = 0; v < 3; ++v) {
      const __m256i b = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 8 * v)), fold);
      bm[v] = _mm256_and_si256(b, magnitude_mask);
      bc[v] = clamped_constant_avx2(b);
      // zero entries of B: below min|b| (compared as signed after the offset)
      const __m256i zero =
          kMaskB ? _mm256_cmpgt_epi32(smallest, _mm256_xor_si256(bm[v], sign_bit)) : _mm256_setzero_si256();
      threshold[v] = clamped_threshold_avx2<kLow>(zero);
    }
    for (int i = 0; i < MR; ++i) {
      // a'' - 2^31: u - 2^31 = (a'' - 2^31) + |b| without signed overflow
      const __m256i av = _mm256_set1_epi32(static_cast<int>(a[i * lda + p] ^ kSignBit));
      const __m256 sv = _mm256_set1_ps(a_sign[i * lda + p]);
      for (int v = 0; v < 3; ++v) {
        acc[i][v] = clamped_step_avx2<kLow || kMaskB, kHigh>(acc[i][v], av, sv, bm[v], bc[v], threshold[v]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 3; ++v) _mm256_storeu_ps(out + i * ldo + v * 8, acc[i][v]);
}

// Rows of A per tile: 6 (AVX-512) or 4 (AVX2).
size_t tile_rows() { return simd_lanes() == 16 ? 6 : 4; }

// Computes a rows x nr tile and stores it at out (row stride ldo); `widened` (16-bit
// AVX-512 panels, or null): where the tile also stores the panel's rows widened to 32 bits;
// a_zero_steps: the rows' tile_zero_steps (AVX-512 tiles of kAddMaskedA given A's zeros
// as bits: then a_mask is null), else null.
template <class W>
using TileFn = void (*)(const uint32_t*, const float*, size_t, const W*, const float*, const uint64_t*, size_t, float*,
                        size_t, uint32_t*, const uint64_t*);

template <bool kMaskA, ZerosOfB kZeros, class W>
TileFn<W> avx512_tile(size_t rows) {
  switch (rows) {
    case 1: return tile_avx512<1, 4, kMaskA, kZeros, W>;
    case 2: return tile_avx512<2, 4, kMaskA, kZeros, W>;
    case 3: return tile_avx512<3, 4, kMaskA, kZeros, W>;
    case 4: return tile_avx512<4, 4, kMaskA, kZeros, W>;
    case 5: return tile_avx512<5, 4, kMaskA, kZeros, W>;
    default: return tile_avx512<6, 4, kMaskA, kZeros, W>;
  }
}

// Narrow panels (32 columns, 32-bit): up to 12 rows.
template <bool kMaskA, ZerosOfB kZeros>
TileFn<uint32_t> avx512_narrow_tile(size_t rows) {
  static constexpr TileFn<uint32_t> kTiles[] = {
      tile_avx512<1, 2, kMaskA, kZeros, uint32_t>,  tile_avx512<2, 2, kMaskA, kZeros, uint32_t>,
      tile_avx512<3, 2, kMaskA, kZeros, uint32_t>,  tile_avx512<4, 2, kMaskA, kZeros, uint32_t>,
      tile_avx512<5, 2, kMaskA, kZeros, uint32_t>,  tile_avx512<6, 2, kMaskA, kZeros, uint32_t>,
      tile_avx512<7, 2, kMaskA, kZeros, uint32_t>,  tile_avx512<8, 2, kMaskA, kZeros, uint32_t>,
      tile_avx512<9, 2, kMaskA, kZeros, uint32_t>,  tile_avx512<10, 2, kMaskA, kZeros, uint32_t>,
      tile_avx512<11, 2, kMaskA, kZeros, uint32_t>, tile_avx512<12, 2, kMaskA, kZeros, uint32_t>};
  return kTiles[std::min<size_t>(rows, 12) - 1];
}

template <bool kMaskA, ZerosOfB kZeros, class W>
TileFn<W> avx2_tile(size_t rows) {
  switch (rows) {
    case 1: return tile_avx2<1, kMaskA, kZeros, W>;
    case 2: return tile_avx2<2, kMaskA, kZeros, W>;
    case 3: return tile_avx2<3, kMaskA, kZeros, W>;
    default: return tile_avx2<4, kMaskA, kZeros, W>;
  }
}

// Narrow panels exist for 32-bit panels only (a per-call B of at most 32 columns).
template <bool kMaskA, ZerosOfB kZeros, class W>
TileFn<W> tile_for(size_t rows, bool narrow) {
  if constexpr (std::is_same_v<W, uint32_t>) {
    if (narrow) return avx512_narrow_tile<kMaskA, kZeros>(rows);
  }
  return simd_lanes() == 16 ? avx512_tile<kMaskA, kZeros, W>(rows) : avx2_tile<kMaskA, kZeros, W>(rows);
}

// Computes a rows x nr clamped tile: b_min (the smallest non-zero magnitude of B) tells
// zero entries (and their stand-ins) from the others; b_fold is added back to every panel
// entry (B packed with the bias folded in).
using ClampedTileFn = void (*)(const uint32_t*, const float*, size_t, const uint32_t*, uint32_t, uint32_t, size_t,
                               float*, size_t);

template <bool kMaskB, bool kLow, bool kHigh>
ClampedTileFn clamped_tile(size_t rows, bool narrow) {
  if (narrow) {  // 32 columns (AVX-512 only)
    switch (rows) {
      case 1: return tile_clamped_avx512<1, 2, kMaskB, kLow, kHigh>;
      case 2: return tile_clamped_avx512<2, 2, kMaskB, kLow, kHigh>;
      case 3: return tile_clamped_avx512<3, 2, kMaskB, kLow, kHigh>;
      default: return tile_clamped_avx512<4, 2, kMaskB, kLow, kHigh>;
    }
  }
  if (simd_lanes() == 16) {
    switch (rows) {
      case 1: return tile_clamped_avx512<1, 4, kMaskB, kLow, kHigh>;
      case 2: return tile_clamped_avx512<2, 4, kMaskB, kLow, kHigh>;
      case 3: return tile_clamped_avx512<3, 4, kMaskB, kLow, kHigh>;
      default: return tile_clamped_avx512<4, 4, kMaskB, kLow, kHigh>;
    }
  }
  switch (rows) {
    case 1: return tile_clamped_avx2<1, kMaskB, kLow, kHigh>;
    default: return tile_clamped_avx2<2, kMaskB, kLow, kHigh>;
  }
}

// Rows of A per clamped tile: 4 (AVX-512, also narrow) or 2 (AVX2).
size_t clamped_tile_rows() { return simd_lanes() == 16 ? 4 : 2; }

ClampedTileFn select_clamped_tile(GemmVariant variant, size_t rows, bool narrow) {
  switch (variant) {
    case GemmVariant::kClamped: return clamped_tile<false, true, true>(rows, narrow);
    case GemmVariant::kClampedMaskedB: return clamped_tile<true, true, true>(rows, narrow);
    case GemmVariant::kClampedHigh: return clamped_tile<false, false, true>(rows, narrow);
    case GemmVariant::kClampedHighMaskedB: return clamped_tile<true, false, true>(rows, narrow);
    case GemmVariant::kClampedLow: return clamped_tile<false, true, false>(rows, narrow);
    default: return clamped_tile<true, true, false>(rows, narrow);
  }
}

// The tile of `variant` for panels whose zeros of B are `kZeros` when it masks B.
template <ZerosOfB kZeros, class W>
TileFn<W> select_tile(GemmVariant variant, size_t rows, bool narrow) {
  switch (variant) {
    case GemmVariant::kAddMaskedA: return tile_for<true, ZerosOfB::kNone, W>(rows, narrow);
    case GemmVariant::kAddMaskedB: return tile_for<false, kZeros, W>(rows, narrow);
    case GemmVariant::kAddMaskedAB: return tile_for<true, kZeros, W>(rows, narrow);
    default: return tile_for<false, ZerosOfB::kNone, W>(rows, narrow);
  }
}

// Rows [row_begin, row_end) x panels [panel_begin, panel_end) with the tiles of one
// panel format, panels of panel_columns (0: panel_width()).
// zero_rows: the compact panels' rows without a zero of B (zero_row_bits), or null.
template <ZerosOfB kZeros, class W>
void gemm_tiles(GemmVariant variant, const uint32_t* a, const float* a_mask, const W* panels, const float* b_masks,
                const uint64_t* zero_rows, size_t k, size_t n, size_t row_begin, size_t row_end, size_t panel_begin,
                size_t panel_end, float* c, size_t ldc, size_t panel_columns = 0, uint32_t* widened = nullptr,
                const uint64_t* a_zero_bits = nullptr) {
  const size_t nr = panel_columns ? panel_columns : panel_width();
  const bool narrow = nr != panel_width() && nr == narrow_panel_width();
  const size_t mr = narrow ? 12 : tile_rows();
  alignas(64) float tile[6 * 64];  // also 12 x 32
  // A's zeros as bits (kAddMaskedA, AVX-512 only: no other tile reads them, and a_mask is
  // null then): each tile of rows' steps with a zero
  assert(!a_zero_bits || (variant == GemmVariant::kAddMaskedA && simd_lanes() == 16));
  const size_t words = zero_row_words(k);
  thread_local std::vector<uint64_t> steps;
  if (a_zero_bits && steps.size() < (2 + mr) * words) steps.resize((2 + mr) * words);
  for (size_t r = row_begin; r < row_end; r += mr) {
    const size_t rows = std::min(mr, row_end - r);
    const TileFn<W> fn = select_tile<kZeros, W>(variant, rows, narrow);
    if (a_zero_bits) tile_zero_steps(a_zero_bits + r * words, rows, words, steps.data());
    const uint64_t* a_zero_steps = a_zero_bits ? steps.data() : nullptr;
    for (size_t panel = panel_begin; panel < panel_end; ++panel) {
      const size_t j0 = panel * nr, width = std::min(nr, n - j0);
      // Full panels go straight to C; the last, narrower one through a tile buffer.
      float* out = width == nr ? c + r * ldc + j0 : tile;
      const size_t ldo = width == nr ? ldc : nr;
      fn(a + r * k, a_mask ? a_mask + r * k : nullptr, k, panels + panel * k * nr,
         b_masks ? b_masks + panel * k * nr : nullptr, zero_rows ? zero_rows + panel * zero_row_words(k) : nullptr,
         k, out, ldo, widened ? widened + (panel - panel_begin) * k * nr : nullptr, a_zero_steps);
      if (width != nr) {
        for (size_t i = 0; i < rows; ++i) std::memcpy(c + (r + i) * ldc + j0, tile + i * nr, width * sizeof(float));
      }
    }
  }
}

// The clamped variants over rows [row_begin, row_end) x panels [panel_begin, panel_end) of
// 32-bit panels of panel_columns (0: panel_width()), entries stored minus b_fold.
void clamped_tiles(GemmVariant variant, const uint32_t* a, const float* a_sign, const uint32_t* panels, size_t k,
                   size_t n, size_t row_begin, size_t row_end, size_t panel_begin, size_t panel_end, float* c,
                   size_t ldc, size_t panel_columns, uint32_t b_min, uint32_t b_fold) {
  const size_t nr = panel_columns ? panel_columns : panel_width();
  const bool narrow = nr != panel_width() && nr == narrow_panel_width();
  const size_t mr = clamped_tile_rows();
  alignas(64) float tile[4 * 64];
  for (size_t r = row_begin; r < row_end; r += mr) {
    const size_t rows = std::min(mr, row_end - r);
    const ClampedTileFn fn = select_clamped_tile(variant, rows, narrow);
    for (size_t panel = panel_begin; panel < panel_end; ++panel) {
      const size_t j0 = panel * nr, width = std::min(nr, n - j0);
      // Full panels go straight to C; the last, narrower one through a tile buffer.
      float* out = width == nr ? c + r * ldc + j0 : tile;
      fn(a + r * k, a_sign + r * k, k, panels + panel * k * nr, b_min, b_fold, k, out, width == nr ? ldc : nr);
      if (width != nr) {
        for (size_t i = 0; i < rows; ++i) std::memcpy(c + (r + i) * ldc + j0, tile + i * nr, width * sizeof(float));
      }
    }
  }
}

// A 24-wide 16-bit panel (k rows) widened to the 32-bit compact panel it stands for.
__attribute__((target("avx2"))) void widen_panel_avx2(const uint16_t* half, size_t k, uint32_t* wide) {
  for (size_t i = 0; i < k * 24; i += 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wide + i), load_b8(half + i));
  }
}

// The same for a 64-wide panel (AVX-512): rows unpacked as the tiles unpack them.
__attribute__((target("avx512f,avx512bw"))) void widen_panel_avx512(const uint16_t* half, size_t k, uint32_t* wide) {
  for (size_t p = 0; p < k; ++p) {
    __m512i b[4];
    load_row<4>(half + p * 64, b);
    for (int v = 0; v < 4; ++v) _mm512_storeu_si512(wide + p * 64 + 16 * v, b[v]);
  }
}

// This thread's buffer for one widened panel (at least `entries` 32-bit entries), 64-byte
// aligned, so that no vector load of it straddles two cache lines.
uint32_t* widened_panel_buffer(size_t entries) {
  struct Buffer {
    std::unique_ptr<uint32_t[], decltype(&std::free)> data{nullptr, &std::free};
    size_t size = 0;
  };
  thread_local Buffer wide;
  if (wide.size < entries) {
    const size_t bytes = (entries * sizeof(uint32_t) + 63) / 64 * 64;
    wide.data.reset(static_cast<uint32_t*>(std::aligned_alloc(64, bytes)));
    if (!wide.data) throw std::bad_alloc();
    wide.size = entries;
  }
  return wide.data.get();
}

// 16-bit panels against products that may underflow or overflow: each panel widened (a
// pass of its own: these products cost several ops each anyway) and handed to the clamped tiles as
// panel 0 of a one-panel matrix whose columns start at j0. Same sums as from 32-bit panels.
void clamped_tiles_widened(GemmVariant variant, const uint32_t* a, const float* a_sign, const uint16_t* panels,
                           size_t k, size_t n, size_t row_begin, size_t row_end, size_t panel_begin,
                           size_t panel_end, float* c, size_t ldc, uint32_t b_min) {
  const size_t nr = panel_width();
  uint32_t* wide = widened_panel_buffer(k * nr);
  for (size_t panel = panel_begin; panel < panel_end; ++panel) {
    const uint16_t* half = panels + panel * k * nr;
    if (nr == 64) {
      widen_panel_avx512(half, k, wide);
    } else {
      widen_panel_avx2(half, k, wide);
    }
    const size_t j0 = panel * nr;
    clamped_tiles(variant, a, a_sign, wide, k, std::min(n - j0, nr), row_begin, row_end, 0, 1, c + j0, ldc, nr, b_min,
                  0);
  }
}

// 16-bit panels against more rows than one tile holds: each panel is widened once into a
// per-thread 32-bit buffer (in cache: K x nr x 4 bytes) that every other tile of rows
// then reads, so that the unpacking is paid once per panel, not once per tile. Same sums.
void gemm_tiles_widened(GemmVariant variant, const uint32_t* a, const float* a_mask, const uint16_t* panels,
                        const uint64_t* zero_rows, size_t k, size_t n, size_t row_begin, size_t row_end,
                        size_t panel_begin, size_t panel_end, float* c, size_t ldc, const uint64_t* a_zero_bits) {
  const size_t nr = panel_width();
  uint32_t* wide = widened_panel_buffer(k * nr);
  for (size_t panel = panel_begin; panel < panel_end; ++panel) {
    // AVX-512: the first tile of rows reads the 16-bit panel and widens it as it goes
    // (its stores hidden under the adds; a separate widening pass over a 576-row panel
    // took 8% of a 48 x 576 x 1536 product); AVX2: a widening pass.
    size_t rest = row_begin;
    if (nr == 64) {
      rest = row_begin + tile_rows();
      gemm_tiles<ZerosOfB::kTested>(variant, a, a_mask, panels, nullptr, zero_rows, k, n, row_begin, rest, panel,
                                    panel + 1, c, ldc, 0, wide, a_zero_bits);
    } else {
      widen_panel_avx2(panels + panel * k * nr, k, wide);
    }
    // The widened panel is panel 0 of a one-panel matrix whose columns start at j0.
    const size_t j0 = panel * nr;
    gemm_tiles<ZerosOfB::kTested>(variant, a, a_mask, wide, nullptr,
                                  zero_rows ? zero_rows + panel * zero_row_words(k) : nullptr, k,
                                  std::min(n - j0, nr), rest, row_end, 0, 1, c + j0, ldc, 0, nullptr, a_zero_bits);
  }
}

// One k step of tile_offsets_avx512; kChecked: some row has a zero A entry at p, and
// skips its adds.
template <int MR, int NV, bool kTestB, bool kChecked>
__attribute__((target("avx512f"), always_inline)) inline void offsets_step(
    __m512 (&acc)[MR][NV], const uint32_t* a, const uint64_t* a_zero, size_t lda, size_t words, const uint32_t* b,
    const ptrdiff_t* offsets, size_t p, __mmask16 tail) {
  const __m512i exponent = _mm512_set1_epi32(static_cast<int>(kInfBits));
  const uint32_t* bp = b + offsets[p];
  __m512i bv[NV];
  __mmask16 live[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    bv[v] = v == NV - 1 ? _mm512_maskz_loadu_epi32(tail, bp + 16 * v) : _mm512_loadu_si512(bp + 16 * v);
    live[v] = kTestB ? _mm512_test_epi32_mask(bv[v], exponent) : __mmask16(0xFFFF);
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    if (kChecked && ((a_zero[i * words + p / 64] >> (p % 64)) & 1u)) continue;
    const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 x = _mm512_castsi512_ps(_mm512_add_epi32(av, bv[v]));
      acc[i][v] = kTestB ? _mm512_mask_add_ps(acc[i][v], live[v], acc[i][v], x) : _mm512_add_ps(acc[i][v], x);
    }
  }
}

// MR x (16 * NV) tile with B rows read at b + offsets[p]; `tail` marks the valid lanes
// of the last vector (loads and stores of the others are masked: nothing outside is
// touched). kTestB: lanes whose B entry has a zero exponent (zero, subnormal) skip the add.
// kMaskA: bit p of a_zero[i * words + p / 64] marks a zero A entry, whose adds row i
// skips; such entries are rare, so each block of 64 k first checks whether any row of the
// tile has one, and only then tests row by row.
template <int MR, int NV, bool kMaskA, bool kTestB>
__attribute__((target("avx512f"))) void tile_offsets_avx512(const uint32_t* a, const uint64_t* a_zero, size_t lda,
                                                            const uint32_t* b, const ptrdiff_t* offsets, size_t k,
                                                            __mmask16 tail, const float* bias, float* out,
                                                            size_t ldo) {
  __m512 acc[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  const size_t words = (lda + 63) / 64;
  // (Direct calls, not lambdas: a lambda would not have the target's instruction set.)
  if (!kMaskA) {
    for (size_t p = 0; p < k; ++p) offsets_step<MR, NV, kTestB, false>(acc, a, a_zero, lda, words, b, offsets, p, tail);
  } else {
    for (size_t p0 = 0; p0 < k; p0 += 64) {
      uint64_t any = 0;  // bit p - p0: some row of the tile has a zero A entry at p
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) any |= a_zero[i * words + p0 / 64];
      size_t p = p0;
      for (; any != 0; any &= any - 1) {  // the rare steps with a zero A entry, in order
        const size_t exception = p0 + static_cast<size_t>(__builtin_ctzll(any));
        for (; p < exception; ++p) offsets_step<MR, NV, kTestB, false>(acc, a, a_zero, lda, words, b, offsets, p, tail);
        offsets_step<MR, NV, kTestB, true>(acc, a, a_zero, lda, words, b, offsets, p++, tail);
      }
      for (const size_t p1 = std::min(k, p0 + 64); p < p1; ++p) {
        offsets_step<MR, NV, kTestB, false>(acc, a, a_zero, lda, words, b, offsets, p, tail);
      }
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    if (bias) {  // the sum, then its row's bias (one float add, as after the product)
      const __m512 row_bias = _mm512_set1_ps(bias[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_add_ps(acc[i][v], row_bias);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(out + i * ldo + 16 * v, acc[i][v]);
    _mm512_mask_storeu_ps(out + i * ldo + 16 * (NV - 1), tail, acc[i][NV - 1]);
  }
}

using OffsetsTileFn = void (*)(const uint32_t*, const uint64_t*, size_t, const uint32_t*, const ptrdiff_t*, size_t,
                               __mmask16, const float*, float*, size_t);

template <int MR, bool kMaskA, bool kTestB>
OffsetsTileFn offsets_tile_nv(size_t vectors) {
  switch (vectors) {
    case 1: return tile_offsets_avx512<MR, 1, kMaskA, kTestB>;
    case 2: return tile_offsets_avx512<MR, 2, kMaskA, kTestB>;
    case 3: return tile_offsets_avx512<MR, 3, kMaskA, kTestB>;
    default: return tile_offsets_avx512<MR, 4, kMaskA, kTestB>;
  }
}

template <bool kMaskA, bool kTestB>
OffsetsTileFn offsets_tile(size_t rows, size_t vectors) {
  switch (rows) {
    case 1: return offsets_tile_nv<1, kMaskA, kTestB>(vectors);
    case 2: return offsets_tile_nv<2, kMaskA, kTestB>(vectors);
    case 3: return offsets_tile_nv<3, kMaskA, kTestB>(vectors);
    case 4: return offsets_tile_nv<4, kMaskA, kTestB>(vectors);
    case 5: return offsets_tile_nv<5, kMaskA, kTestB>(vectors);
    default: return offsets_tile_nv<6, kMaskA, kTestB>(vectors);
  }
}

OffsetsTileFn select_offsets_tile(GemmVariant variant, size_t rows, size_t vectors) {
  switch (variant) {
    case GemmVariant::kAddMaskedA: return offsets_tile<true, false>(rows, vectors);
    case GemmVariant::kAddMaskedB: return offsets_tile<false, true>(rows, vectors);
    case GemmVariant::kAddMaskedAB: return offsets_tile<true, true>(rows, vectors);
    default: return offsets_tile<false, false>(rows, vectors);
  }
}

#endif  // LMUL_HAVE_X86_SIMD

void lmul_gemm_fast(GemmVariant variant, const uint32_t* a, const float* a_mask, const uint32_t* panels,
                    const float* b_masks, size_t k, size_t n, size_t row_begin, size_t row_end, size_t panel_begin,
                    size_t panel_end, float* c, size_t ldc, size_t panel_columns, uint32_t b_min_nonzero,
                    uint32_t b_fold, const uint64_t* a_zero_bits) {
#if LMUL_HAVE_X86_SIMD
  if (is_clamped(variant)) {
    clamped_tiles(variant, a, a_mask, panels, k, n, row_begin, row_end, panel_begin, panel_end, c, ldc, panel_columns,
                  b_min_nonzero, b_fold);
    return;
  }
  gemm_tiles<ZerosOfB::kFloatMask>(variant, a, a_mask, panels, b_masks, nullptr, k, n, row_begin, row_end,
                                   panel_begin, panel_end, c, ldc, panel_columns, nullptr, a_zero_bits);
#else
  (void)variant, (void)a, (void)a_mask, (void)panels, (void)b_masks, (void)k, (void)n, (void)row_begin, (void)row_end;
  (void)panel_begin, (void)panel_end, (void)c, (void)ldc, (void)panel_columns, (void)b_min_nonzero, (void)b_fold;
  (void)a_zero_bits;
#endif
}

void lmul_gemm_panels(GemmVariant variant, const uint32_t* a, const float* a_mask, PanelsView panels, size_t k,
                      size_t n, size_t row_begin, size_t row_end, size_t panel_begin, size_t panel_end, float* c,
                      size_t ldc, const uint64_t* a_zero_bits) {
#if LMUL_HAVE_X86_SIMD
  // (the clamped kernels tell B's zeros by min_nonzero: a view without it would add them)
  assert(!is_clamped(variant) || panels.min_nonzero >= kSmallestNormalBits);
  if (is_clamped(variant) && panels.half) {
    clamped_tiles_widened(variant, a, a_mask, panels.half, k, n, row_begin, row_end, panel_begin, panel_end, c, ldc,
                          panels.min_nonzero);
  } else if (is_clamped(variant)) {
    clamped_tiles(variant, a, a_mask, panels.wide, k, n, row_begin, row_end, panel_begin, panel_end, c, ldc, 0,
                  panels.min_nonzero, 0);
  } else if (panels.half && row_end - row_begin > tile_rows()) {
    gemm_tiles_widened(variant, a, a_mask, panels.half, panels.zero_rows, k, n, row_begin, row_end, panel_begin,
                       panel_end, c, ldc, a_zero_bits);
  } else if (panels.half) {
    gemm_tiles<ZerosOfB::kTested>(variant, a, a_mask, panels.half, nullptr, panels.zero_rows, k, n, row_begin,
                                  row_end, panel_begin, panel_end, c, ldc, 0, nullptr, a_zero_bits);
  } else {
    gemm_tiles<ZerosOfB::kTested>(variant, a, a_mask, panels.wide, nullptr, panels.zero_rows, k, n, row_begin,
                                  row_end, panel_begin, panel_end, c, ldc, 0, nullptr, a_zero_bits);
  }
#else
  (void)variant, (void)a, (void)a_mask, (void)panels, (void)k, (void)n, (void)row_begin, (void)row_end;
  (void)panel_begin, (void)panel_end, (void)c, (void)ldc, (void)a_zero_bits;
#endif
}

#if LMUL_HAVE_X86_SIMD
namespace {
// zero_bits_of_rows 16 entries at a time: one compare into a mask register each.
__attribute__((target("avx512f"))) void zero_bits_of_rows_avx512(const uint32_t* a, size_t rows, size_t k,
                                                                 uint64_t* bits) {
  const size_t words = zero_row_words(k);
  const __m512i magnitude = _mm512_set1_epi32(static_cast<int>(kMagnitudeMask));
  const __m512i smallest = _mm512_set1_epi32(static_cast<int>(kSmallestNormalBits));
  for (size_t r = 0; r < rows; ++r) {
    const uint32_t* row = a + r * k;
    uint64_t* out = bits + r * words;
    std::fill(out, out + words, uint64_t{0});
    for (size_t p = 0; p < k; p += 16) {
      const __mmask16 lanes = k - p >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - p)) - 1u);
      const __m512i x = _mm512_and_si512(_mm512_maskz_loadu_epi32(lanes, row + p), magnitude);
      const __mmask16 zero = _mm512_mask_cmplt_epu32_mask(lanes, x, smallest);
      out[p / 64] |= uint64_t{zero} << (p % 64);
    }
  }
}
}  // namespace
#endif

void zero_bits_of_rows(const uint32_t* a, size_t rows, size_t k, uint64_t* bits) {
#if LMUL_HAVE_X86_SIMD
  if (simd_lanes() == 16) {
    zero_bits_of_rows_avx512(a, rows, k, bits);
    return;
  }
#endif
  const size_t words = zero_row_words(k);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t w = 0; w < words; ++w) bits[r * words + w] = 0;
    for (size_t p = 0; p < k; ++p) {
      const uint64_t zero = (a[r * k + p] & kMagnitudeMask) < kSmallestNormalBits;
      bits[r * words + p / 64] |= zero << (p % 64);
    }
  }
}

void zero_row_bits(PanelsView panels, size_t k, size_t n, size_t nr, size_t panel_begin, size_t panel_end,
                   uint64_t* bits) {
  const size_t words = zero_row_words(k);
  for (size_t panel = panel_begin; panel < panel_end; ++panel) {
    const size_t width = std::min(nr, n - panel * nr);
    uint64_t* out = bits + panel * words;
    std::fill(out, out + words, uint64_t{0});
    for (size_t p = 0; p < k; ++p) {
      const size_t row = (panel * k + p) * nr;
      bool zero = false;
      // (padding columns hold 0 too, but their sums are never stored)
      for (size_t j = 0; j < width; ++j) {
        const size_t slot = panels.half ? half_panel_slot(j, nr) : j;
        zero |= panels.half ? panels.half[row + slot] == 0 : panels.wide[row + slot] == 0;
      }
      if (zero) out[p / 64] |= uint64_t{1} << (p % 64);
    }
  }
}

bool offsets_gemm_available() { return simd_lanes() == 16; }

void lmul_gemm_offsets(GemmVariant variant, const uint32_t* a, const uint64_t* a_zero, size_t lda, const uint32_t* b,
                       const ptrdiff_t* b_offsets, size_t k, size_t rows, size_t n, const float* bias, float* c,
                       size_t ldc) {
#if LMUL_HAVE_X86_SIMD
  auto tile = [&](size_t r, size_t j0) {
    const size_t width = std::min<size_t>(64, n - j0), vectors = (width + 15) / 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (width - 16 * (vectors - 1))) - 1u);
    const size_t tile_rows = std::min<size_t>(6, rows - r);
    select_offsets_tile(variant, tile_rows, vectors)(a + r * lda, a_zero ? a_zero + r * ((lda + 63) / 64) : nullptr,
                                                     lda, b + j0,
                                                     b_offsets, k, tail, bias ? bias + r : nullptr, c + r * ldc + j0,
                                                     ldc);
  };
  if (k * n <= 4096) {
    // All of B fits in the L1 cache (short sums): row tiles outer, so that C is written a
    // few rows at a time, in long stretches.
    for (size_t r = 0; r < rows; r += 6)
      for (size_t j0 = 0; j0 < n; j0 += 64) tile(r, j0);
  } else {
    // Column blocks of 64 outer, row tiles inner: each block of B is read from the cache
    // by every row tile.
    for (size_t j0 = 0; j0 < n; j0 += 64)
      for (size_t r = 0; r < rows; r += 6) tile(r, j0);
  }
#else
  (void)variant, (void)a, (void)a_zero, (void)lda, (void)b, (void)b_offsets, (void)k, (void)rows, (void)n;
  (void)bias, (void)c, (void)ldc;
#endif
}

}  // namespace lmul
