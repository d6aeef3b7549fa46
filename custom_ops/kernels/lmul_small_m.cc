#include "lmul_small_m.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <type_traits>

#include "clamped_step.h"
#include "lmul_arith.h"
#include "lmul_kernels.h"

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>
#endif

namespace lmul {

namespace {

// The portable loop on columns [j0, j1): SPEC 1 for every product, exact for any data.
// Always inlined, so that each target clone of its caller gets its own copy.
template <bool kRound>
__attribute__((always_inline)) inline void portable_block(const uint32_t* a, size_t rows, size_t k, const float* b,
                                                          size_t ldb, size_t j0, size_t j1, int mantissa_bits,
                                                          uint32_t bias, float* c, size_t ldc) {
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
                 int mantissa_bits, uint32_t bias, float* c, size_t ldc) {
  if (mantissa_bits == kFloat32MantissaBits) {
    portable_block<false>(a, rows, k, b, ldb, j0, j1, mantissa_bits, bias, c, ldc);
  } else {
    portable_block<true>(a, rows, k, b, ldb, j0, j1, mantissa_bits, bias, c, ldc);
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

// Whether a one-add pass is worth trying before B's range is known: not when A's range
// alone needs every non-zero |b| above 2^-20 (or below 2^20) for it to be exact, as with
// the tiny probabilities of a peaked softmax (p.V while decoding). The clamped pass then
// goes first instead of after a one-add pass whose sums would be thrown away.
bool one_add_plausible(const OperandRange& a, uint32_t bias) {
  if (a.min_nonzero == 0xFFFFFFFFu) return true;
  constexpr uint64_t kSmall = 0x35800000u, kLarge = 0x49800000u;  // 2^-20, 2^20
  return uint64_t{bias} + kSmallestNormalBits <= a.min_nonzero + kSmall &&
         uint64_t{a.max_magnitude} + kLarge < uint64_t{bias} + kInfBits;
}

// How a pass went: exact; not exact because B has zeros (a pass with masks will be); not
// exact because some product is not one add (the clamped pass will be); or B has an
// infinity, a NaN or a value that saturates when rounded (the portable loop must do it).
enum class Pass { kExact, kHasZeros, kNotOneAdd, kSpecialB };

// The sums of R rows x V vectors (of float lanes) from column j: zero on a block's first
// pass, else C's; and back. Plain copies, which compile to vector loads and stores in
// the chunk kernels they are inlined into (any instruction set).
template <int R, int V, class Vec>
__attribute__((always_inline)) inline void load_sums(Vec (&acc)[R][V], const float* c, size_t ldc, size_t j,
                                                     bool first) {
  constexpr size_t kLanes = sizeof(Vec) / sizeof(float);
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      if (first) {
        acc[r][v] = Vec{};
      } else {
        std::memcpy(&acc[r][v], c + r * ldc + j + kLanes * v, sizeof(Vec));
      }
    }
  }
}
template <int R, int V, class Vec>
__attribute__((always_inline)) inline void store_sums(const Vec (&acc)[R][V], float* c, size_t ldc, size_t j) {
  constexpr size_t kLanes = sizeof(Vec) / sizeof(float);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) std::memcpy(c + r * ldc + j + kLanes * v, &acc[r][v], sizeof(Vec));
}

// The smallest and the largest of a vector's unsigned 32-bit lanes.
template <class Vec>
uint32_t lanes_min(const Vec& x) {
  uint32_t lanes[sizeof(Vec) / sizeof(uint32_t)];
  std::memcpy(lanes, &x, sizeof lanes);
  return *std::min_element(std::begin(lanes), std::end(lanes));
}
template <class Vec>
uint32_t lanes_max(const Vec& x) {
  uint32_t lanes[sizeof(Vec) / sizeof(uint32_t)];
  std::memcpy(lanes, &x, sizeof lanes);
  return *std::max_element(std::begin(lanes), std::end(lanes));
}

// What the AVX-512 passes share: B's magnitudes rounded to the kept bits (SPEC 1, step
// 1) without the saturation and the pass-through of specials (a value that would
// saturate, infinity and NaN all come out >= 0x7F800000, which sends the block to the
// portable loop).
template <bool kRound>
struct Avx512Common {
  static constexpr size_t kLanes = 16;
  using Mask = __mmask16;
  static constexpr Mask kAllLanes = 0xFFFF;
  __m128i drop;
  __m512i half_minus_one, kept, magnitude_mask, sign_mask;

