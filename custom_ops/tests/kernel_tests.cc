// Stand-alone tests of the C++ arithmetic, without onnxruntime: SPEC worked values, the
// float16/bfloat16 conversions, every matmul variant against the portable loop, and whole
// products (packing, scheduling, the small-M kernel) against a scalar reference.
// Built by tests/test_cpp_kernels.py (or CMake with -DLMUL_BUILD_TESTS=ON); prints
// "N passed, M failed" and exits non-zero on a failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <atomic>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "lmul_arith.h"
#include "lmul_gemm.h"
#include "lmul_kernels.h"
#include "lmul_matmul.h"
#include "lmul_conv.h"
#include "lmul_small_m.h"
#include "shapes.h"

namespace {

int passed = 0, failed = 0;

void check(bool ok, const char* what, uint64_t detail = 0) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s (%llx)\n", what, static_cast<unsigned long long>(detail));
  }
}

void spec_worked_values() {
  struct Row {
    uint32_t a, b;
    int m;
    uint32_t expected;  // 0xFFFFFFFF = NaN
  };
  const Row rows[] = {
      {0x3FC00000, 0x3FC00000, 23, 0x40080000}, {0x40400000, 0xC0000000, 23, 0xC0C80000},
      {0x3DCCCCCD, 0x3E4CCCCD, 23, 0x3CA1999A}, {0x3F8CCCCD, 0x3F8CCCCD, 3, 0x3FB00000},
      {0x3F8CCCCD, 0x3F8CCCCD, 4, 0x3FB00000}, {0xC0E00000, 0x3E99999A, 7, 0xC0020000},
      {0x00000000, 0xC0A00000, 23, 0x80000000}, {0x0DA24260, 0x1E3CE508, 23, 0x00000000},
      {0x7F61B1E6, 0x40000000, 23, 0x7F800000}, {0x7F800000, 0x00000000, 23, 0xFFFFFFFF},
      {0x7F800000, 0xBF000000, 23, 0xFF800000}, {0x3F800001, 0x3F800000, 1, 0x3FC00000},
      {0x00000000, 0xFF7FFFFF, 4, 0x80000000}, {0x7F7FFFFF, 0x3F000000, 4, 0x7F080000},
      {0xFF7FFFFF, 0x3F800000, 4, 0xFF800000},
  };
  for (const Row& row : rows) {
    const float r = lmul::lmul_float(lmul::bits_float(row.a), lmul::bits_float(row.b), row.m);
    const bool ok = row.expected == 0xFFFFFFFFu ? std::isnan(r) : lmul::float_bits(r) == row.expected;
    check(ok, "SPEC worked value", (uint64_t{row.a} << 32) | row.b);
  }
  // SPEC 4: worked values with the offset attribute.
  struct OffsetRow {
    uint32_t a, b;
    int m;
    uint32_t offset, expected;
  };
  const OffsetRow offset_rows[] = {
      {0x3FC00000, 0x3FC00000, 23, 0, 0x40000000},
      {0x3FC00000, 0x3FC00000, 23, 0x100000, 0x40100000},
      {0x3F8CCCCD, 0x3F8CCCCD, 4, 0x80000, 0x3FA80000},
      {0x40400000, 0xC0000000, 23, 0x7FFFFF, 0xC13FFFFF},
  };
  for (const OffsetRow& row : offset_rows) {
    const float r = lmul::lmul_float(lmul::bits_float(row.a), lmul::bits_float(row.b), row.m,
                                     lmul::lmul_bias_for_offset(row.offset));
    check(lmul::float_bits(r) == row.expected, "SPEC 4 worked value", (uint64_t{row.a} << 32) | row.offset);
  }
  // Without the attribute, the paper's offset: the same bias as before.
  for (int m = 1; m <= 23; ++m) {
    check(lmul::lmul_bias_for_offset(lmul::paper_offset(m)) == lmul::lmul_bias(m), "paper offset", m);
  }
}

void conversions() {
  // Every float16 pattern widens exactly and narrows back to itself (NaNs stay NaN).
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = lmul::float16_to_float(static_cast<uint16_t>(h));
    const uint16_t back = lmul::float_to_float16(f);
    check(std::isnan(f) ? (back & 0x7C00u) == 0x7C00u && (back & 0x3FFu) : back == h, "float16 round trip", h);
  }
  check(lmul::float_to_float16(65520.0f) == 0x7C00, "65520 rounds to infinity");
  check(lmul::float_to_float16(65519.0f) == 0x7BFF, "65519 rounds to the largest half");
  check(lmul::float_to_float16(lmul::bits_float(0x33000000)) == 0, "2^-25 ties to zero");
  check(lmul::float_to_float16(lmul::bits_float(0x33000001)) == 1, "just above 2^-25 rounds up");
  check(lmul::float_to_bfloat16(lmul::bits_float(0x3F808000)) == 0x3F80, "bfloat16 tie to even");
  check(lmul::float_to_bfloat16(lmul::bits_float(0x3F818000)) == 0x3F82, "bfloat16 tie to even, odd");
}

// Every fast variant must equal the portable loop bit for bit on data that selects it.
size_t differing_bits(const std::vector<float>& got, const std::vector<float>& expected);

