#include "lmul_kernels.h"

#include <algorithm>
#include <cstdint>

#include "lmul_gemm.h"  // simd_lanes

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>
#endif

namespace lmul {

namespace {

// Row by row, k by k: each output element is summed over k in order (the order every
// matmul variant keeps). Always inlined, so each target clone gets its own copy.
template <class Product>
__attribute__((always_inline)) inline void matmul_rows(const uint32_t* a, const uint32_t* b, size_t k, size_t n,
                                                       size_t row_begin, size_t row_end, float* acc,
                                                       Product product) {
  for (size_t r = row_begin; r < row_end; ++r) {
    float* __restrict c = acc + (r - row_begin) * n;
    std::fill(c, c + n, 0.0f);
    const uint32_t* a_row = a + r * k;
    for (size_t p = 0; p < k; ++p) {
      const uint32_t a_value = a_row[p];
      const uint32_t* __restrict b_row = b + p * n;
      for (size_t j = 0; j < n; ++j) c[j] += bits_float(product(a_value, b_row[j]));
    }
  }
}

}  // namespace

LMUL_TARGET_CLONES
void lmul_matmul_rows(const uint32_t* a, const uint32_t* b, size_t k, size_t n, size_t row_begin,
                      size_t row_end, uint32_t bias, float* acc) {
  matmul_rows(a, b, k, n, row_begin, row_end, acc,
              [bias](uint32_t x, uint32_t y) { return lmul_rounded_bits(x, y, bias); });
}

LMUL_TARGET_CLONES
void lmul_matmul_rows_normal(const uint32_t* a, const uint32_t* b, size_t k, size_t n, size_t row_begin,
                             size_t row_end, uint32_t bias, float* acc) {
  matmul_rows(a, b, k, n, row_begin, row_end, acc,
              [bias](uint32_t x, uint32_t y) { return lmul_normal_bits(x, y, bias); });
}

namespace {

#if LMUL_HAVE_X86_SIMD
// Copies count floats to dst with streaming (non-temporal) stores of whole vectors where
// dst is aligned to them, plain stores for the rest. One function per vector width: a
// target clone does not widen intrinsics, and 16-byte streaming stores (SSE, which every
// x86-64 CPU has) took a third of a 4M-element LMul on Zen 4.
__attribute__((target("avx512f"))) void stream_store_avx512(float* dst, const float* src, size_t count) {
  size_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(dst + i) & 63u) != 0; ++i) dst[i] = src[i];
  for (; i + 16 <= count; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  for (; i < count; ++i) dst[i] = src[i];
}
__attribute__((target("avx"))) void stream_store_avx(float* dst, const float* src, size_t count) {
  size_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(dst + i) & 31u) != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= count; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < count; ++i) dst[i] = src[i];
}
void stream_store_sse(float* dst, const float* src, size_t count) {
  size_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(dst + i) & 15u) != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= count; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < count; ++i) dst[i] = src[i];
}
#endif

inline void stream_store(float* dst, const float* src, size_t count) {
#if LMUL_HAVE_X86_SIMD
  static const auto store = simd_lanes() == 16 ? stream_store_avx512 : simd_lanes() == 8 ? stream_store_avx
                                                                                           : stream_store_sse;
  store(dst, src, count);
#else
  std::copy(src, src + count, dst);
#endif
}

// Orders streaming stores before whatever the thread does next (e.g. signalling that
// its task is done).
inline void stream_fence() {
#if LMUL_HAVE_X86_SIMD
  _mm_sfence();
#endif
}