  __attribute__((target("avx512f"))) explicit Avx512Common(int mantissa_bits) {
    const uint32_t bits = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
    drop = _mm_cvtsi32_si128(static_cast<int>(bits));
    half_minus_one = _mm512_set1_epi32(kRound ? static_cast<int>((1u << (bits - 1u)) - 1u) : 0);
    kept = _mm512_set1_epi32(static_cast<int>(~((1u << bits) - 1u)));
    magnitude_mask = _mm512_set1_epi32(static_cast<int>(kMagnitudeMask));
    sign_mask = _mm512_set1_epi32(static_cast<int>(kSignBit));
  }

  __attribute__((target("avx512f"), always_inline)) inline __m512i magnitude(__m512i y) const {
    const __m512i m = _mm512_and_si512(y, magnitude_mask);
    if (!kRound) return m;
    // (masked forms: GCC 12 warns about the unmasked ones' undefined pass-through operand)
    const __m512i lsb = _mm512_and_si512(_mm512_mask_srl_epi32(m, 0xFFFF, m, drop), _mm512_set1_epi32(1));
    return _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(m, half_minus_one), lsb), kept);
  }
};

// The same for AVX2: 8 lanes, no mask registers (a lane mask is an int, -1 or 0).
template <bool kRound>
struct Avx2Common {
  static constexpr size_t kLanes = 8;
  using Mask = int;
  static constexpr Mask kAllLanes = -1;
  __m128i drop;
  __m256i half_minus_one, kept, magnitude_mask, sign_mask, lsb_bit;

  __attribute__((target("avx2"))) explicit Avx2Common(int mantissa_bits) {
    const uint32_t bits = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
    drop = _mm_cvtsi32_si128(static_cast<int>(bits));
    half_minus_one = _mm256_set1_epi32(kRound ? static_cast<int>((1u << (bits - 1u)) - 1u) : 0);
    kept = _mm256_set1_epi32(static_cast<int>(~((1u << bits) - 1u)));
    magnitude_mask = _mm256_set1_epi32(static_cast<int>(kMagnitudeMask));
    sign_mask = _mm256_set1_epi32(static_cast<int>(kSignBit));
    lsb_bit = _mm256_set1_epi32(1);
  }

  __attribute__((target("avx2"), always_inline)) inline __m256i magnitude(__m256i y) const {
    const __m256i m = _mm256_and_si256(y, magnitude_mask);
    if (!kRound) return m;
    const __m256i lsb = _mm256_and_si256(_mm256_srl_epi32(m, drop), lsb_bit);
    return _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(m, half_minus_one), lsb), kept);
  }
};

// Rows of B per pass over the columns: the sums go through memory once per pass. Many
// when B's rows are short (B is then read nearly in order anyway), few when they are
// long, so that each pass reads few, long, sequential streams (what prefetchers follow).
constexpr size_t kMaxRowsPerPass = 64;
inline size_t rows_per_pass(size_t ldb) { return ldb <= 256 ? kMaxRowsPerPass : 8; }

// Accumulator vectors per row: enough independent sums to hide the add latency.
constexpr int vectors_per_chunk(int rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }

// One pass's view of A: per row and k, A prepared by the chunk kernel (Chunks::prepare:
// a - bias for one add), and for a zero's products a lane mask that skips them (one-add
// passes) or a's sign as +-1, 0 for a zero (clamped passes).
template <int R, class Mask>
struct PassOfA {
  int prepared[kMaxRowsPerPass][R];
  float sign[kMaxRowsPerPass][R];
  Mask lanes[kMaxRowsPerPass][R];
};