void matmul_variants() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t m = 13, k = 70, n = 150;
  std::uniform_int_distribution<uint32_t> any_offset(0u, lmul::kOffsetLimit - 1u);
  // zeros & 1: in A, & 2: in B; zeros & 4: sparse ones (a causal mask's columns of A
  // zero in every row of a tile, a zero in one row of a tile, and a zero of B in a few rows
  // of each panel: the kernels' steps without masks, skipped steps, zero_row_bits).
  for (int zeros = 0; zeros < 8; ++zeros) {
    if (zeros == 4) continue;
    for (int bits : {23, 4, 3}) {
      std::vector<uint32_t> a(m * k), b(k * n);
      for (auto& x : a) x = lmul::round_mantissa_bits(lmul::float_bits(normal(rng)), bits);
      for (auto& x : b) x = lmul::round_mantissa_bits(lmul::float_bits(normal(rng)), bits);
      const bool sparse = zeros & 4;
      for (size_t r = 0; r < m; ++r) {
        for (size_t p = 0; p < k; ++p) {
          const bool zero = sparse ? p % 7 == 0 || (p % 11 == 0 && r == p % m) : (r * k + p) % 3 == 0;
          if ((zeros & 1) && zero) a[r * k + p] = 0;
        }
      }
      for (size_t p = 0; p < k; ++p) {
        for (size_t j = 0; j < n; ++j) {
          const bool zero = sparse ? p % 9 == 0 && j % 64 == (p * 7) % 64 : (p * n + j) % 5 == 0;
          if ((zeros & 2) && zero) b[p * n + j] = 0x80000000u;  // -0
        }
      }
      // m = 3: a random offset (SPEC 4), including the extremes 0 and 2^23 - 1.
      const uint32_t offset = bits != 3 ? lmul::paper_offset(bits) : zeros == 0 ? 0u : zeros == 1 ? lmul::kOffsetLimit - 1u : any_offset(rng);
      const uint32_t bias = lmul::lmul_bias_for_offset(offset);
      std::vector<float> expected(m * n), got(m * n);
      lmul::lmul_matmul_rows(a.data(), b.data(), k, n, 0, m, bias, expected.data());
      lmul::OperandRange ar, br;
      ar.scan(a.data(), a.size());
      br.scan(b.data(), b.size());
      const lmul::GemmVariant variant = lmul::choose_variant(ar, br, bias);
      const lmul::GemmVariant wanted[] = {lmul::GemmVariant::kAdd, lmul::GemmVariant::kAddMaskedA,
                                          lmul::GemmVariant::kAddMaskedB, lmul::GemmVariant::kAddMaskedAB};
      check(variant == wanted[zeros & 3], "variant chosen", static_cast<uint64_t>(variant));
      const size_t nr = lmul::panel_width();
      if (nr == 0) continue;  // no SIMD: only the portable loop exists
      const size_t panels = (n + nr - 1) / nr;
      std::vector<uint32_t> packed(panels * k * nr);
      std::vector<float> masks(packed.size()), a_mask(a.size());
      // b holds rounded bit patterns: as float32 storage, rounding at 23 bits keeps them.
      std::vector<float> b_values(b.size());
      for (size_t i = 0; i < b.size(); ++i) b_values[i] = lmul::bits_float(b[i]);
      lmul::pack_panels_rounded<lmul::Float32Storage>(b_values.data(), k, n, n, 1, 23, nr, lmul::zero_stand_in_b(br),
                                                      0, panels, packed.data(), masks.data());
      lmul::prepare_a(a.data(), a_mask.data(), a.size(), variant, bias, lmul::zero_stand_in_a(br));
      lmul::lmul_gemm_fast(variant, a.data(), a_mask.data(), packed.data(), masks.data(), k, n, 0, m, 0, panels,
                           got.data(), n);
      size_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += lmul::float_bits(got[i]) != lmul::float_bits(expected[i]);
      check(differ == 0, lmul::variant_name(variant), differ);
      // Compact panels (zeros stored as 0 and tested), 32-bit and, at m <= 7, 16-bit.
      std::vector<uint32_t> wide(packed.size());
      lmul::pack_panels_compact<lmul::Float32Storage>(b_values.data(), k, n, n, 1, 23, nr, 0, panels, wide.data());
      std::fill(got.begin(), got.end(), -1.0f);
      lmul::lmul_gemm_panels(variant, a.data(), a_mask.data(), lmul::PanelsView{wide.data(), nullptr}, k, n, 0, m, 0,
                             panels, got.data(), n);
      check(differing_bits(got, expected) == 0, "compact 32-bit panels", static_cast<uint64_t>(variant));
      // The rows of each panel with a zero of B: only those test B's lanes.
      std::vector<uint64_t> zero_rows(panels * lmul::zero_row_words(k));
      lmul::zero_row_bits(lmul::PanelsView{wide.data(), nullptr}, k, n, nr, 0, panels, zero_rows.data());
      size_t marked = 0, wrong_marks = 0;
      for (size_t panel = 0; panel < panels; ++panel) {
        for (size_t p = 0; p < k; ++p) {
          bool zero = false;
          for (size_t j = panel * nr; j < std::min(n, panel * nr + nr); ++j) {
            zero |= (b[p * n + j] & lmul::kMagnitudeMask) == 0;
          }
          const bool bit = (zero_rows[panel * lmul::zero_row_words(k) + p / 64] >> (p % 64)) & 1u;
          marked += bit;
          wrong_marks += bit != zero;
        }
      }
      check(wrong_marks == 0, "zero_row_bits marks the rows with a zero of B", wrong_marks);
      check((marked > 0) == ((zeros & 2) != 0), "zero_row_bits marks some rows", marked);
      std::fill(got.begin(), got.end(), -1.0f);
      lmul::lmul_gemm_panels(variant, a.data(), a_mask.data(), lmul::PanelsView{wide.data(), nullptr, zero_rows.data()},
                             k, n, 0, m, 0, panels, got.data(), n);
      check(differing_bits(got, expected) == 0, "compact 32-bit panels, zero rows", static_cast<uint64_t>(variant));
      if (bits <= lmul::kHalfPanelMantissaBits) {
        std::vector<uint16_t> half(packed.size());
        lmul::pack_panels_compact<lmul::Float32Storage>(b_values.data(), k, n, n, 1, 23, nr, 0, panels, half.data());
        size_t wrong = 0;
        for (size_t row = 0; row < half.size() / nr; ++row) {
          for (size_t j = 0; j < nr; ++j) {
            const uint32_t entry = wide[row * nr + j];
            wrong += half[row * nr + lmul::half_panel_slot(j, nr)] != entry >> 16 || (entry & 0xFFFFu) != 0;
          }
        }
        check(wrong == 0, "16-bit panel entries are the high halves", wrong);
        std::fill(got.begin(), got.end(), -1.0f);
        lmul::lmul_gemm_panels(variant, a.data(), a_mask.data(), lmul::PanelsView{nullptr, half.data()}, k, n, 0, m,
                               0, panels, got.data(), n);
        check(differing_bits(got, expected) == 0, "compact 16-bit panels", static_cast<uint64_t>(variant));
        std::vector<uint64_t> half_zero_rows(zero_rows.size());
        lmul::zero_row_bits(lmul::PanelsView{nullptr, half.data()}, k, n, nr, 0, panels, half_zero_rows.data());
        check(half_zero_rows == zero_rows, "zero_row_bits of 16-bit panels");
        // Few rows (one tile per panel, unpacked per tile) and more (widened per panel).
        for (size_t rows : {m, size_t{5}}) {
          std::fill(got.begin(), got.end(), -1.0f);
          lmul::lmul_gemm_panels(variant, a.data(), a_mask.data(),
                                 lmul::PanelsView{nullptr, half.data(), zero_rows.data()}, k, n, 0, rows, 0, panels,
                                 got.data(), n);
          std::vector<float> got_rows(got.begin(), got.begin() + rows * n);
          std::vector<float> expected_rows(expected.begin(), expected.begin() + rows * n);
          check(differing_bits(got_rows, expected_rows) == 0, "compact 16-bit panels, zero rows", rows);
        }
      }
    }
  }
  // Data that must not take a one-add kernel.
  lmul::OperandRange normal_range, with_inf, huge, with_zero;
  const uint32_t one = 0x3F800000u, inf = 0x7F800000u, big = 0x7E000000u, zero_and_big[] = {0u, big};
  normal_range.scan(&one, 1);
  with_inf.scan(&inf, 1);
  huge.scan(&big, 1);
  with_zero.scan(zero_and_big, 2);
  const uint32_t bias = lmul::lmul_bias(23);
  check(lmul::choose_variant(with_inf, normal_range, bias) == lmul::GemmVariant::kGeneral, "inf");
  check(lmul::choose_variant(huge, huge, bias) == lmul::GemmVariant::kNormal, "overflow, normal operands");
  check(lmul::choose_variant(with_zero, huge, bias) == lmul::GemmVariant::kGeneral, "overflow and zeros");

  // The normal-operand loop equals the general one on normal operands that under/overflow.
  std::uniform_int_distribution<uint32_t> normal_bits(0x00800000u, 0x7F7FFFFFu);
  std::vector<uint32_t> a(9 * 40), b(40 * 33);
  for (auto& x : a) x = normal_bits(rng) | (rng() & 0x80000000u);
  for (auto& x : b) x = normal_bits(rng) | (rng() & 0x80000000u);
  std::vector<float> general(9 * 33), normal_only(9 * 33);
  lmul::lmul_matmul_rows(a.data(), b.data(), 40, 33, 0, 9, bias, general.data());
  lmul::lmul_matmul_rows_normal(a.data(), b.data(), 40, 33, 0, 9, bias, normal_only.data());
  size_t differ = 0;
  for (size_t i = 0; i < general.size(); ++i) {
    const bool both_nan = std::isnan(general[i]) && std::isnan(normal_only[i]);
    differ += !both_nan && lmul::float_bits(general[i]) != lmul::float_bits(normal_only[i]);
  }
  check(differ == 0, "normal-operand loop", differ);
}


