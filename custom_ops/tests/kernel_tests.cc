// Stand-alone tests of the C++ arithmetic, without onnxruntime: SPEC worked values, the
// float16/bfloat16 conversions, and every matmul variant against the portable loop.
// Built by tests/test_cpp_kernels.py (or CMake with -DLMUL_BUILD_TESTS=ON); prints
// "N passed, M failed" and exits non-zero on a failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "lmul_arith.h"
#include "lmul_gemm.h"
#include "lmul_kernels.h"

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
void matmul_variants() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t m = 13, k = 70, n = 150;
  std::uniform_int_distribution<uint32_t> any_offset(0u, lmul::kOffsetLimit - 1u);
  for (int zeros = 0; zeros < 4; ++zeros) {
    for (int bits : {23, 4, 3}) {
      std::vector<uint32_t> a(m * k), b(k * n);
      for (auto& x : a) x = lmul::round_mantissa_bits(lmul::float_bits(normal(rng)), bits);
      for (auto& x : b) x = lmul::round_mantissa_bits(lmul::float_bits(normal(rng)), bits);
      if (zeros & 1) for (size_t i = 0; i < a.size(); i += 3) a[i] = 0;
      if (zeros & 2) for (size_t i = 0; i < b.size(); i += 5) b[i] = 0x80000000u;  // -0
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
      check(variant == wanted[zeros], "variant chosen", static_cast<uint64_t>(variant));
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

}  // namespace

int main() {
  spec_worked_values();
  conversions();
  matmul_variants();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
