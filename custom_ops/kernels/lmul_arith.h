// The L-Mul arithmetic of docs/SPEC.md, element by element, in plain C++17.
//
// No onnxruntime types: this header is the single C++ home of the numbers, used by the
// bulk kernels (lmul_kernels.cc) and testable on its own. Every function mirrors a step
// of SPEC section 1 (float32) or section 2 (float16/bfloat16 conversions), and lmul_onnx/
// numerics.py is the numpy twin the tests compare against bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

namespace lmul {

constexpr int kFloat32MantissaBits = 23;
constexpr int kFloat16MantissaBits = 10;
constexpr int kBFloat16MantissaBits = 7;

constexpr uint32_t kSignBit = 0x80000000u;
constexpr uint32_t kMagnitudeMask = 0x7FFFFFFFu;
constexpr uint32_t kInfBits = 0x7F800000u;
constexpr uint32_t kQuietNanBits = 0x7FC00000u;
constexpr uint32_t kOneBits = 0x3F800000u;
constexpr uint32_t kSmallestNormalBits = 0x00800000u;

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// l(m): the paper's offset exponent.
constexpr int offset_exponent_bits(int mantissa_bits) {
  return mantissa_bits <= 3 ? mantissa_bits : (mantissa_bits == 4 ? 3 : 4);
}

// SPEC 1, step 1: round a float32 bit pattern to `mantissa_bits` mantissa bits,
// round-to-nearest-even, saturating at the largest finite m-bit value. NaN and infinity
// pass through. Precondition: 1 <= mantissa_bits <= 23 (checked by the callers).
// The rounding itself, for 1 <= drop <= 22 low bits dropped; branch-free.
inline uint32_t round_dropping_bits(uint32_t bits, uint32_t drop) {
  const uint32_t magnitude = bits & kMagnitudeMask;
  const uint32_t lsb = (magnitude >> drop) & 1u;
  // magnitude <= 0x7FFFFFFF and the addend < 2^22: the sum cannot wrap around.
  uint32_t rounded = ((magnitude + (1u << (drop - 1u)) - 1u + lsb) >> drop) << drop;
  const uint32_t largest_finite = (0x7F7FFFFFu >> drop) << drop;
  rounded = rounded > largest_finite ? largest_finite : rounded;
  rounded = magnitude >= kInfBits ? magnitude : rounded;  // NaN and infinity pass through
  return rounded | (bits & kSignBit);
}

inline uint32_t round_mantissa_bits(uint32_t bits, int mantissa_bits) {
  const int drop = kFloat32MantissaBits - mantissa_bits;
  return drop == 0 ? bits : round_dropping_bits(bits, static_cast<uint32_t>(drop));
}

// SPEC 4: the optional `offset` attribute, 0 <= offset < 2^23; absent = the paper's
// 2^(23 - l(m)) (SPEC 1, step 3).
constexpr uint32_t kOffsetLimit = 1u << kFloat32MantissaBits;
constexpr uint32_t paper_offset(int mantissa_bits) {
  return 1u << (kFloat32MantissaBits - offset_exponent_bits(mantissa_bits));
}

// The additive constant of SPEC 1, step 3 (SPEC 4), folded: r = |a| + |b| - bias, with
// bias = 0x3F800000 - offset. For every offset < 2^23 it lies in (0x3F000000, 0x3F800000]:
// positive, and bias + 0x7F800000 < 2^32, so unsigned arithmetic works.
constexpr uint32_t lmul_bias_for_offset(uint32_t offset) { return kOneBits - offset; }

// The paper's bias (no `offset` attribute).
constexpr uint32_t lmul_bias(int mantissa_bits) { return lmul_bias_for_offset(paper_offset(mantissa_bits)); }

// SPEC 1, steps 2 and 3, on operands that are already rounded to m bits. Written as
// selects, without branches, so that compilers vectorise loops over it.
inline uint32_t lmul_rounded_bits(uint32_t a, uint32_t b, uint32_t bias) {
  const uint32_t sign = (a ^ b) & kSignBit;
  const uint32_t am = a & kMagnitudeMask;
  const uint32_t bm = b & kMagnitudeMask;
  const uint32_t sum = am + bm;  // at most 0xFFFFFFFE: no wrap-around
  // r = sum - bias; underflow when r < 2^23, overflow when r >= 0x7F800000.
  uint32_t result = sum - bias;
  result = sum < bias + kSmallestNormalBits ? 0u : result;
  result = sum >= bias + kInfBits ? kInfBits : result;
  const bool any_zero = (am < kSmallestNormalBits) | (bm < kSmallestNormalBits);
  const bool any_inf = (am == kInfBits) | (bm == kInfBits);
  const bool any_nan = (am > kInfBits) | (bm > kInfBits) | (any_inf & any_zero);
  result = any_zero ? 0u : result;
  result = any_inf ? kInfBits : result;
  result |= sign;
  return any_nan ? kQuietNanBits : result;
}

// SPEC 1, steps 2 and 3, for operands known to be normal numbers (no zero, subnormal,
// infinity or NaN): only underflow and overflow remain to check. Same bits as
// lmul_rounded_bits on such operands, in fewer operations.
inline uint32_t lmul_normal_bits(uint32_t a, uint32_t b, uint32_t bias) {
  const uint32_t sum = (a & kMagnitudeMask) + (b & kMagnitudeMask);
  uint32_t result = sum - bias;
  result = sum < bias + kSmallestNormalBits ? 0u : result;
  result = sum >= bias + kInfBits ? kInfBits : result;
  return result | ((a ^ b) & kSignBit);
}

// SPEC 1 in full: L-Mul of two float32 values at mantissa width m, with the bias of the
// chosen offset (lmul_bias_for_offset; SPEC 4).
inline float lmul_float(float a, float b, int mantissa_bits, uint32_t bias) {
  const uint32_t ra = round_mantissa_bits(float_bits(a), mantissa_bits);
  const uint32_t rb = round_mantissa_bits(float_bits(b), mantissa_bits);
  return bits_float(lmul_rounded_bits(ra, rb, bias));
}

// The same with the paper's offset.
inline float lmul_float(float a, float b, int mantissa_bits) {
  return lmul_float(a, b, mantissa_bits, lmul_bias(mantissa_bits));
}

// ---- SPEC 2: exact widening and round-to-nearest-even narrowing ----

inline float float16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return bits_float(sign | kInfBits | (mantissa << 13));
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_float(sign);
  // Subnormal half: normalise into a float32 normal value.
  uint32_t e = 113;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return bits_float(sign | (e << 23) | ((mantissa & 0x3FFu) << 13));
}