// The clamped kernels (products that underflow or overflow, zeros, the whole exponent
// range) against the portable loop, bit for bit, with products exactly at both limits.
void clamped_variants() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> pick(0u, 99u);
  std::uniform_int_distribution<uint32_t> any_offset(0u, lmul::kOffsetLimit - 1u);
  const size_t n = 150;  // a narrower last panel
  const size_t nr = lmul::panel_width();
  // Magnitudes per mode: the whole range (products under- and overflow), the upper half
  // (they may only overflow), the lower half (they may only underflow).
  const uint32_t lows[] = {0x00800000u, 0x3F000000u, 0x00800000u}, highs[] = {0x7F7FFFFFu, 0x7F7FFFFFu, 0x3F000000u};
  std::vector<int> chosen(16, 0);
  for (int trial = 0; trial < 48; ++trial) {
    const int mode = trial % 3;
    // k = 1: every output is one product, so each limit case shows in the result bits
    const size_t m = 1 + static_cast<size_t>(trial) % 13, k = trial % 2 ? 37 : 1;
    const bool zeros_a = (trial / 3) % 2 == 0, zeros_b = (trial / 6) % 2 == 0;
    const uint32_t offset = trial % 4 == 0 ? 0u : trial % 4 == 1 ? lmul::kOffsetLimit - 1u : any_offset(rng);
    const uint32_t bias = trial == 2 ? lmul::lmul_bias(23) : lmul::lmul_bias_for_offset(offset);
    // Mostly moderate magnitudes (so that most sums stay finite), some from the whole
    // range of the mode, and with zeros: +-0 and subnormals (SPEC: zeros).
    std::uniform_int_distribution<uint32_t> extreme(lows[mode], highs[mode]);
    std::uniform_int_distribution<uint32_t> moderate(std::max(lows[mode], 0x35000000u),
                                                     std::min(highs[mode], 0x49000000u));
    auto entry = [&](bool zeros) -> uint32_t {
      const uint32_t sign = rng() & lmul::kSignBit, choice = pick(rng);
      if (zeros && choice < 10) return sign | (choice < 5 ? 0u : 1u + (rng() & 0x7FFFFFu));
      return sign | (choice < (k == 1 ? 40u : 15u) ? extreme(rng) : moderate(rng));
    };
    std::vector<uint32_t> a(m * k), b(k * n);
    for (auto& x : a) x = entry(zeros_a);
    for (auto& x : b) x = entry(zeros_b);
    // k = 1: products exactly at the limits, for every row: |a| + |b| - bias = 2^23 - 1,
    // 2^23 (smallest normal), 0x7F7FFFFF (largest finite), 0x7F800000 (infinity), where
    // the mode's range allows.
    const uint32_t targets[] = {0x007FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0x7F800000u};
    for (size_t p = 0; p < (k == 1 ? k : 0); ++p) {
      for (size_t i = 0; i < m; ++i) {
        const uint32_t am = a[i * k + p] & lmul::kMagnitudeMask;
        if (am < lmul::kSmallestNormalBits) continue;
        for (size_t t = 0; t < 4; ++t) {
          const uint64_t wanted = uint64_t{targets[t]} + bias - am;
          if (wanted >= lows[mode] && wanted <= highs[mode]) {
            b[p * n + (i * 4 + t + p * 11) % n] = static_cast<uint32_t>(wanted) | (rng() & lmul::kSignBit);
          }
        }
      }
    }
    if (trial == 5) std::fill(a.begin(), a.end(), 0x80000000u);  // all of A zero
    if (trial == 6) std::fill(b.begin(), b.end(), 0u);           // all of B zero
    lmul::OperandRange ar, br;
    ar.scan(a.data(), a.size());
    br.scan(b.data(), b.size());
    const lmul::GemmVariant variant = lmul::choose_variant(ar, br, bias, nr > 0, /*clamped=*/true);
    if (nr == 0) {
      check(!lmul::uses_panels(variant), "no SIMD: no clamped kernel", static_cast<uint64_t>(variant));
      continue;
    }
    using V = lmul::GemmVariant;
    const V wanted[2][3] = {{V::kClamped, V::kClampedHigh, V::kClampedLow},
                            {V::kClampedMaskedB, V::kClampedHighMaskedB, V::kClampedLowMaskedB}};
    // (where the data happens to keep every product in range, e.g. all of A zero, a
    // one-add kernel is exact and chosen; all of B zero: the plain clamped kernel)
    const bool b_all_zero = trial == 6;
    check(variant == wanted[br.has_zero][mode] || lmul::is_one_add(variant) ||
              (b_all_zero && variant == lmul::GemmVariant::kClampedLowMaskedB),
          "clamped variant chosen",
          static_cast<uint64_t>(variant));
    ++chosen[static_cast<size_t>(variant)];
    std::vector<float> expected(m * n), got(m * n);
    lmul::lmul_matmul_rows(a.data(), b.data(), k, n, 0, m, bias, expected.data());
    size_t numbers = 0;  // (+-inf + -+inf: NaN hides the other products)
    for (float x : expected) numbers += !std::isnan(x);
    check(numbers > expected.size() * 3 / 4, "clamped test data: mostly not NaN", numbers);
    std::vector<float> a_sign(a.size()), b_values(b.size());
    for (size_t i = 0; i < b.size(); ++i) b_values[i] = lmul::bits_float(b[i]);
    const uint32_t a_stand_in = lmul::zero_stand_in_a(br, variant);
    lmul::prepare_a(a.data(), a_sign.data(), a.size(), variant, bias, a_stand_in);
    // Panels of the full width, the same with the bias folded into B (as a per-call B is
    // packed; one-add kernels then take A without it), and narrow panels (AVX-512).
    size_t differ = 0;
    for (int layout = 0; layout < 3; ++layout) {
      const size_t width = layout == 2 ? lmul::narrow_panel_width() : nr;
      if (width == 0 || (layout > 0 && !lmul::is_clamped(variant))) continue;
      const uint32_t fold = layout > 0 ? bias : 0u;
      const size_t panels = (n + width - 1) / width;
      std::vector<uint32_t> packed(panels * k * width);
      std::vector<float> masks(packed.size());
      lmul::pack_panels_rounded<lmul::Float32Storage>(b_values.data(), k, n, n, 1, 23, width, lmul::zero_stand_in_b(br),
                                                      0, panels, packed.data(), br.has_zero ? masks.data() : nullptr);
      for (auto& x : packed) x -= fold;
      std::fill(got.begin(), got.end(), 0.0f);
      // (the clamped kernels need no B masks: they tell zeros from B's smallest magnitude)
      lmul::lmul_gemm_fast(variant, a.data(), a_sign.data(), packed.data(),
                           lmul::masks_b(variant) ? masks.data() : nullptr, k, n, 0, m, 0, panels, got.data(), n,
                           width, br.min_nonzero, fold);
      for (size_t i = 0; i < got.size(); ++i) {
        const bool both_nan = std::isnan(got[i]) && std::isnan(expected[i]);
        differ += !both_nan && lmul::float_bits(got[i]) != lmul::float_bits(expected[i]);
      }
    }
    check(differ == 0, lmul::variant_name(variant), differ);
  }
  if (nr > 0) {
    using V = lmul::GemmVariant;
    for (V v : {V::kClamped, V::kClampedMaskedB, V::kClampedHigh, V::kClampedHighMaskedB, V::kClampedLow,
                V::kClampedLowMaskedB}) {
      check(chosen[static_cast<size_t>(v)] >= 2, lmul::variant_name(v), chosen[static_cast<size_t>(v)]);
    }
  }
  // Infinity and NaN still take the portable loop.
  lmul::OperandRange with_inf, with_nan, wide;
  const uint32_t inf = 0x7F800000u, nan = 0x7FC00000u, extremes[] = {0u, 0x00800000u, 0x7F7FFFFFu};
  with_inf.scan(&inf, 1);
  with_nan.scan(&nan, 1);
  wide.scan(extremes, 3);
  const uint32_t bias = lmul::lmul_bias(23);
  check(lmul::choose_variant(with_inf, wide, bias, true, true) == lmul::GemmVariant::kGeneral, "clamped: inf");
  check(lmul::choose_variant(wide, with_nan, bias, true, true) == lmul::GemmVariant::kGeneral, "clamped: nan");
  check(lmul::choose_variant(wide, wide, bias, false, true) == lmul::GemmVariant::kGeneral, "clamped: no SIMD");
}

// A ParallelFor on two threads that take tasks in turn (what onnxruntime's pool may do).
void two_threads(size_t tasks, const std::function<void(size_t)>& task) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < tasks; i = next++) task(i);
  };
  std::thread other(worker);
  worker();
  other.join();
}

// The scalar reference of a product: SPEC 1 per product, float32 sums in k order.
std::vector<float> reference_product(const std::vector<float>& a, const std::vector<float>& b, size_t batches,
                                     size_t m, size_t k, size_t n, bool b_batched, int bits,
                                     uint32_t bias = 0) {
  if (bias == 0) bias = lmul::lmul_bias(bits);
  std::vector<float> y(batches * m * n);
  for (size_t i = 0; i < batches; ++i) {
    const float* bm = b.data() + (b_batched ? i * k * n : 0);
    for (size_t r = 0; r < m; ++r) {
      for (size_t j = 0; j < n; ++j) {
        float sum = 0.0f;
        for (size_t p = 0; p < k; ++p) sum += lmul::lmul_float(a[i * m * k + r * k + p], bm[p * n + j], bits, bias);
        y[i * m * n + r * n + j] = sum;
      }
    }
  }
  return y;
}

size_t differing_bits(const std::vector<float>& got, const std::vector<float>& expected) {
  size_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool both_nan = std::isnan(got[i]) && std::isnan(expected[i]);
    differ += !both_nan && lmul::float_bits(got[i]) != lmul::float_bits(expected[i]);
  }
  return differ;
}