// A pass over columns [j0, j1) (whole vectors) of R rows, with the chunk kernel of one
// instruction set (Avx512Chunks, Avx2Chunks or their clamped forms below): passes of
// rows_per_pass(ldb) rows of B; in each, chunks of V vectors, then single vectors, from
// j0 to j1.
template <class Chunks>
Pass block_pass(const uint32_t* a, size_t k, const OperandRange& a_range, const float* b, size_t ldb, size_t j0,
                size_t j1, int mantissa_bits, uint32_t bias, float* c, size_t ldc) {
  constexpr int R = Chunks::kRows, V = vectors_per_chunk(R);
  constexpr size_t kLanes = Chunks::kLanes;
  Chunks chunks(mantissa_bits);
  PassOfA<R, typename Chunks::Mask> pass;
  const size_t per_pass = rows_per_pass(ldb);
  for (size_t p0 = 0; p0 < k; p0 += per_pass) {
    const size_t steps = std::min(per_pass, k - p0);
    for (size_t s = 0; s < steps; ++s) {
      for (int r = 0; r < R; ++r) {
        const uint32_t x = a[r * k + p0 + s];
        const bool zero = (x & kMagnitudeMask) < kSmallestNormalBits;
        pass.prepared[s][r] = Chunks::prepare(x, bias);
        if constexpr (Chunks::kClamped) {
          pass.sign[s][r] = zero ? 0.0f : x & kSignBit ? -1.0f : 1.0f;
        } else {
          pass.lanes[s][r] = zero ? 0 : Chunks::kAllLanes;
        }
      }
    }
    const float* rows = b + p0 * ldb;
    size_t j = j0;
    for (; j + kLanes * V <= j1; j += kLanes * V) chunks.template run<V>(pass, rows, ldb, steps, p0 == 0, c, ldc, j);
    for (; j < j1; j += kLanes) chunks.template run<1>(pass, rows, ldb, steps, p0 == 0, c, ldc, j);
  }
  uint32_t smallest = 0, largest = 0;
  chunks.range(smallest, largest);
  if (largest >= kInfBits) return Pass::kSpecialB;
  if constexpr (Chunks::kClamped) return Pass::kExact;  // exact for any finite B
  if (!Chunks::kMaskB && smallest < kSmallestNormalBits) {
    // B has zeros: a pass with masks is worth it only if no product can overflow.
    const bool overflows = uint64_t{a_range.max_magnitude} + largest >= uint64_t{bias} + kInfBits;
    return overflows ? Pass::kNotOneAdd : Pass::kHasZeros;
  }
  return one_add_exact(a_range, smallest, largest, bias) ? Pass::kExact : Pass::kNotOneAdd;
}

// AVX-512: V vectors of 16 columns from j, R rows, `steps` rows of B from b (already at
// the pass's first row); the sums start at zero on the first pass, else from C. Without
// kMaskB, B is taken to have no zeros, and b_min (over every value) tells whether it had.
template <int R, bool kRound, bool kMaskA, bool kMaskBZeros>
struct Avx512Chunks : Avx512Common<kRound> {
  using Common = Avx512Common<kRound>;
  using typename Common::Mask;
  static constexpr int kRows = R;
  static constexpr bool kMaskB = kMaskBZeros, kClamped = false;
  __m512i smallest_normal, b_min, b_max;

  static int prepare(uint32_t x, uint32_t bias) { return static_cast<int>(x - bias); }

  __attribute__((target("avx512f"))) explicit Avx512Chunks(int mantissa_bits) : Common(mantissa_bits) {
    smallest_normal = _mm512_set1_epi32(static_cast<int>(kSmallestNormalBits));
    b_min = _mm512_set1_epi32(-1);
    b_max = _mm512_setzero_si512();
  }

