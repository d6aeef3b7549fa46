// Fast L-Mul matrix products for operands whose products cannot hit a special case.
//
// SPEC 1, step 3 computes |a| + |b| - bias and reattaches the sign. When no operand is
// zero, subnormal, infinite or NaN, and no product can underflow or overflow, the sum
// stays inside [2^23, 0x7F800000), so the plain 32-bit sum of the signed bit patterns
//     (a - bias) + b   (mod 2^32)
// already carries the right sign (the sign bits add without a carry out of bit 30) and
// *is* the SPEC product, bit for bit. A pre-scan of both operands (smallest and largest
// magnitude, any zero or special value) decides when that holds; then an inner loop is
// one integer add and one float add per product, register-blocked like an sgemm.
//
// Zeros (and subnormals) in A, in B or in both are handled by 0/1 multipliers (a float
// multiply used as a select, not to compute a product): the products of a zero become
// +-0, as SPEC says, and add nothing. A zero entry is replaced by a stand-in chosen so
// that its integer sum with any operand it meets is a finite float, never Inf or NaN:
// for A, 2^23 - min|b|; for B, min|b| - 2^23 (both depend on B only, so constant weights
// are prepared once).
//
// Every variant sums each output element over k = 0..K-1 in order, in float32, exactly
// like the portable loop in lmul_kernels.cc, so all variants give identical bits.
//
// When products may underflow or overflow (operands spanning the whole exponent range),
// possibly with zeros, the clamped kernels (kClamped, kClampedMaskedB) still work on the
// panels, at a few integer operations per product instead of one add. With A prepared as
// a'' = |a| + 2^30 - bias and s_a = +-1 (for a zero: a stand-in and 0),
//     u = a'' + |b|                    in [0, 2^32): no wrap-around for normal operands
//     r = min(u, 2^30 + 0x7F800000) - ((b & 2^31) | 2^30)
// is SPEC 1's magnitude |a| + |b| - bias, saturated to infinity, with b's sign; the
// product is skipped (adds +-0) when u < 2^30 + 2^23 (underflow: SPEC's signed zero) or
// b is zero (|b| below B's smallest non-zero magnitude: zeros and their stand-ins; a
// k-mask / a lane mask), and acc += s_a * r adds it with a's sign (a fused
// multiply-add by +-1 is exact: the same rounding as the plain add). A zero in A adds
// 0 * r = +-0, its stand-in keeping r finite. Where the pre-scan shows that products cannot
// underflow (or overflow), the compare (or the clamp) is left out. The accumulators start at +0 and a float sum never turns +0
// into -0 by adding +-0, so skipping a product and adding its signed zero give the same
// bits. Only infinities and NaN (SPEC 1, step 2) still need the portable loop.
//
// Using the kernels (lmul_matmul.cc does this for LMulMatMul / LMulGemm):
//   1. round both operands to m bits and scan them: OperandRange::scan, or scan_rounded
//      straight from a tensor;
//   2. choose_variant(a_range, b_range, lmul_bias(m), panel_width() > 0); if it is not
//      is_one_add, use lmul_matmul_rows / lmul_matmul_rows_normal (lmul_kernels.h);
//   3. pack B into panels of panel_width() columns with pack_panels_rounded, zeros
//      replaced by zero_stand_in_b(b_range) (masks needed when b_range.has_zero); a
//      per-call B (lmul_matmul.cc) is rounded and scanned panel by panel first, then
//      given its stand-ins and masks by mask_panel_zeros;
//   4. prepare A in place with prepare_a (and its masks when masks_a(variant));
//   5. lmul_gemm_fast over any split of rows and panels (calls never share output).
//
// Compact panels (constant weights, lmul_matmul.h) replace steps 3 and 5: B packed by
// pack_panels_compact, zero entries stored as 0 and recognised by the kernels themselves
// (a lane test, not a float mask per entry), and, when every rounded value of B is a
// bfloat16 bit pattern (m <= 7: the low 16 bits are zero), only the high 16 bits of each
// entry, widened in registers; then lmul_gemm_panels. Same sums, same bits.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lmul_kernels.h"

namespace lmul {

// The clamped kernels' constants (above): A is prepared as |a| + kClampOffset - bias, so
// that u = a'' + |b| = |a| + |b| - bias + kClampOffset never wraps around.
constexpr uint32_t kClampOffset = 0x40000000u;
constexpr uint32_t kClampLow = kClampOffset + kSmallestNormalBits;  // u below: underflow
constexpr uint32_t kClampHigh = kClampOffset + kInfBits;            // u at or above: overflow

// Magnitude statistics of a packed, rounded operand.
struct OperandRange {
  uint32_t min_nonzero = 0xFFFFFFFFu;  // smallest magnitude among normal values
  uint32_t max_magnitude = 0;          // largest magnitude among finite values
  bool has_zero = false;               // zero or subnormal (SPEC: treated as zero)
  bool has_special = false;            // infinity or NaN
  uint64_t zeros = 0;                  // how many scanned entries are zero or subnormal
                                       // (a range given has_zero by hand may say 0)