// Data of one kind for a product's operands.
std::vector<float> operand(std::mt19937& rng, size_t count, int kind) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> exponent(-80.0f, 80.0f);
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) {
    float x = normal(rng);
    switch (kind) {
      case 1: x = i % 3 == 0 ? (i % 2 ? -0.0f : 0.0f) : x; break;          // zeros of both signs
      case 2: x = i % 7 == 0 ? 1e-41f : x; break;                           // subnormals (zeros in SPEC)
      case 3: x = i == count / 2 ? std::numeric_limits<float>::infinity() : x; break;
      case 4: x = i == count / 3 ? std::numeric_limits<float>::quiet_NaN() : x; break;
      case 5: x *= std::exp(exponent(rng)); break;                          // whole exponent range
      case 6: x *= 1e19f; break;                                            // products overflow
      case 7: x = i % 5 == 0 ? 3.4e38f : x; break;                          // saturates when rounded
      default: break;
    }
    v[i] = x;
  }
  return v;
}

// lmul_matrix_product of float32 A and B (shapes a_shape, b_shape; B one matrix) at `bits`
// with `bias`, B read per call or, with `packed`, packed beforehand as weights are.
std::vector<float> product(const std::vector<float>& a, const std::vector<float>& b, const lmul::Shape& a_shape,
                           const lmul::Shape& b_shape, int bits, uint32_t bias, const lmul::ParallelFor& schedule,
                           bool packed) {
  lmul::MatMulPlan plan;
  std::string error;
  check(lmul::make_matmul_plan(a_shape, b_shape, plan, error), "matmul plan");
  lmul::ProductOperands<lmul::Float32Storage> operands;
  operands.a = a.data();
  operands.b = b.data();
  std::unique_ptr<const lmul::PackedB> weights;
  if (packed) {
    weights = lmul::pack_b<lmul::Float32Storage>(b.data(), b_shape, 1, plan.k, plan.n, false, bits, schedule);
    operands.prepared_b = weights.get();
  }
  std::vector<float> y(plan.m * plan.n * plan.a_matrix.size(), -1.0f);
  lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, bits, bias, nullptr, y.data(), schedule);
  return y;
}

// A per-call B's range (which picks the kernel) sees every column of each panel: one
// entry that alone lets products overflow (or underflow), wherever it sits in a panel
// (first, middle, last full vector, the columns after it), gives the reference's inf (or,
// for a column of tiny entries, its zeros).
void per_call_b_range_every_column() {
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> moderate(0.5f, 2.0f);
  const size_t m = 12, k = 10;
  for (size_t n : {20, 40, 70}) {
    for (size_t column : {size_t{0}, size_t{7}, size_t{16}, n - 9, n - 1}) {
      for (float extreme : {3.0e38f, -3.0e38f, 1.2e-38f}) {
        for (int bits : {23, 4}) {
          std::vector<float> a(m * k), b(k * n);
          for (auto& x : a) x = moderate(rng);
          for (auto& x : b) x = moderate(rng);
          b[(k / 2) * n + column] = extreme;
          if (extreme < 1.0f) {  // (a whole column: a sum of ~1 would hide a wrong tiny product)
            for (size_t p = 0; p < k; ++p) b[p * n + column] = extreme;
          }
          const uint32_t bias = lmul::lmul_bias(bits);
          const std::vector<float> got = product(a, b, {int64_t(m), int64_t(k)}, {int64_t(k), int64_t(n)}, bits,
                                                 bias, lmul::run_serially, false);
          check(differing_bits(got, reference_product(a, b, 1, m, k, n, false, bits, bias)) == 0,
                "per-call B: the range sees every column", (uint64_t{n} << 16) | column);
        }
      }
    }
  }
}

// lmul_matrix_product (packing, scheduling, every kernel) equals the scalar reference, for
// every M from 1 to 8 (the small-M kernel) and beyond, N off the vector width, batched and
// broadcast B, special values, and any ParallelFor.
void matrix_products() {
  std::mt19937 rng(11);
  const lmul::ParallelFor schedules[] = {lmul::run_serially, two_threads};
  struct Shape3 {
    size_t batches, m, k, n;
    bool b_batched;
  };
  // b_batched: one B matrix per batch (attention) rather than one B for all. {1, 1, 200,
  // 100} and {1, 2, 300, 530} take several passes over B, the second a B too large to stay
  // in cache; {3, 30, 40, 32} and {2, 25, 17, 20} per-call B in narrow panels (N <= 32);
  // {1, 12, 130, 600} several panel blocks per row block (A prepared before the tasks).
  const Shape3 shapes[] = {{1, 1, 64, 80, false},  {1, 2, 33, 16, false}, {1, 3, 17, 47, false},
                           {1, 4, 5, 130, false},  {1, 5, 70, 64, false}, {1, 6, 9, 7, false},
                           {1, 7, 40, 150, false}, {1, 8, 64, 96, false}, {3, 1, 64, 33, false},
                           {12, 1, 20, 70, true},  {2, 8, 3, 17, true},   {1, 13, 70, 150, false},
                           {1, 1, 0, 20, false},   {2, 9, 31, 65, true},  {1, 1, 200, 100, false},
                           {1, 2, 300, 530, false}, {3, 30, 40, 32, true},  {2, 25, 17, 20, true},
                           {4, 50, 9, 64, true},    {1, 12, 130, 600, false}};
  for (const Shape3& s : shapes) {
    for (int kind_a : {0, 1, 2, 3, 4, 5, 6}) {
      for (int kind_b : {0, 1, 2, 3, 4, 5, 6, 7}) {
        if (kind_a != 0 && kind_b != 0 && kind_a != kind_b) continue;
        for (int bits : {23, 4, 1}) {
          // The paper's offset, and the smallest and largest `offset` (SPEC 4).
          const uint32_t biases[] = {lmul::lmul_bias(bits), lmul::lmul_bias_for_offset(0),
                                     lmul::lmul_bias_for_offset(lmul::kOffsetLimit - 1)};
          const uint32_t bias = biases[(kind_a + kind_b) % 3];
          const std::vector<float> a = operand(rng, s.batches * s.m * s.k, kind_a);
          const std::vector<float> b = operand(rng, (s.b_batched ? s.batches : 1) * s.k * s.n, kind_b);
          const std::vector<float> expected =
              reference_product(a, b, s.batches, s.m, s.k, s.n, s.b_batched, bits, bias);
          lmul::MatMulPlan plan;
          std::string error;
          const lmul::Shape a_shape{int64_t(s.batches), int64_t(s.m), int64_t(s.k)};
          const lmul::Shape b_shape = s.b_batched ? lmul::Shape{int64_t(s.batches), int64_t(s.k), int64_t(s.n)}
                                                  : lmul::Shape{int64_t(s.k), int64_t(s.n)};
          check(lmul::make_matmul_plan(a_shape, b_shape, plan, error), "matmul plan");
          for (const lmul::ParallelFor& schedule : schedules) {
            lmul::ProductOperands<lmul::Float32Storage> operands;
            operands.a = a.data();
            operands.b = b.data();
            std::vector<float> got(expected.size(), -1.0f);
            lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, bits, bias, nullptr, got.data(), schedule);
            check(differing_bits(got, expected) == 0, "matrix product, B per call",
                  (uint64_t{s.m} << 32) | (uint64_t(kind_a) << 16) | (uint64_t(kind_b) << 8) | uint64_t(bits));
            // Told of 64 threads, a batch is not run one product per task (fewer than two
            // per thread) but prepared and summed across all products at once.
            lmul::Concurrency many(64);
            std::fill(got.begin(), got.end(), -1.0f);
            lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, bits, bias, nullptr, got.data(), schedule,
                                                            &many);
            check(differing_bits(got, expected) == 0, "matrix product, B per call, whole batch at once",
                  (uint64_t{s.m} << 32) | (uint64_t(kind_a) << 16) | (uint64_t(kind_b) << 8) | uint64_t(bits));
            // A's bit patterns given as well (the binding's float32 A): read in place at
            // m = 23. There `a` then holds other values: only a read in place sums right.
            std::vector<uint32_t> a_bits(a.size());
            if (!a.empty()) std::memcpy(a_bits.data(), a.data(), a.size() * sizeof(float));
            const std::vector<uint32_t> a_bits_before = a_bits;
            const std::vector<float> decoy(a.size(), 3.0f);
            operands.a_bits = a_bits.data();
            if (bits == 23) operands.a = decoy.data();
            std::fill(got.begin(), got.end(), -1.0f);
            lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, bits, bias, nullptr, got.data(), schedule);
            check(differing_bits(got, expected) == 0, "matrix product, A's bits in place",
                  (uint64_t{s.m} << 32) | (uint64_t(kind_a) << 16) | (uint64_t(kind_b) << 8) | uint64_t(bits));
            // The same B packed beforehand, as constant weights are (A prepared in place
            // then: into a copy, never the caller's A).
            const auto packed = lmul::pack_b<lmul::Float32Storage>(b.data(), b_shape, plan.b_matrices, s.k, s.n,
                                                                   false, bits, schedule);
            operands.prepared_b = packed.get();
            std::fill(got.begin(), got.end(), -1.0f);
            lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, bits, bias, nullptr, got.data(), schedule);
            check(differing_bits(got, expected) == 0, "matrix product, B packed",
                  (uint64_t{s.m} << 32) | (uint64_t(kind_a) << 16) | (uint64_t(kind_b) << 8) | uint64_t(bits));
            check(a_bits == a_bits_before, "A's bits left as they were");
          }
        }
      }
    }
  }
}