  template <int V>
  __attribute__((target("avx512f"))) void run(const PassOfA<R, Mask>& a, const float* b, size_t ldb, size_t steps,
                                              bool first, float* c, size_t ldc, size_t j) {
    __m512 acc[R][V];
    load_sums(acc, c, ldc, j, first);
    __m512i lo = b_min, hi = b_max;
    for (size_t s = 0; s < steps; ++s) {
      for (int v = 0; v < V; ++v) {
        __m512i y = _mm512_loadu_si512(b + s * ldb + j + 16 * v);
        const __m512i magnitude = this->magnitude(y);
        if (kRound) y = _mm512_or_si512(magnitude, _mm512_and_si512(y, this->sign_mask));
        __mmask16 lanes = 0xFFFF;
        if (kMaskB) {
          lanes = _mm512_cmpge_epu32_mask(magnitude, smallest_normal);
          lo = _mm512_mask_min_epu32(lo, lanes, lo, magnitude);
        } else {
          lo = _mm512_mask_min_epu32(lo, 0xFFFF, lo, magnitude);  // unmasked forms warn in GCC 12
        }
        hi = _mm512_mask_max_epu32(hi, 0xFFFF, hi, magnitude);
        for (int r = 0; r < R; ++r) {
          const __m512 product = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32(a.prepared[s][r]), y));
          if (kMaskA || kMaskB) {
            const __mmask16 active = kMaskA ? static_cast<__mmask16>(lanes & a.lanes[s][r]) : lanes;
            acc[r][v] = _mm512_mask_add_ps(acc[r][v], active, acc[r][v], product);
          } else {
            acc[r][v] = _mm512_add_ps(acc[r][v], product);
          }
        }
      }
    }
    b_min = lo;
    b_max = hi;
    store_sums(acc, c, ldc, j);
  }

  __attribute__((target("avx512f"))) void range(uint32_t& smallest, uint32_t& largest) const {
    smallest = lanes_min(b_min);
    largest = lanes_max(b_max);
  }
};

// The same with AVX2, 8 columns per vector and no mask registers: a skipped product adds
// +0, which leaves every sum as it was (a sum that starts at +0 never becomes -0).
template <int R, bool kRound, bool kMaskA, bool kMaskBZeros>
struct Avx2Chunks : Avx2Common<kRound> {
  using Common = Avx2Common<kRound>;
  using typename Common::Mask;
  static constexpr int kRows = R;
  static constexpr bool kMaskB = kMaskBZeros, kClamped = false;
  __m256i below_normal, ones, b_min, b_max;

  static int prepare(uint32_t x, uint32_t bias) { return static_cast<int>(x - bias); }

  __attribute__((target("avx2"))) explicit Avx2Chunks(int mantissa_bits) : Common(mantissa_bits) {
    below_normal = _mm256_set1_epi32(static_cast<int>(kSmallestNormalBits - 1u));
    ones = _mm256_set1_epi32(-1);
    b_min = ones;
    b_max = _mm256_setzero_si256();
  }