  void scan(const uint32_t* bits, size_t count);
  void merge(const OperandRange& other);
};

enum class GemmVariant {
  kGeneral,      // the portable loop with every special case (lmul_matmul_rows)
  kAdd,          // no special case can occur: product = (a - bias) + b
  kAddMaskedA,   // as kAdd, but A has zeros: their products are masked to +-0
  kAddMaskedB,   // B has zeros
  kAddMaskedAB,  // both have zeros
  kNormal,       // all operands are normal numbers, but products may under/overflow:
                 // the portable loop with only those checks (lmul_matmul_rows_normal)
  kClamped,         // no infinity or NaN; products may underflow and overflow, A may have
                    // zeros: the clamped kernels (above)
  kClampedMaskedB,  // as kClamped, and B has zeros
  kClampedHigh,     // as kClamped, but no product can underflow (no underflow check)
  kClampedHighMaskedB,
  kClampedLow,      // as kClamped, but no product can overflow (no clamp to infinity)
  kClampedLowMaskedB,
};

// The variants of the register-blocked one-add kernels (lmul_gemm_fast).
constexpr bool is_clamped(GemmVariant v) {
  return v == GemmVariant::kClamped || v == GemmVariant::kClampedMaskedB || v == GemmVariant::kClampedHigh ||
         v == GemmVariant::kClampedHighMaskedB || v == GemmVariant::kClampedLow ||
         v == GemmVariant::kClampedLowMaskedB;
}
constexpr bool is_one_add(GemmVariant v) {
  return v != GemmVariant::kGeneral && v != GemmVariant::kNormal && !is_clamped(v);
}
// The variants lmul_gemm_fast computes from packed panels.
constexpr bool uses_panels(GemmVariant v) { return is_one_add(v) || is_clamped(v); }
// A mask (or, clamped, a sign) per A entry; B's 0/1 masks (the clamped kernels tell B's
// zeros by their magnitude instead).
constexpr bool masks_a(GemmVariant v) {
  return v == GemmVariant::kAddMaskedA || v == GemmVariant::kAddMaskedAB || is_clamped(v);
}
constexpr bool masks_b(GemmVariant v) { return v == GemmVariant::kAddMaskedB || v == GemmVariant::kAddMaskedAB; }

// The stand-ins of zero entries (see above), from B's range; the variant's for A (the
// clamped kernels use their own).
uint32_t zero_stand_in_a(const OperandRange& b);
uint32_t zero_stand_in_a(const OperandRange& b, GemmVariant variant);
uint32_t zero_stand_in_b(const OperandRange& b);

const char* variant_name(GemmVariant variant);

// The fastest variant that is exact for these operands. `simd` says whether the one-add
// kernels exist (panel_width() > 0); `clamped` whether the caller can run the clamped
// ones (lmul_gemm_fast with A prepared by prepare_a) where no one-add kernel is exact.
GemmVariant choose_variant(const OperandRange& a, const OperandRange& b, uint32_t bias, bool simd = true,
                           bool clamped = false);

// SIMD width the fast kernels use on this CPU: 16 (AVX-512F and BW), 8 (AVX2) or 0 (none).
// LMUL_SIMD=avx2|none in the environment caps it (tests use it to force each path).
int simd_lanes();

// Column-panel width of packed B for the current SIMD width (0 when there is none).
size_t panel_width();

// Gives the zero entries of a packed, rounded panel (k rows of nr entries, the first
// `width` of them real columns, every entry stored minus `fold`) the stand-in `stand_in`
// (also minus `fold`) and mask 0, the others mask 1; padding columns get mask 0.
void mask_panel_zeros(uint32_t* panel, float* masks, size_t k, size_t nr, size_t width, uint32_t stand_in,
                      uint32_t fold);

// Rewrites packed rounded A in place for `variant`: a -> a - bias, and for zero entries
// the stand-in; mask (one float per entry, null unless masks_a) gets 1 or 0. Clamped
// variants: a -> |a| + 2^30 - bias and mask -> sign(a) * 1.0 (for a zero: the stand-in and 0).
void prepare_a(uint32_t* a, float* mask, size_t count, GemmVariant variant, uint32_t bias, uint32_t zero_stand_in);

// Column width of narrow panels, for B of at most that many columns (attention's p.V
// with 32-wide heads): 32 with AVX-512, else 0 (none).
size_t narrow_panel_width();

// Rows [row_begin, row_end) x panels [panel_begin, panel_end) of C (row stride ldc, N
// columns) = A' (+) B for a fast variant; A' is prepared A (row stride k). Panels are
// panel_columns wide: panel_width() (0 says the same) or narrow_panel_width(). The
// clamped variants need no B masks: b_min_nonzero (B's OperandRange::min_nonzero) tells
// zero entries and their stand-ins (all below it) from the others; b_fold is the constant
// subtracted from every panel entry when B was packed with the bias folded in (0 if not).
// a_zero_bits (kAddMaskedA with AVX-512 only; optional): A's zeros as zero_bits_of_rows
// from row 0 of `a`, in place of a_mask (then null): the tiles run the plain step between
// the k steps where one of their rows has a zero (for A with few zeros: GELU outputs).
void lmul_gemm_fast(GemmVariant variant, const uint32_t* a, const float* a_mask, const uint32_t* panels,
                    const float* b_masks, size_t k, size_t n, size_t row_begin, size_t row_end, size_t panel_begin,
                    size_t panel_end, float* c, size_t ldc, size_t panel_columns = 0, uint32_t b_min_nonzero = 0,
                    uint32_t b_fold = 0, const uint64_t* a_zero_bits = nullptr);

// The widest mantissa whose rounded float32 values are all bfloat16 bit patterns (the low
// 16 bits zero), so that panels of B can hold 16 bits per entry.
constexpr int kHalfPanelMantissaBits = 7;

// Compact panels of one B matrix (see above): `wide` (32-bit entries) or `half` (the high
// 16 bits of each entry) is set. Zero and subnormal entries and the padding hold 0.
struct PanelsView {
  const uint32_t* wide = nullptr;
  const uint16_t* half = nullptr;
  // Optional (zero_row_bits): which rows of each panel hold a zero of B. The kernels test
  // B's lanes for zeros only in those rows; null: in every row.
  const uint64_t* zero_rows = nullptr;
  // B's smallest non-zero magnitude (the clamped kernels tell B's zeros by it).
  uint32_t min_nonzero = 0;
};

// Words of zero_row_bits per panel of k rows.
constexpr size_t zero_row_words(size_t k) { return (k + 63) / 64; }

// Where each of `rows` rows of A (k entries, row stride k, rounded, not yet prepared) has
// a zero or subnormal entry: bit p % 64 of bits[r * zero_row_words(k) + p / 64] for entry
// p of row r.
void zero_bits_of_rows(const uint32_t* a, size_t rows, size_t k, uint64_t* bits);

// For panels [panel_begin, panel_end) of compact panels (nr wide, of a K x N matrix): bit
// p % 64 of bits[panel * zero_row_words(k) + p / 64] is set when row p of the panel has a
// zero entry in one of its n columns (padding columns do not count: their sums are never
// stored). Weights quantised to few levels (SmolLM2's Q4_1 checkpoint) have a zero in
// about 2% of their panel rows.
void zero_row_bits(PanelsView panels, size_t k, size_t n, size_t nr, size_t panel_begin, size_t panel_end,
                   uint64_t* bits);

// Where 16-bit panels of width nr store column j (< nr) of a row: 64-wide (AVX-512)
// panels hold each 32 columns in the order of the kernels' word unpacking (columns
// 0-3, 16-19, 4-7, 20-23, ... per 128-bit lane); 24-wide (AVX2) ones in order.
constexpr size_t half_panel_slot(size_t j, size_t nr) {
  return nr != 64 ? j : (j / 32) * 32 + ((j % 16) / 4) * 8 + ((j % 32) / 16) * 4 + j % 4;
}

// lmul_gemm_fast on compact panels: any one-add variant (B's zeros are tested, not masked)
// or clamped one (16-bit panels widened one at a time; B's zeros told by min_nonzero).
void lmul_gemm_panels(GemmVariant variant, const uint32_t* a, const float* a_mask, PanelsView panels, size_t k,
                      size_t n, size_t row_begin, size_t row_end, size_t panel_begin, size_t panel_end, float* c,
                      size_t ldc, const uint64_t* a_zero_bits = nullptr);

// ---- B read in place (implicit GEMM), AVX-512 only ----
//
// C (rows x n, row stride ldc) = A' (+) B, where row p of B is the n entries starting at
// b + b_offsets[p] (a tap of a convolution read straight from its input plane, or rows of
// a matrix at any stride): nothing is packed. Zero B entries (zero or subnormal bits) add
// nothing: an AVX-512 lane mask from their exponent bits skips their adds, so B needs
// neither stand-ins nor masks (its zeros may hold any value's place). A' is a - bias; when
// masks_a(variant), bit p of a_zero[r * ((lda + 63) / 64) + p / 64] marks a zero entry
// A[r][p] (its value is not read), whose products row r skips. Reads only
// b[b_offsets[p] + j] and writes only C columns j < n. The same sums in the same order as
// lmul_gemm_fast; `bias` (rows floats, or null) is added to each row's finished sums
// before they are stored (sum + bias, the one float add a separate pass would make).
bool offsets_gemm_available();  // simd_lanes() == 16
void lmul_gemm_offsets(GemmVariant variant, const uint32_t* a, const uint64_t* a_zero, size_t lda, const uint32_t* b,
                       const ptrdiff_t* b_offsets, size_t k, size_t rows, size_t n, const float* bias, float* c,
                       size_t ldc);

}  // namespace lmul