// zero_bits_of_rows (AVX-512, or the portable loop with LMUL_SIMD=avx2) against one bit per
// entry: zeros of either sign and subnormals set it, nothing else does, for k off and on
// the 16-entry vectors and 64-bit words.
void zero_bits_of_rows_reference() {
  std::mt19937 rng(47);
  const uint32_t values[] = {0u, 0x80000000u, 1u, 0x807FFFFFu, 0x00800000u, 0x3F800000u, 0xFF800000u, 0x7FC00000u};
  for (size_t k : {1, 15, 16, 17, 63, 64, 65, 130}) {
    const size_t rows = 3, words = lmul::zero_row_words(k);
    std::vector<uint32_t> a(rows * k);
    for (auto& x : a) x = values[rng() % 8];
    std::vector<uint64_t> bits(rows * words, ~uint64_t{0});
    lmul::zero_bits_of_rows(a.data(), rows, k, bits.data());
    bool ok = true;
    for (size_t r = 0; r < rows; ++r) {
      for (size_t w = 0; w < words; ++w) {
        uint64_t expected = 0;
        for (size_t p = w * 64; p < std::min(k, w * 64 + 64); ++p) {
          expected |= uint64_t{(a[r * k + p] & 0x7FFFFFFFu) < 0x00800000u} << (p % 64);
        }
        ok = ok && bits[r * words + w] == expected;
      }
    }
    check(ok, "zero_bits_of_rows against one bit per entry", k);
  }
}

// An A with few zeros (at most 1 in 64: GELU outputs) against a B without: A's zeros go to
// the tiles as bits, and the steps between them run unmasked. Zeros at random places, in
// a whole column (every row of a tile: the step is skipped), in the first and last step,
// and on word boundaries of the bits; B per call and packed (m = 4: 16-bit panels, whose
// widened rows the first tile stores for the others, skipped steps' rows included).
void sparse_zeros_of_a() {
  std::mt19937 rng(43);
  std::uniform_real_distribution<float> value(0.5f, 2.0f);
  const lmul::ParallelFor schedules[] = {lmul::run_serially, two_threads};
  struct Case {
    size_t m, k, n;
  };
  for (const Case& c : {Case{13, 150, 70}, Case{25, 129, 20}, Case{50, 640, 64}, Case{7, 64, 130}}) {
    for (int bits : {23, 4}) {
      std::vector<float> a(c.m * c.k), b(c.k * c.n);
      for (auto& x : a) x = rng() % 2 ? value(rng) : -value(rng);
      for (auto& x : b) x = rng() % 2 ? value(rng) : -value(rng);
      const size_t column = c.k / 2;
      for (size_t i = 0; i < c.m; ++i) a[i * c.k + column] = 0.0f;  // every row: skipped
      // Every row of the first tile only: skipped there, but the 16-bit panel's row must
      // still be widened for the later tiles, which add it.
      for (size_t i = 0; i < std::min<size_t>(6, c.m); ++i) a[i * c.k + c.k / 3] = 0.0f;
      a[0] = -0.0f;                                                  // first step
      a[(c.m - 1) * c.k + c.k - 1] = 0.0f;                           // last step
      a[(c.m / 2) * c.k + 63] = 1e-40f;                              // subnormal, on a word's end
      a[(c.m / 2) * c.k + 64 % c.k] = 0.0f;
      for (size_t extra = 0; extra < c.m * c.k / 200; ++extra) a[rng() % a.size()] = 0.0f;
      // Row 1 at 1e-37: a zero's product left in (its stand-in's, about 1e-38) would show
      // in its sums; in sums of about 1 it is lost.
      for (size_t p = 0; p < c.k; ++p) a[c.k + p] *= 1e-37f;
      a[c.k + 5] = 0.0f;
      const uint32_t bias = lmul::lmul_bias(bits);
      const std::vector<float> expected = reference_product(a, b, 1, c.m, c.k, c.n, false, bits, bias);
      const lmul::Shape a_shape{int64_t(c.m), int64_t(c.k)}, b_shape{int64_t(c.k), int64_t(c.n)};
      for (const lmul::ParallelFor& schedule : schedules) {
        for (bool packed : {false, true}) {
          const std::vector<float> got = product(a, b, a_shape, b_shape, bits, bias, schedule, packed);
          check(differing_bits(got, expected) == 0, packed ? "few zeros in A, B packed" : "few zeros in A, B per call",
                (c.m << 16) | uint64_t(bits));
        }
      }
    }
  }
}

// The small-M kernel takes its one-add pass on data where that is exact, and hands the
// block to the portable loop where it is not.
void small_m_paths() {
  std::mt19937 rng(5);
  const size_t k = 24, n = 64;
  auto run = [&](int kind_a, int kind_b, int bits) {
    const std::vector<float> a = operand(rng, 2 * k, kind_a), b = operand(rng, k * n, kind_b);
    std::vector<uint32_t> rounded(a.size());
    for (size_t i = 0; i < a.size(); ++i) rounded[i] = lmul::round_mantissa_bits(lmul::float_bits(a[i]), bits);
    lmul::OperandRange range;
    range.scan(rounded.data(), rounded.size());
    std::vector<float> c(2 * n);
    const bool fast = lmul::lmul_small_m(rounded.data(), 2, k, range, b.data(), n, 0, n, bits, lmul::lmul_bias(bits), c.data(),
                                             n);
    check(differing_bits(c, reference_product(a, b, 1, 2, k, n, false, bits)) == 0, "small-M block");
    return fast;
  };
  if (lmul::simd_lanes() > 0) {
    check(run(0, 0, 23), "small M: one-add pass on normal data");
    check(run(1, 1, 4), "small M: one-add pass with zeros");
    check(run(2, 2, 23), "small M: one-add pass with subnormals");
  }
  if (lmul::simd_lanes() > 0) {
    check(run(6, 6, 23), "small M: overflow takes the clamped pass");
    check(run(5, 5, 4), "small M: the whole exponent range takes the clamped pass");
  }
  check(!run(0, 3, 23), "small M: infinity in B goes to the portable loop");
  check(!run(5, 3, 23), "small M: infinity in B goes to the portable loop from the clamped pass");
  check(!run(4, 0, 23), "small M: NaN in A goes to the portable loop");
  check(!run(0, 7, 1), "small M: saturation goes to the portable loop");
}