inline uint16_t float_to_float16(float f) {
  const uint32_t bits = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & kMagnitudeMask;
  if (magnitude > kInfBits) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (magnitude >= 0x38800000u) {  // half-normal range or above (>= 2^-14)
    uint32_t r = magnitude - 0x38000000u;  // rebias 127 -> 15
    r = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
    if (r >= 0x7C00u) r = 0x7C00u;  // overflow (and infinity) -> infinity
    return static_cast<uint16_t>(sign | r);
  }
  if (magnitude < 0x33000000u) return sign;  // below half the smallest subnormal
  // Half-subnormal result: value / 2^-24 = significand >> (126 - exponent), RNE.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // 14..24
  uint32_t q = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

inline float bfloat16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bfloat16(float f) {
  const uint32_t bits = float_bits(f);
  if ((bits & kMagnitudeMask) > kInfBits) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // Carries into the exponent (and to infinity) are the correct rounding.
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// Element types the ops accept, with their conversions to and from float32.
enum class ElementType { kFloat32, kFloat16, kBFloat16 };

constexpr int type_mantissa_bits(ElementType t) {
  return t == ElementType::kFloat32   ? kFloat32MantissaBits
         : t == ElementType::kFloat16 ? kFloat16MantissaBits
                                      : kBFloat16MantissaBits;
}

}  // namespace lmul