  template <int V>
  __attribute__((target("avx2"))) void run(const PassOfA<R, Mask>& a, const float* b, size_t ldb, size_t steps,
                                           bool first, float* c, size_t ldc, size_t j) {
    __m256 acc[R][V];
    load_sums(acc, c, ldc, j, first);
    __m256i lo = b_min, hi = b_max;
    for (size_t s = 0; s < steps; ++s) {
      for (int v = 0; v < V; ++v) {
        __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + s * ldb + j + 8 * v));
        const __m256i magnitude = this->magnitude(y);
        if (kRound) y = _mm256_or_si256(magnitude, _mm256_and_si256(y, this->sign_mask));
        // Signed compare: a magnitude >= 2^31 (rounded NaN) counts as zero here, but the
        // unsigned maximum still sees it.
        __m256i lanes = ones;  // B's non-zero lanes
        if (kMaskB) {
          lanes = _mm256_cmpgt_epi32(magnitude, below_normal);
          lo = _mm256_min_epu32(lo, _mm256_blendv_epi8(ones, magnitude, lanes));
        } else {
          lo = _mm256_min_epu32(lo, magnitude);
        }
        hi = _mm256_max_epu32(hi, magnitude);
        for (int r = 0; r < R; ++r) {
          __m256i product = _mm256_add_epi32(_mm256_set1_epi32(a.prepared[s][r]), y);
          if (kMaskA) product = _mm256_and_si256(product, _mm256_set1_epi32(a.lanes[s][r]));
          if (kMaskB) product = _mm256_and_si256(product, lanes);
          acc[r][v] = _mm256_add_ps(acc[r][v], _mm256_castsi256_ps(product));
        }
      }
    }
    b_min = lo;
    b_max = hi;
    store_sums(acc, c, ldc, j);
  }

  __attribute__((target("avx2"))) void range(uint32_t& smallest, uint32_t& largest) const {
    smallest = lanes_min(b_min);
    largest = lanes_max(b_max);
  }
};

// AVX-512 for products that may underflow or overflow: clamped_step.h's product with B
// read in place. A zero of A is prepared as a'' = 0 with s_a = 0: its sums u = |b| stay
// below kClampHigh, and it adds +-0. Exact for every finite B; b_max (the largest
// rounded |b|) tells whether B had anything else.
template <int R, bool kRound>
struct Avx512ClampedChunks : Avx512Common<kRound> {
  using Common = Avx512Common<kRound>;
  using typename Common::Mask;
  static constexpr int kRows = R;
  static constexpr bool kMaskB = true, kClamped = true;
  __m512i smallest_normal, b_max;

  static int prepare(uint32_t x, uint32_t bias) {
    const uint32_t magnitude = x & kMagnitudeMask;
    return static_cast<int>(magnitude < kSmallestNormalBits ? 0u : magnitude + (kClampOffset - bias));
  }

  __attribute__((target("avx512f"))) explicit Avx512ClampedChunks(int mantissa_bits) : Common(mantissa_bits) {
    smallest_normal = _mm512_set1_epi32(static_cast<int>(kSmallestNormalBits));
    b_max = _mm512_setzero_si512();
  }

  template <int V>
  __attribute__((target("avx512f"))) void run(const PassOfA<R, Mask>& a, const float* b, size_t ldb, size_t steps,
                                              bool first, float* c, size_t ldc, size_t j) {
    __m512 acc[R][V];
    load_sums(acc, c, ldc, j, first);
    __m512i hi = b_max;
    for (size_t s = 0; s < steps; ++s) {
      for (int v = 0; v < V; ++v) {
        const __m512i y = _mm512_loadu_si512(b + s * ldb + j + 16 * v);
        const __m512i magnitude = this->magnitude(y);
        hi = _mm512_mask_max_epu32(hi, 0xFFFF, hi, magnitude);  // (unmasked forms warn in GCC 12)
        const __mmask16 nonzero = _mm512_cmpge_epu32_mask(magnitude, smallest_normal);
        const __m512i constant = clamped_constant_avx512(y);  // (rounding leaves the sign)
        for (int r = 0; r < R; ++r) {
          acc[r][v] = clamped_step_avx512<true, true>(acc[r][v], _mm512_set1_epi32(a.prepared[s][r]),
                                                      _mm512_set1_ps(a.sign[s][r]), magnitude, constant, nonzero);
        }
      }
    }
    b_max = hi;
    store_sums(acc, c, ldc, j);
  }

  __attribute__((target("avx512f"))) void range(uint32_t& smallest, uint32_t& largest) const {
    smallest = 0;  // not tracked: zeros are masked
    largest = lanes_max(b_max);
  }
};