// The small-M clamped pass (products that underflow or overflow): every row count, passes
// of 64 and of 8 rows of B (short and long rows), tail columns, zeros and subnormals in A
// and in B, both signs, m = 23 and 4; A like the probabilities of a peaked softmax (the
// clamped pass goes first) and A whose products only sometimes underflow (after a one-add
// pass that is thrown away). Every block must equal the reference bit for bit.
void small_m_clamped() {
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> exponent(-87.0f, 0.0f);
  struct Case {
    size_t k, n;
  };
  size_t vector_passes = 0;
  for (const Case& shape : {Case{150, 70}, Case{37, 300}, Case{9, 16}}) {
    for (size_t rows = 1; rows <= lmul::kSmallMMaxRows; ++rows) {
      for (int bits : {23, 4}) {
        for (int kind : {0, 1, 2, 3, 4}) {
          const size_t k = shape.k, n = shape.n;
          std::vector<float> a = operand(rng, rows * k, 0), b = operand(rng, k * n, kind == 2 || kind == 4 ? 5 : 0);
          for (size_t i = 0; i < a.size(); ++i) {
            if (kind == 0) a[i] = std::exp(exponent(rng)) * (rng() % 2 ? 1.0f : -1.0f);  // down to 1.6e-38
            if (kind == 1) a[i] *= 1e-30f;  // products of b below about 1e-8 underflow
            if (kind == 3) a[i] = std::exp(exponent(rng) / 13.0f + 2.0f) * (rng() % 2 ? 1.0f : -1.0f);  // 0.01..7
            // A zero's product (as |b| 2^-128 if it were taken) would show beside 1e-33 |b|
            if (kind == 4) a[i] = i % 3 ? 0.0f : a[i] * 1e-33f;
            if (i % 11 == 3) a[i] = i % 2 ? -0.0f : 0.0f;
            if (i % 29 == 5) a[i] = 1e-41f;
          }
          // Sums near 1e-35: a zero of B whose product were taken (|a| - bias, about 1e-38
          // for |a| near 4) would show.
          if (kind == 3)
            for (float& x : b) x = std::exp(exponent(rng) / 18.0f - 81.0f) * (rng() % 2 ? 1.0f : -1.0f);
          for (size_t i = 0; i < b.size(); i += 13) b[i] = i % 2 ? 0.0f : 1e-40f;
          b[b.size() / 2] = 2e-9f;
          if (kind == 2) b[3] = 3e38f;  // with a near 1e38: overflow
          std::vector<uint32_t> rounded(a.size());
          for (size_t i = 0; i < a.size(); ++i) rounded[i] = lmul::round_mantissa_bits(lmul::float_bits(a[i]), bits);
          lmul::OperandRange range;
          range.scan(rounded.data(), rounded.size());
          std::vector<float> c(rows * n, -1.0f);
          const bool fast = lmul::lmul_small_m(rounded.data(), rows, k, range, b.data(), n, 0, n, bits,
                                               lmul::lmul_bias(bits), c.data(), n);
          vector_passes += fast;
          check(differing_bits(c, reference_product(a, b, 1, rows, k, n, false, bits)) == 0, "small-M clamped block",
                (rows << 16) | (uint64_t(bits) << 8) | uint64_t(kind));
          check(fast == (lmul::simd_lanes() > 0), "small-M clamped: a vector pass", rows);
        }
      }
    }
  }
  check(lmul::simd_lanes() == 0 || vector_passes > 0, "small-M clamped: the vector passes ran");
}

// A broadcast against a batched B ((1, m, k) x (4, k, n)), its float32 bits read in place,
// against per-call and packed B: every batch equals the reference, and A is left as it was.
void broadcast_a_in_place() {
  std::mt19937 rng(29);
  struct Shape3 {
    size_t m, k, n;
  };
  for (const Shape3& s : {Shape3{12, 130, 600}, Shape3{3, 40, 50}}) {
    const size_t batches = 4;
    for (int kind_a : {0, 1}) {
      const std::vector<float> a = operand(rng, s.m * s.k, kind_a), b = operand(rng, batches * s.k * s.n, 0);
      std::vector<float> a_repeated;
      for (size_t i = 0; i < batches; ++i) a_repeated.insert(a_repeated.end(), a.begin(), a.end());
      const std::vector<float> expected = reference_product(a_repeated, b, batches, s.m, s.k, s.n, true, 23);
      const lmul::Shape a_shape{1, int64_t(s.m), int64_t(s.k)}, b_shape{int64_t(batches), int64_t(s.k), int64_t(s.n)};
      lmul::MatMulPlan plan;
      std::string error;
      check(lmul::make_matmul_plan(a_shape, b_shape, plan, error), "broadcast plan");
      std::vector<uint32_t> a_bits(a.size());
      std::memcpy(a_bits.data(), a.data(), a.size() * sizeof(float));
      const std::vector<uint32_t> before = a_bits;
      const std::vector<float> decoy(a.size(), 3.0f);
      lmul::ProductOperands<lmul::Float32Storage> operands;
      operands.a = decoy.data();  // only the bits are right
      operands.a_bits = a_bits.data();
      operands.b = b.data();
      const auto packed = lmul::pack_b<lmul::Float32Storage>(b.data(), b_shape, batches, s.k, s.n, false, 23,
                                                             lmul::run_serially);
      for (const lmul::PackedB* prepared : {static_cast<const lmul::PackedB*>(nullptr), packed.get()}) {
        operands.prepared_b = prepared;
        std::vector<float> got(expected.size(), -1.0f);
        lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, 23, lmul::lmul_bias(23), nullptr, got.data(),
                                                        two_threads);
        check(differing_bits(got, expected) == 0, "broadcast A read in place", s.m);
        check(a_bits == before, "broadcast A left as it was");
      }
    }
  }
}

// Concurrency::of measures at most three times, keeps the largest count, never says 0.
void concurrency_measurements() {
  size_t calls = 0;
  const lmul::ParallelFor counting = [&calls](size_t tasks, const std::function<void(size_t)>& task) {
    ++calls;
    lmul::run_serially(tasks, task);
  };
  const size_t expected_calls = lmul::hardware_threads() > 1 ? 3 : 0;
  lmul::Concurrency concurrency;
  for (int i = 0; i < 6; ++i) check(concurrency.of(counting) == 1, "serial pool: one thread");
  check(calls == expected_calls, "three measurements at most", calls);
  check(lmul::Concurrency(0).of(counting) == 1, "never 0");
  check(lmul::Concurrency(64).of(counting) == 64 && calls == expected_calls, "a fixed count is not measured");
}

// measure_concurrency counts the threads that run tasks at once, and a product split for
// them (narrower small-M blocks than one thread gets) keeps every bit.
void concurrency_and_split() {
  check(lmul::measure_concurrency(lmul::run_serially, 2, 1000) == 1, "concurrency: serial");
  check(lmul::measure_concurrency(two_threads, 2, 5000000) == 2, "concurrency: two threads");
  check(lmul::measure_concurrency(two_threads, 1, 1000) == 1, "concurrency: limit 1");
  std::mt19937 rng(17);
  struct Shape3 {
    size_t m, k, n;
  };
  for (const Shape3& s : {Shape3{1, 64, 2048}, Shape3{1, 64, 1000}, Shape3{3, 40, 700}, Shape3{8, 8, 4100}}) {
    const std::vector<float> a = operand(rng, s.m * s.k, 1), b = operand(rng, s.k * s.n, 2);
    const std::vector<float> expected = reference_product(a, b, 1, s.m, s.k, s.n, false, 23);
    lmul::MatMulPlan plan;
    std::string error;
    const lmul::Shape a_shape{int64_t(s.m), int64_t(s.k)}, b_shape{int64_t(s.k), int64_t(s.n)};
    check(lmul::make_matmul_plan(a_shape, b_shape, plan, error), "plan");
    lmul::ProductOperands<lmul::Float32Storage> operands;
    operands.a = a.data();
    operands.b = b.data();
    lmul::Concurrency concurrency;
    std::vector<float> got(expected.size(), -1.0f);
    lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, 23, lmul::lmul_bias(23), nullptr, got.data(),
                                                    two_threads, &concurrency);
    check(differing_bits(got, expected) == 0, "small-M product split for the threads", s.n);
  }
}

