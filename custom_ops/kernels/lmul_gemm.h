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
// Using the kernels (lmul_matmul.cc does this for LMulMatMul / LMulGemm):
//   1. round both operands to m bits and scan them: OperandRange::scan, or scan_rounded
//      straight from a tensor;
//   2. choose_variant(a_range, b_range, lmul_bias(m), panel_width() > 0); if it is not
//      is_one_add, use lmul_matmul_rows / lmul_matmul_rows_normal (lmul_kernels.h);
//   3. pack B into panels of panel_width() columns with pack_panels_rounded, zeros
//      replaced by zero_stand_in_b(b_range) (masks needed when b_range.has_zero);
//   4. prepare A in place with prepare_a (and its masks when masks_a(variant));
//   5. lmul_gemm_fast over any split of rows and panels (calls never share output).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lmul_kernels.h"

namespace lmul {

// Magnitude statistics of a packed, rounded operand.
struct OperandRange {
  uint32_t min_nonzero = 0xFFFFFFFFu;  // smallest magnitude among normal values
  uint32_t max_magnitude = 0;          // largest magnitude among finite values
  bool has_zero = false;               // zero or subnormal (SPEC: treated as zero)
  bool has_special = false;            // infinity or NaN

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
};

// The variants of the register-blocked one-add kernels (lmul_gemm_fast).
constexpr bool is_one_add(GemmVariant v) { return v != GemmVariant::kGeneral && v != GemmVariant::kNormal; }
constexpr bool masks_a(GemmVariant v) { return v == GemmVariant::kAddMaskedA || v == GemmVariant::kAddMaskedAB; }
constexpr bool masks_b(GemmVariant v) { return v == GemmVariant::kAddMaskedB || v == GemmVariant::kAddMaskedAB; }

// The stand-ins of zero entries (see above), from B's range.
uint32_t zero_stand_in_a(const OperandRange& b);
uint32_t zero_stand_in_b(const OperandRange& b);

const char* variant_name(GemmVariant variant);

// The fastest variant that is exact for these operands. `simd` says whether the one-add
// kernels exist (panel_width() > 0).
GemmVariant choose_variant(const OperandRange& a, const OperandRange& b, uint32_t bias, bool simd = true);

// SIMD width the fast kernels use on this CPU: 16 (AVX-512F), 8 (AVX2) or 0 (none).
// LMUL_SIMD=avx2|none in the environment caps it (tests use it to force each path).
int simd_lanes();

// Column-panel width of packed B for the current SIMD width (0 when there is none).
size_t panel_width();

// Rewrites packed rounded A in place for `variant`: a -> a - bias, and for zero entries
// the stand-in; mask (one float per entry, null unless masks_a) gets 1 or 0.
void prepare_a(uint32_t* a, float* mask, size_t count, GemmVariant variant, uint32_t bias, uint32_t zero_stand_in);

// Column width of narrow panels, for B of at most that many columns (attention's p.V
// with 32-wide heads): 32 with AVX-512, else 0 (none).
size_t narrow_panel_width();

// Rows [row_begin, row_end) x panels [panel_begin, panel_end) of C (row stride ldc, N
// columns) = A' (+) B for a fast variant; A' is prepared A (row stride k). Panels are
// panel_columns wide: panel_width() (0 says the same) or narrow_panel_width().
void lmul_gemm_fast(GemmVariant variant, const uint32_t* a, const float* a_mask, const uint32_t* panels,
                    const float* b_masks, size_t k, size_t n, size_t row_begin, size_t row_end, size_t panel_begin,
                    size_t panel_end, float* c, size_t ldc, size_t panel_columns = 0);

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
      uint32_t* row = out + p * nr;
      for (size_t j = 0; j < width; ++j) {
        row[j] = round_mantissa_bits(float_bits(S::load(src[p * row_stride + (j0 + j) * col_stride])), mantissa_bits);
      }
      for (size_t j = width; j < nr; ++j) row[j] = 0u;
      if (out_mask) {
        float* mask_row = out_mask + p * nr;
        for (size_t j = 0; j < nr; ++j) {
          const bool zero = j >= width || (row[j] & kMagnitudeMask) < kSmallestNormalBits;
          mask_row[j] = zero ? 0.0f : 1.0f;
          row[j] = (zero && j < width) ? zero_stand_in : row[j];
        }
      }
    }
  }
}

}  // namespace lmul