// ---- Packing straight from the input tensor (any storage type, any strides) ----

namespace lmul {

// Range of the rounded values of rows [row_begin, row_end) of a strided rows x cols matrix.
template <class S>
void scan_rounded(const typename S::type* src, size_t row_begin, size_t row_end, size_t cols, size_t row_stride,
                  size_t col_stride, int mantissa_bits, OperandRange& range) {
  uint32_t row[256];
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t c0 = 0; c0 < cols; c0 += 256) {
      const size_t width = cols - c0 < 256 ? cols - c0 : 256;
      for (size_t c = 0; c < width; ++c) {
        row[c] = round_mantissa_bits(float_bits(S::load(src[r * row_stride + (c0 + c) * col_stride])), mantissa_bits);
      }
      range.scan(row, width);
    }
  }
}

// Row p of a panel: columns [j0, j0 + width) of a strided matrix rounded, then 0 up to nr.
template <class S>
void round_panel_row(const typename S::type* src, size_t p, size_t j0, size_t width, size_t nr, size_t row_stride,
                     size_t col_stride, int mantissa_bits, uint32_t* row) {
  for (size_t j = 0; j < width; ++j) {
    row[j] = round_mantissa_bits(float_bits(S::load(src[p * row_stride + (j0 + j) * col_stride])), mantissa_bits);
  }
  for (size_t j = width; j < nr; ++j) row[j] = 0u;
}