// lmul_conv splits its work by the threads it is told run it (Concurrency): with 16 or 64
// threads (narrower chunks, smaller channel blocks, the borders in the interior's pass and
// their sums kept aside where the interior's direct runs cross them) every bit equals the
// serial split's, for padded, dilated, grouped, batched, 1-D and 3-D geometries.
void conv_split_for_threads() {
  std::mt19937 rng(23);
  struct Case {
    lmul::Shape x, w;
    std::vector<int64_t> pads, dilations;
    int64_t group;
  };
  const Case cases[] = {
      {{1, 8, 20, 20}, {16, 8, 3, 3}, {1, 1, 1, 1}, {}, 1},           // out width = in width: direct runs
      {{2, 6, 17, 23}, {12, 3, 3, 3}, {1, 0, 1, 2}, {}, 2},           // one-sided pads, groups, batch
      {{1, 4, 19, 19}, {70, 4, 3, 3}, {2, 2, 2, 2}, {2, 2}, 1},       // dilation, 70 channels
      {{1, 5, 300}, {9, 5, 3}, {1, 1}, {}, 1},                        // 1-D
      {{1, 3, 6, 9, 9}, {8, 3, 3, 3, 3}, {1, 1, 1, 1, 1, 1}, {}, 1},  // 3-D planes
      {{1, 4, 12, 12}, {8, 4, 3, 3}, {3, 3, 3, 3}, {}, 1},            // pads beyond the kernel's reach
  };
  for (const Case& c : cases) {
    // kind 1: both operands over the whole exponent range, with zeros (the clamped kernels)
    for (int kind : {0, 1}) {
      lmul::ConvAttributes attributes;
      attributes.pads = c.pads;
      attributes.dilations = c.dilations;
      attributes.group = c.group;
      lmul::ConvPlan plan;
      std::string error;
      check(lmul::make_conv_plan(c.x, c.w, nullptr, attributes, false, plan, error), "conv plan");
      size_t x_count = 1, w_count = 1;
      for (int64_t d : c.x) x_count *= static_cast<size_t>(d);
      for (int64_t d : c.w) w_count *= static_cast<size_t>(d);
      std::vector<float> x = operand(rng, x_count, kind ? 5 : 1), w = operand(rng, w_count, kind ? 5 : 0);
      const std::vector<float> bias = operand(rng, plan.out_channels, 0);
      if (kind) {
        for (size_t i = 0; i < x_count; i += 7) x[i] = 0.0f;
        for (size_t i = 0; i < w_count; i += 5) w[i] = -0.0f;
      }
      std::vector<uint32_t> x_bits(x_count);
      for (size_t i = 0; i < x_count; ++i) x_bits[i] = lmul::float_bits(x[i]);
      lmul::ConvWeights weights;
      lmul::round_conv_weights<lmul::Float32Storage>(w.data(), c.w, plan.group, false, 23, lmul::run_serially, weights);
      lmul::prepare_offsets_operand(weights, lmul::lmul_bias(23));
      const size_t y_count = plan.batch * plan.out_channels * plan.out_pixels;
      // The scalar reference: per output, the sum over (c, kz, ky, kx) in order of the L-Mul
      // products with X (padding contributes nothing), then the bias.
      std::vector<float> expected(y_count);
      const size_t cg = plan.in_per_group(), mg = plan.out_per_group();
      for (size_t n = 0; n < plan.batch; ++n) {
        for (size_t m = 0; m < plan.out_channels; ++m) {
          const size_t g = m / mg;
          for (size_t o = 0; o < plan.out_pixels; ++o) {
            const size_t oz = o / (plan.out[1] * plan.out[2]), oy = o / plan.out[2] % plan.out[1], ox = o % plan.out[2];
            float sum = 0.0f;
            size_t k = 0;
            for (size_t ci = 0; ci < cg; ++ci) {
              for (size_t kz = 0; kz < plan.kernel[0]; ++kz) {
                for (size_t ky = 0; ky < plan.kernel[1]; ++ky) {
                  for (size_t kx = 0; kx < plan.kernel[2]; ++kx, ++k) {
                    const int64_t iz = int64_t(oz + kz * plan.dilation[0]) - int64_t(plan.pad_begin[0]);
                    const int64_t iy = int64_t(oy + ky * plan.dilation[1]) - int64_t(plan.pad_begin[1]);
                    const int64_t ix = int64_t(ox + kx * plan.dilation[2]) - int64_t(plan.pad_begin[2]);
                    if (iz < 0 || iy < 0 || ix < 0 || iz >= int64_t(plan.in[0]) || iy >= int64_t(plan.in[1]) ||
                        ix >= int64_t(plan.in[2])) {
                      continue;
                    }
                    const float xv = x[((n * plan.in_channels + g * cg + ci) * plan.in[0] + size_t(iz)) * plan.in[1] *
                                           plan.in[2] +
                                       size_t(iy) * plan.in[2] + size_t(ix)];
                    sum += lmul::lmul_float(w[m * cg * plan.kernel_size + k], xv, 23, lmul::lmul_bias(23));
                  }
                }
              }
            }
            expected[(n * plan.out_channels + m) * plan.out_pixels + o] = sum + bias[m];
          }
        }
      }
      std::vector<float> serial(y_count, -1.0f);
      lmul::lmul_conv(plan, weights, x_bits.data(), bias.data(), lmul::lmul_bias(23), serial.data(),
                      lmul::run_serially);
      check(differing_bits(serial, expected) == 0, "conv against the scalar reference");
      for (size_t threads : {16, 64}) {
        lmul::Concurrency concurrency(threads);
        std::vector<float> got(y_count, -1.0f);
        lmul::lmul_conv(plan, weights, x_bits.data(), bias.data(), lmul::lmul_bias(23), got.data(), two_threads,
                        &concurrency);
        check(differing_bits(got, expected) == 0, "conv split for many threads", threads);
      }
    }
  }
}

// Gemm's terms and the 16-bit storage types go through the same driver.
void gemm_terms_and_storage() {
  std::mt19937 rng(3);
  const size_t m = 3, k = 10, n = 21;
  const std::vector<float> a = operand(rng, m * k, 0), b = operand(rng, k * n, 0), c = operand(rng, n, 0);
  lmul::MatMulPlan plan;
  std::string error;
  check(lmul::make_matmul_plan({int64_t(m), int64_t(k)}, {int64_t(k), int64_t(n)}, plan, error), "plan");
  std::vector<float> expected = reference_product(a, b, 1, m, k, n, false, 7);
  for (size_t r = 0; r < m; ++r)
    for (size_t j = 0; j < n; ++j) expected[r * n + j] = 0.5f * expected[r * n + j] + 2.0f * c[j];
  lmul::GemmTerms<lmul::Float32Storage> terms;
  terms.alpha = 0.5f;
  terms.beta = 2.0f;
  terms.c = c.data();
  terms.c_col_stride = 1;
  lmul::ProductOperands<lmul::Float32Storage> operands;
  operands.a = a.data();
  operands.b = b.data();
  std::vector<float> got(m * n);
  lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, 7, lmul::lmul_bias(7), &terms, got.data(), lmul::run_serially);
  check(differing_bits(got, expected) == 0, "Gemm terms");
  // bfloat16: the operands widened exactly, the float32 result rounded to bfloat16.
  std::vector<uint16_t> a16(a.size()), b16(b.size()), y16(m * n);
  std::vector<float> a_wide(a.size()), b_wide(b.size());
  for (size_t i = 0; i < a.size(); ++i) a_wide[i] = lmul::bfloat16_to_float(a16[i] = lmul::float_to_bfloat16(a[i]));
  for (size_t i = 0; i < b.size(); ++i) b_wide[i] = lmul::bfloat16_to_float(b16[i] = lmul::float_to_bfloat16(b[i]));
  const std::vector<float> wide = reference_product(a_wide, b_wide, 1, m, k, n, false, 7);
  lmul::ProductOperands<lmul::BFloat16Storage> operands16;
  operands16.a = a16.data();
  operands16.b = b16.data();
  lmul::lmul_matrix_product<lmul::BFloat16Storage>(plan, operands16, 7, lmul::lmul_bias(7), nullptr, y16.data(), two_threads);
  size_t differ = 0;
  for (size_t i = 0; i < wide.size(); ++i) differ += y16[i] != lmul::float_to_bfloat16(wide[i]);
  check(differ == 0, "bfloat16 product", differ);
}

// Storage type S's values of `v` (rounded to it) and their exact float32 widening.
template <class S>
std::vector<typename S::type> stored(const std::vector<float>& v, std::vector<float>& widened) {
  std::vector<typename S::type> out(v.size());
  widened.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) widened[i] = S::load(out[i] = S::store(v[i]));
  return out;
}