// The same with AVX2 (clamped_step.h: u kept offset by 2^31, so prepare() gives
// a'' ^ 2^31, and the lanes to skip are zeroed before the multiply-add).
template <int R, bool kRound>
struct Avx2ClampedChunks : Avx2Common<kRound> {
  using Common = Avx2Common<kRound>;
  using typename Common::Mask;
  static constexpr int kRows = R;
  static constexpr bool kMaskB = true, kClamped = true;
  __m256i smallest_normal, b_max;

  static int prepare(uint32_t x, uint32_t bias) {
    return Avx512ClampedChunks<R, kRound>::prepare(x, bias) ^ static_cast<int>(kSignBit);
  }

  __attribute__((target("avx2"))) explicit Avx2ClampedChunks(int mantissa_bits) : Common(mantissa_bits) {
    smallest_normal = _mm256_set1_epi32(static_cast<int>(kSmallestNormalBits));
    b_max = _mm256_setzero_si256();
  }

  template <int V>
  __attribute__((target("avx2,fma"))) void run(const PassOfA<R, Mask>& a, const float* b, size_t ldb, size_t steps,
                                               bool first, float* c, size_t ldc, size_t j) {
    __m256 acc[R][V];
    load_sums(acc, c, ldc, j, first);
    __m256i hi = b_max;
    for (size_t s = 0; s < steps; ++s) {
      for (int v = 0; v < V; ++v) {
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + s * ldb + j + 8 * v));
        const __m256i magnitude = this->magnitude(y);
        hi = _mm256_max_epu32(hi, magnitude);
        // Signed compare: a magnitude >= 2^31 (a rounded NaN) counts as zero here, but the
        // unsigned maximum still sees it.
        const __m256i threshold = clamped_threshold_avx2<true>(_mm256_cmpgt_epi32(smallest_normal, magnitude));
        const __m256i constant = clamped_constant_avx2(y);
        for (int r = 0; r < R; ++r) {
          acc[r][v] = clamped_step_avx2<true, true>(acc[r][v], _mm256_set1_epi32(a.prepared[s][r]),
                                                    _mm256_set1_ps(a.sign[s][r]), magnitude, constant, threshold);
        }
      }
    }
    b_max = hi;
    store_sums(acc, c, ldc, j);
  }

  __attribute__((target("avx2"))) void range(uint32_t& smallest, uint32_t& largest) const {
    smallest = 0;  // not tracked: zeros are masked
    largest = lanes_max(b_max);
  }
};

using FastBlock = Pass (*)(const uint32_t*, size_t, const OperandRange&, const float*, size_t, size_t, size_t, int,
                           uint32_t, float*, size_t);

template <int R>
FastBlock fast_block_for(bool avx512, bool round, bool mask_a, bool mask_b) {
  const int index = (round ? 4 : 0) + (mask_a ? 2 : 0) + (mask_b ? 1 : 0);
  static constexpr FastBlock kAvx512[] = {
      block_pass<Avx512Chunks<R, false, false, false>>, block_pass<Avx512Chunks<R, false, false, true>>,
      block_pass<Avx512Chunks<R, false, true, false>>,  block_pass<Avx512Chunks<R, false, true, true>>,
      block_pass<Avx512Chunks<R, true, false, false>>,  block_pass<Avx512Chunks<R, true, false, true>>,
      block_pass<Avx512Chunks<R, true, true, false>>,   block_pass<Avx512Chunks<R, true, true, true>>};
  static constexpr FastBlock kAvx2[] = {
      block_pass<Avx2Chunks<R, false, false, false>>, block_pass<Avx2Chunks<R, false, false, true>>,
      block_pass<Avx2Chunks<R, false, true, false>>,  block_pass<Avx2Chunks<R, false, true, true>>,
      block_pass<Avx2Chunks<R, true, false, false>>,  block_pass<Avx2Chunks<R, true, false, true>>,
      block_pass<Avx2Chunks<R, true, true, false>>,   block_pass<Avx2Chunks<R, true, true, true>>};
  return avx512 ? kAvx512[index] : kAvx2[index];
}