// One loop per stride pattern, so that each inner loop is a plain vectorisable map.
// Always inlined: only then is it compiled for each target clone of its caller.
template <bool kRound>
__attribute__((always_inline)) inline void lmul_map(const float* __restrict a, size_t a_step, const float* __restrict b, size_t b_step,
                     float* __restrict out, size_t length, int mantissa_bits, uint32_t bias, bool stream) {
  const uint32_t drop = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
  auto product = [bias, drop](float x, float y) {
    uint32_t xb = float_bits(x), yb = float_bits(y);
    if (kRound) {
      xb = round_dropping_bits(xb, drop);
      yb = round_dropping_bits(yb, drop);
    }
    return bits_float(lmul_rounded_bits(xb, yb, bias));
  };
  if (a_step == 1 && b_step == 1) {
    // Block by block, first as one integer add per product (lmul_gemm.h), zeros (and
    // subnormals) giving +-0, while recording both operands' range of non-zero
    // magnitudes; when the range shows that some product of the block was not one add (a
    // special value, an underflow or overflow), the block is redone in full from cache.
    // With `stream`, blocks are made in an L1-resident buffer and written out with
    // streaming stores: a large output is not read into the cache only to be overwritten.
    constexpr size_t kBlock = 1024;
    alignas(64) float buffer[kBlock];
    for (size_t i0 = 0; i0 < length; i0 += kBlock) {
      const size_t count = length - i0 < kBlock ? length - i0 : kBlock;
      const float* __restrict x = a + i0;
      const float* __restrict y = b + i0;
      float* __restrict dst = stream ? buffer : out + i0;
      uint32_t a_min = 0xFFFFFFFFu, a_max = 0, b_min = 0xFFFFFFFFu, b_max = 0;
      for (size_t i = 0; i < count; ++i) {
        uint32_t xb = float_bits(x[i]), yb = float_bits(y[i]);
        if (kRound) {
          xb = round_dropping_bits(xb, drop);
          yb = round_dropping_bits(yb, drop);
        }
        const uint32_t xm = xb & kMagnitudeMask, ym = yb & kMagnitudeMask;
        // All ones for a zero: excluded from the minima, and a select for the product.
        const uint32_t x_zero = static_cast<uint32_t>(static_cast<int32_t>(xm - kSmallestNormalBits) >> 31);
        const uint32_t y_zero = static_cast<uint32_t>(static_cast<int32_t>(ym - kSmallestNormalBits) >> 31);
        a_min = std::min(a_min, xm | x_zero);
        a_max = std::max(a_max, xm);
        b_min = std::min(b_min, ym | y_zero);
        b_max = std::max(b_max, ym);
        const uint32_t zero = x_zero | y_zero;
        dst[i] = bits_float(((xb - bias + yb) & ~zero) | ((xb ^ yb) & kSignBit & zero));
      }
      const bool any_product = a_min != 0xFFFFFFFFu && b_min != 0xFFFFFFFFu;
      const bool one_add = a_max < kInfBits && b_max < kInfBits &&
                           (!any_product || (uint64_t{a_min} + b_min >= uint64_t{bias} + kSmallestNormalBits &&
                                             uint64_t{a_max} + b_max < uint64_t{bias} + kInfBits));
      if (!one_add) {
        for (size_t i = 0; i < count; ++i) dst[i] = product(x[i], y[i]);
      }
      if (stream) stream_store(out + i0, buffer, count);
    }
    if (stream) stream_fence();
  } else if (a_step == 1) {
    const float y = b[0];
    for (size_t i = 0; i < length; ++i) out[i] = product(a[i], y);
  } else if (b_step == 1) {
    const float x = a[0];
    for (size_t i = 0; i < length; ++i) out[i] = product(x, b[i]);
  } else {
    const float value = product(a[0], b[0]);
    for (size_t i = 0; i < length; ++i) out[i] = value;
  }
}

}  // namespace

LMUL_TARGET_CLONES
void lmul_run_float32(const float* a, size_t a_step, const float* b, size_t b_step, float* out, size_t length,
                      int mantissa_bits, uint32_t bias, bool stream) {
  if (mantissa_bits == kFloat32MantissaBits) {
    lmul_map<false>(a, a_step, b, b_step, out, length, mantissa_bits, bias, stream);
  } else {
    lmul_map<true>(a, a_step, b, b_step, out, length, mantissa_bits, bias, stream);
  }
}

}  // namespace lmul