// Constant weights packed once (pack_b): 16-bit panels exactly when the rounded values
// are bfloat16 bit patterns (m <= 7, whatever the storage type), 32-bit from m = 8, and
// products through either equal the scalar reference, zeros and subnormals of B included,
// transposed or not, for every storage type, on any schedule.
template <class S>
void compact_weights_of(std::mt19937& rng, int type_bits) {
  const size_t nr = lmul::panel_width();
  const size_t ms[] = {1, 3, 7, 13};
  for (int bits : {1, 4, 6, 7, 8, 10, 23}) {
    if (bits > type_bits) continue;
    for (int kind : {0, 1, 2}) {
      for (bool transposed : {false, true}) {
        const size_t m = ms[(static_cast<size_t>(bits) + static_cast<size_t>(kind)) % 4], k = 37, n = 70;
        std::vector<float> a_wide, b_wide;
        const auto a = stored<S>(operand(rng, m * k, kind == 1 ? 1 : 0), a_wide);
        const auto b = stored<S>(operand(rng, k * n, kind), b_wide);
        std::vector<float> b_rows(b_wide);  // K x N row-major view of B for the reference
        if (transposed) {
          for (size_t p = 0; p < k; ++p)
            for (size_t j = 0; j < n; ++j) b_rows[p * n + j] = b_wide[j * k + p];
        }
        const uint32_t bias = lmul::lmul_bias(bits);
        const std::vector<float> sums = reference_product(a_wide, b_rows, 1, m, k, n, false, bits, bias);
        const lmul::Shape b_shape =
            transposed ? lmul::Shape{int64_t(n), int64_t(k)} : lmul::Shape{int64_t(k), int64_t(n)};
        const auto packed = lmul::pack_b<S>(b.data(), b_shape, 1, k, n, transposed, bits, two_threads);
        const bool half = bits <= lmul::kHalfPanelMantissaBits;
        if (nr > 0) {
          check(half ? packed->half_panels && !packed->panels : packed->panels && !packed->half_panels,
                "16-bit panels exactly at m <= 7", static_cast<uint64_t>(bits));
          const size_t entries = (n + nr - 1) / nr * k * nr;
          const size_t zero_row_bytes = (n + nr - 1) / nr * lmul::zero_row_words(k) * sizeof(uint64_t);
          check(packed->bytes() == entries * (half ? 2 : 4) + zero_row_bytes, "packed bytes", packed->bytes());
        }
        lmul::MatMulPlan plan;
        plan.m = m;
        plan.k = k;
        plan.n = n;
        plan.out_shape = lmul::Shape{int64_t(m), int64_t(n)};  // (assigning a list: a GCC 12 false -Wnonnull)
        plan.a_matrices = plan.b_matrices = 1;
        plan.a_matrix = plan.b_matrix = {0};
        lmul::ProductOperands<S> operands;
        operands.a = a.data();
        operands.b = b.data();
        operands.trans_b = transposed;
        for (const lmul::PackedB* prepared : {packed.get(), static_cast<const lmul::PackedB*>(nullptr)}) {
          operands.prepared_b = prepared;
          std::vector<typename S::type> y(m * n);
          lmul::lmul_matrix_product<S>(plan, operands, bits, bias, nullptr, y.data(), two_threads);
          size_t differ = 0;
          for (size_t i = 0; i < y.size(); ++i) {
            const float want = S::load(S::store(sums[i])), got = S::load(y[i]);
            differ += lmul::float_bits(got) != lmul::float_bits(want);
          }
          check(differ == 0, prepared ? "compact weights, packed" : "compact weights, per call",
                (uint64_t(bits) << 8) | (uint64_t(kind) << 1) | uint64_t(transposed));
        }
      }
    }
  }
}

void compact_weights() {
  std::mt19937 rng(13);
  compact_weights_of<lmul::Float32Storage>(rng, lmul::kFloat32MantissaBits);
  compact_weights_of<lmul::Float16Storage>(rng, lmul::kFloat16MantissaBits);
  compact_weights_of<lmul::BFloat16Storage>(rng, lmul::kBFloat16MantissaBits);
  // More rows than one task takes against 16-bit panels (several widened row blocks),
  // zeros on both sides.
  const size_t m = 800, k = 20, n = 70;
  const std::vector<float> a = operand(rng, m * k, 1), b = operand(rng, k * n, 1);
  const std::vector<float> expected = reference_product(a, b, 1, m, k, n, false, 4);
  lmul::MatMulPlan plan;
  std::string error;
  check(lmul::make_matmul_plan({int64_t(m), int64_t(k)}, {int64_t(k), int64_t(n)}, plan, error), "plan");
  const auto packed = lmul::pack_b<lmul::Float32Storage>(b.data(), {int64_t(k), int64_t(n)}, 1, k, n, false, 4,
                                                         two_threads);
  lmul::ProductOperands<lmul::Float32Storage> operands;
  operands.a = a.data();
  operands.b = b.data();
  operands.prepared_b = packed.get();
  std::vector<float> got(m * n, -1.0f);
  lmul::lmul_matrix_product<lmul::Float32Storage>(plan, operands, 4, lmul::lmul_bias(4), nullptr, got.data(),
                                                  two_threads);
  check(differing_bits(got, expected) == 0, "compact weights, many rows", differing_bits(got, expected));
}

// The element-wise map's one-add first pass (and its fall-back) equal the scalar product.
void elementwise_pass() {
  std::mt19937 rng(9);
  for (int kind : {0, 1, 2, 3, 4, 6, 7}) {
    for (int bits : {23, 4, 1}) {
      // 2500: blocks of 1024 and a partial one
      std::vector<float> a = operand(rng, 2500, kind), b = operand(rng, 2500, kind == 6 ? 6 : 0);
      if (kind == 0) a[1500] = std::numeric_limits<float>::infinity();  // one block falls back
      const uint32_t bias = lmul::lmul_bias_for_offset(static_cast<uint32_t>(kind) * 1000003u % lmul::kOffsetLimit);
      std::vector<float> scalar(a.size());
      lmul::lmul_run<lmul::Float32Storage>(a.data(), 1, b.data(), 1, scalar.data(), a.size(), bits, bias);
      for (bool stream : {false, true}) {
        // streamed: to an output that is not 16-byte aligned (its head stored plainly)
        std::vector<float> out(a.size() + 1);
        std::vector<float> fast(a.size());
        lmul::lmul_run_float32(a.data(), 1, b.data(), 1, out.data() + stream, a.size(), bits, bias, stream);
        std::copy(out.begin() + stream, out.begin() + stream + a.size(), fast.begin());
        check(differing_bits(fast, scalar) == 0, "element-wise pass",
              (uint64_t(stream) << 16) | (uint64_t(kind) << 8) | uint64_t(bits));
      }
    }
  }
}

// OperandRange::scan against a one-value-at-a-time reference: zeros, subnormals,
// infinities and NaN (either sign) alone or mixed, in runs that cross its blocks, and
// blocks that hold only them.
void operand_range_scan() {
  struct Reference {
    uint32_t min_nonzero = 0xFFFFFFFFu, max_magnitude = 0;
    bool has_zero = false, has_special = false;
    uint64_t zeros = 0;
    void add(uint32_t bits) {
      const uint32_t m = bits & 0x7FFFFFFFu;
      if (m < 0x00800000u) has_zero = true;
      if (m < 0x00800000u) ++zeros;
      if (m >= 0x7F800000u) has_special = true;
      if (m >= 0x00800000u) min_nonzero = std::min(min_nonzero, m);
      if (m < 0x7F800000u) max_magnitude = std::max(max_magnitude, m);
    }
  };
  std::mt19937 rng(31);
  const uint32_t odd[] = {0u, 0x80000000u, 1u, 0x007FFFFFu, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7FFFFFFFu};
  const size_t counts[] = {1, 15, 16, 17, 4095, 4096, 4097, 9000};
  for (size_t count : counts) {
    for (int mix = 0; mix < 6; ++mix) {
      // mix 0: normal only; 1: zeros; 2: specials; 3: both; 4: only odd values; 5: one odd
      // value in the last block only
      std::vector<uint32_t> bits(count);
      std::uniform_int_distribution<uint32_t> normal(0x00800000u, 0x7F7FFFFFu);
      for (auto& x : bits) x = normal(rng) | (rng() & 0x80000000u);
      for (size_t i = 0; i < count; ++i) {
        const uint32_t pick = odd[rng() % 8];
        const bool is_zero = (pick & 0x7FFFFFFFu) < 0x00800000u;
        if ((mix == 1 && is_zero && rng() % 7 == 0) || (mix == 2 && !is_zero && rng() % 7 == 0) ||
            (mix == 3 && rng() % 5 == 0) || mix == 4)
          bits[i] = pick;
      }
      if (mix == 5) bits[count - 1] = odd[rng() % 8];
      Reference expected;
      for (uint32_t x : bits) expected.add(x);
      lmul::OperandRange got;
      got.scan(bits.data(), bits.size());
      const bool ok = got.min_nonzero == expected.min_nonzero && got.max_magnitude == expected.max_magnitude &&
                      got.has_zero == expected.has_zero && got.has_special == expected.has_special &&
                      got.zeros == expected.zeros;
      check(ok, "OperandRange::scan against the reference", count * 8 + static_cast<size_t>(mix));
    }
  }
}

}  // namespace

int main() {
  spec_worked_values();
  operand_range_scan();
  conversions();
  matmul_variants();
  clamped_variants();
  matrix_products();
  per_call_b_range_every_column();
  sparse_zeros_of_a();
  zero_bits_of_rows_reference();
  small_m_paths();
  small_m_clamped();
  concurrency_and_split();
  concurrency_measurements();
  broadcast_a_in_place();
  conv_split_for_threads();
  compact_weights();
  gemm_terms_and_storage();
  elementwise_pass();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