template <int R>
FastBlock clamped_block_for(bool avx512, bool round) {
  if (avx512) return round ? block_pass<Avx512ClampedChunks<R, true>> : block_pass<Avx512ClampedChunks<R, false>>;
  return round ? block_pass<Avx2ClampedChunks<R, true>> : block_pass<Avx2ClampedChunks<R, false>>;
}

// pick(std::integral_constant<int, R>) for R = rows (1 to kSmallMMaxRows): the pass
// instantiated for that many rows.
template <class Pick>
FastBlock for_rows(size_t rows, Pick pick) {
  static_assert(kSmallMMaxRows == 8, "one case per row count");
  switch (rows) {
    case 1: return pick(std::integral_constant<int, 1>{});
    case 2: return pick(std::integral_constant<int, 2>{});
    case 3: return pick(std::integral_constant<int, 3>{});
    case 4: return pick(std::integral_constant<int, 4>{});
    case 5: return pick(std::integral_constant<int, 5>{});
    case 6: return pick(std::integral_constant<int, 6>{});
    case 7: return pick(std::integral_constant<int, 7>{});
    default: return pick(std::integral_constant<int, 8>{});
  }
}

FastBlock select_clamped_block(size_t rows, bool avx512, bool round) {
  return for_rows(rows, [&](auto r) { return clamped_block_for<decltype(r)::value>(avx512, round); });
}

FastBlock select_fast_block(size_t rows, bool avx512, bool round, bool mask_a, bool mask_b) {
  return for_rows(rows, [&](auto r) { return fast_block_for<decltype(r)::value>(avx512, round, mask_a, mask_b); });
}

#endif  // LMUL_HAVE_X86_SIMD

}  // namespace

bool lmul_small_m(const uint32_t* a, size_t rows, size_t k, const OperandRange& a_range, const float* b, size_t ldb,
                  size_t j0, size_t j1, int mantissa_bits, uint32_t bias, float* c, size_t ldc) {
  if (rows == 0 || j1 <= j0) return true;
  size_t vector_end = j0;
  bool exact = true;
#if LMUL_HAVE_X86_SIMD
  const int lanes = simd_lanes();
  if (lanes > 0 && rows <= kSmallMMaxRows && k > 0 && !a_range.has_special) {
    vector_end = j0 + (j1 - j0) / static_cast<size_t>(lanes) * static_cast<size_t>(lanes);
    if (vector_end > j0) {
      // First as if B had no zeros (fewer operations); if it has, again with masks; if
      // some product was not one add, again with the clamped pass.
      const bool avx512 = lanes == 16, round = mantissa_bits != kFloat32MantissaBits;
      Pass pass = Pass::kNotOneAdd;
      if (one_add_plausible(a_range, bias)) {
        const FastBlock unmasked = select_fast_block(rows, avx512, round, a_range.has_zero, false);
        pass = unmasked(a, k, a_range, b, ldb, j0, vector_end, mantissa_bits, bias, c, ldc);
      }
      if (pass == Pass::kHasZeros) {
        const FastBlock masked = select_fast_block(rows, avx512, round, a_range.has_zero, true);
        pass = masked(a, k, a_range, b, ldb, j0, vector_end, mantissa_bits, bias, c, ldc);
      }
      if (pass == Pass::kNotOneAdd) {
        const FastBlock clamped = select_clamped_block(rows, avx512, round);
        pass = clamped(a, k, a_range, b, ldb, j0, vector_end, mantissa_bits, bias, c, ldc);
      }
      exact = pass == Pass::kExact;
      if (!exact) exact_block(a, rows, k, b, ldb, j0, vector_end, mantissa_bits, bias, c, ldc);
    }
  }
#endif
  // Columns short of a whole vector (or every column, without SIMD).
  if (vector_end < j1) exact_block(a, rows, k, b, ldb, vector_end, j1, mantissa_bits, bias, c, ldc);
  return exact && vector_end > j0;
}

}  // namespace lmul