// Panels [panel_begin, panel_end) of a strided K x N matrix, rounded: panel q holds
// columns [q*nr, q*nr + nr) as K rows of nr entries. Zero entries become `zero_stand_in`;
// `masks` (same layout, may be null when B has no zeros) gets 1 or 0 per entry. Padding
// columns hold 0 with mask 0.
template <class S>
void pack_panels_rounded(const typename S::type* src, size_t k, size_t n, size_t row_stride, size_t col_stride,
                         int mantissa_bits, size_t nr, uint32_t zero_stand_in, size_t panel_begin, size_t panel_end,
                         uint32_t* panels, float* masks) {
  for (size_t panel = panel_begin; panel < panel_end; ++panel) {
    const size_t j0 = panel * nr, width = n - j0 < nr ? n - j0 : nr;
    uint32_t* out = panels + panel * k * nr;
    float* out_mask = masks ? masks + panel * k * nr : nullptr;
    for (size_t p = 0; p < k; ++p) {
      round_panel_row<S>(src, p, j0, width, nr, row_stride, col_stride, mantissa_bits, out + p * nr);
    }
    if (out_mask) mask_panel_zeros(out, out_mask, k, nr, width, zero_stand_in, 0);
  }
}

// Panels [panel_begin, panel_end) of a strided K x N matrix as compact panels (see
// PanelsView): rounded values, zero and subnormal ones as 0, padding 0. W = uint32_t keeps
// every bit; W = uint16_t keeps the high 16 bits (at half_panel_slot) and needs
// mantissa_bits <= kHalfPanelMantissaBits (then the low 16 bits are zero).
template <class S, class W>
void pack_panels_compact(const typename S::type* src, size_t k, size_t n, size_t row_stride, size_t col_stride,
                         int mantissa_bits, size_t nr, size_t panel_begin, size_t panel_end, W* panels) {
  constexpr unsigned kShift = sizeof(W) == 2 ? 16u : 0u;
  uint32_t row[64];  // nr <= 64
  for (size_t panel = panel_begin; panel < panel_end; ++panel) {
    const size_t j0 = panel * nr, width = n - j0 < nr ? n - j0 : nr;
    W* out = panels + panel * k * nr;
    for (size_t p = 0; p < k; ++p) {
      round_panel_row<S>(src, p, j0, width, nr, row_stride, col_stride, mantissa_bits, row);
      for (size_t j = 0; j < nr; ++j) {
        const bool zero = (row[j] & kMagnitudeMask) < kSmallestNormalBits;
        out[p * nr + (kShift ? half_panel_slot(j, nr) : j)] = static_cast<W>((zero ? 0u : row[j]) >> kShift);
      }
    }
  }
}

}  // namespace lmul
