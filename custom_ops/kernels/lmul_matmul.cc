#include "lmul_matmul.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "lmul_small_m.h"

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sched.h>
#endif

namespace lmul {

namespace {

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// Rows per chunk when operands are rounded and scanned in parallel.
constexpr size_t kRowsPerChunk = 64;

// Packed entries of B (256 KiB) that a task reads for every block of rows.
constexpr size_t kCachedPanelEntries = size_t{1} << 16;

// `parallel_for` for a preparation pass over `elements` operand elements, or the calling
// thread when they are too few to pay for waking the pool's threads.
const ParallelFor& for_elements(size_t elements, const ParallelFor& parallel_for) {
  static const ParallelFor serial = run_serially;
  return elements >= kMinOpsPerTask ? parallel_for : serial;
}

// A buffer of one thread kept from call to call. Per-call operands (rounded A, packed B)
// are rewritten on every call; allocated afresh, buffers over 128 KiB come straight from
// mmap and every call would fault their pages in again (measured: half the time of a
// 12x(128x64 @ 64x128) product). Buffers over kKeptBytes are released after use.
template <class T>
class ThreadBuffer {
 public:
  static constexpr size_t kKeptBytes = size_t{32} << 20;
  T* get(size_t count) {
    if (count > capacity_) {
      data_.reset(new T[count]);
      capacity_ = count;
    }
    return data_.get();
  }
  void trim() {
    if (capacity_ * sizeof(T) > kKeptBytes) {
      data_.reset();
      capacity_ = 0;
    }
  }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

// The calling thread's buffers for one lmul_matrix_product (never two at once on one
// thread: a batch run one product per task returns before it would use them, and each of
// its tasks' products, on pool threads, finishes before that thread takes another task;
// a product's own tasks use TaskBuffers).
struct CallBuffers {
  ThreadBuffer<uint32_t> a_rounded, b_packed;
  ThreadBuffer<float> a_masks, b_masks, sums;
  ThreadBuffer<uint64_t> a_zero_bits;
  void trim() {
    a_zero_bits.trim();
    a_rounded.trim();
    a_masks.trim();
    b_packed.trim();
    b_masks.trim();
    sums.trim();
  }
};

// A task's prepared block of A (and its zero masks).
struct TaskBuffers {
  ThreadBuffer<uint32_t> a;
  ThreadBuffer<float> mask;
  ThreadBuffer<uint64_t> zero_bits;
};

// dst[i] = float32 bits of src[i] rounded to `mantissa_bits` (SPEC 1, step 1), vectorised.
LMUL_TARGET_CLONES
void round_float32_run(const float* src, size_t count, int mantissa_bits, uint32_t* dst) {
  if (mantissa_bits == kFloat32MantissaBits) {
    if (count > 0) std::memcpy(dst, src, count * sizeof(float));  // src is null when K = 0
    return;
  }
  const uint32_t drop = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
  for (size_t i = 0; i < count; ++i) dst[i] = round_dropping_bits(float_bits(src[i]), drop);
}

// run[i] -= value (modulo 2^32), vectorised.
LMUL_TARGET_CLONES
void subtract_from_run(uint32_t* run, size_t count, uint32_t value) {
  if (value == 0) return;
  for (size_t i = 0; i < count; ++i) run[i] -= value;
}

// Rows x cols of a strided matrix rounded into dst (row stride dst_stride).
template <class S>
void round_block(const typename S::type* src, size_t rows, size_t cols, size_t row_stride, size_t col_stride,
                 int mantissa_bits, uint32_t* dst, size_t dst_stride) {
  for (size_t r = 0; r < rows; ++r) {
    if constexpr (std::is_same<typename S::type, float>::value) {
      if (col_stride == 1) {
        round_float32_run(src + r * row_stride, cols, mantissa_bits, dst + r * dst_stride);
        continue;
      }
    }
    pack_rounded<S>(src + r * row_stride, 1, cols, 0, col_stride, mantissa_bits, dst + r * dst_stride);
  }
}

// Rows of a panel from float32 rows (row stride row_stride, `width` of them, padded to
// nr): rounded, stored minus `fold` (padding: 0 - fold), and the smallest and largest
// magnitude returned, in one pass. The 16-lane reductions run across all rows (SLP
// vectorised) and meet only at the end: a 64-wide row is only four vectors.
LMUL_TARGET_CLONES
void round_fold_rows(const float* src, size_t rows, size_t width, size_t row_stride, int mantissa_bits,
                     uint32_t fold, uint32_t* out, size_t nr, uint32_t& smallest, uint32_t& largest) {
  constexpr size_t kLanes = 16;
  // (the rows' last entries have their own pair: lo and hi then stay in registers)
  uint32_t lo[kLanes], hi[kLanes], tail_lo = 0xFFFFFFFFu, tail_hi = 0;
  for (size_t l = 0; l < kLanes; ++l) {
    lo[l] = 0xFFFFFFFFu;
    hi[l] = 0;
  }
  const uint32_t drop = static_cast<uint32_t>(kFloat32MantissaBits - mantissa_bits);
  for (size_t p = 0; p < rows; ++p) {
    const float* row = src + p * row_stride;
    uint32_t* dst = out + p * nr;
    size_t j = 0;
    for (; j + kLanes <= width; j += kLanes) {
      for (size_t l = 0; l < kLanes; ++l) {
        const uint32_t x = drop == 0 ? float_bits(row[j + l]) : round_dropping_bits(float_bits(row[j + l]), drop);
        lo[l] = std::min(lo[l], x & kMagnitudeMask);
        hi[l] = std::max(hi[l], x & kMagnitudeMask);
        dst[j + l] = x - fold;
      }
    }
    for (; j < width; ++j) {
      const uint32_t x = drop == 0 ? float_bits(row[j]) : round_dropping_bits(float_bits(row[j]), drop);
      tail_lo = std::min(tail_lo, x & kMagnitudeMask);
      tail_hi = std::max(tail_hi, x & kMagnitudeMask);
      dst[j] = x - fold;
    }
    for (; j < nr; ++j) dst[j] = 0u - fold;
  }
  smallest = std::min(tail_lo, *std::min_element(lo, lo + kLanes));
  largest = std::max(tail_hi, *std::max_element(hi, hi + kLanes));
}

// `rows` rows of `width` float16 or bfloat16 values (S; row stride src_stride) widened to
// float32 rows of `width` at dst, exactly (SPEC 2): bfloat16 by a shift, float16 by
// F16C's vcvtph2ps where the kernels use SIMD (an exact conversion, subnormal halves
// included), else value by value.
// (every AVX-512F CPU has F16C, whose conversions vcvtph2ps/vcvtps2ph AVX-512F widens)
#if LMUL_HAVE_X86_SIMD
__attribute__((target("avx512f"))) void widen_float16_avx512(const uint16_t* src, size_t rows, size_t width,
                                                             size_t src_stride, float* dst) {
  for (size_t r = 0; r < rows; ++r, src += src_stride, dst += width) {
    size_t i = 0;
    for (; i + 16 <= width; i += 16) {
      // (maskz with all lanes: GCC 12 warns about _mm512_cvtph_ps's undefined source)
      const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm512_storeu_ps(dst + i, _mm512_maskz_cvtph_ps(0xFFFF, halves));
    }
    for (; i < width; ++i) dst[i] = float16_to_float(src[i]);
  }
}
__attribute__((target("avx2,f16c"))) void widen_float16_avx2(const uint16_t* src, size_t rows, size_t width,
                                                             size_t src_stride, float* dst) {
  for (size_t r = 0; r < rows; ++r, src += src_stride, dst += width) {
    size_t i = 0;
    for (; i + 8 <= width; i += 8) {
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
    for (; i < width; ++i) dst[i] = float16_to_float(src[i]);
  }
}
#endif

LMUL_TARGET_CLONES
void widen_bfloat16(const uint16_t* src, size_t rows, size_t width, size_t src_stride, float* dst) {
  for (size_t r = 0; r < rows; ++r) {
    for (size_t i = 0; i < width; ++i) {
      dst[r * width + i] = bits_float(static_cast<uint32_t>(src[r * src_stride + i]) << 16);
    }
  }
}

// `count` float32 values narrowed to float16 with round-to-nearest-even (SPEC 2), as
// float_to_float16 does: vcvtps2ph where the kernels use SIMD (NaN lanes then redone
// value by value, for float_to_float16's NaN), else value by value.
#if LMUL_HAVE_X86_SIMD
__attribute__((target("avx512f"))) void narrow_float16_avx512(const float* src, size_t count, uint16_t* dst) {
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    // (maskz with all lanes: GCC 12 warns about _mm512_cvtps_ph's undefined source)
    const __m256i halves = _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), halves);
    if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0) {
      for (size_t l = i; l < i + 16; ++l) dst[l] = float_to_float16(src[l]);
    }
  }
  for (; i < count; ++i) dst[i] = float_to_float16(src[i]);
}
__attribute__((target("avx2,f16c"))) void narrow_float16_avx2(const float* src, size_t count, uint16_t* dst) {
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      for (size_t l = i; l < i + 8; ++l) dst[l] = float_to_float16(src[l]);
    }
  }
  for (; i < count; ++i) dst[i] = float_to_float16(src[i]);
}
#endif

// Whether the CPU has F16C (every AVX2 CPU the kernels met so far has).
bool has_f16c() {
#if LMUL_HAVE_X86_SIMD
  static const bool f16c = __builtin_cpu_supports("f16c");
  return f16c;
#else
  return false;
#endif
}

}  // namespace

// (lmul_matmul.h; also the narrowing of every 16-bit result here)
template <class S>
void narrow_sums(const float* src, size_t count, typename S::type* dst) {
  if constexpr (std::is_same_v<S, Float16Storage>) {
#if LMUL_HAVE_X86_SIMD
    if (simd_lanes() == 16) return narrow_float16_avx512(src, count, dst);
    if (simd_lanes() == 8 && has_f16c()) return narrow_float16_avx2(src, count, dst);
#endif
  }
  for (size_t i = 0; i < count; ++i) dst[i] = S::store(src[i]);
}

namespace {

// The width to round values widened from S to: rounding them to m bits changes nothing
// unless m is narrower than their type's own width (then the kernels' rounding ops are
// left out).
template <class S>
int widened_rounding_bits(int mantissa_bits) {
  return mantissa_bits >= type_mantissa_bits(S::kind) ? kFloat32MantissaBits : mantissa_bits;
}

template <class S>
void widen_to_float32(const uint16_t* src, size_t rows, size_t width, size_t src_stride, float* dst) {
  if constexpr (std::is_same_v<S, BFloat16Storage>) {
    widen_bfloat16(src, rows, width, src_stride, dst);
  } else {
#if LMUL_HAVE_X86_SIMD
    if (simd_lanes() == 16) return widen_float16_avx512(src, rows, width, src_stride, dst);
    if (simd_lanes() == 8 && has_f16c()) return widen_float16_avx2(src, rows, width, src_stride, dst);
#endif
    for (size_t r = 0; r < rows; ++r)
      for (size_t i = 0; i < width; ++i) dst[r * width + i] = float16_to_float(src[r * src_stride + i]);
  }
}

// Packs one panel of a strided K x N matrix (columns [panel*nr, panel*nr + nr)), rounded,
// and returns the range of its entries; then subtracts `fold` from every entry (see
// BView::folded_bias). One pass over the panel while it is in the L1 cache; no stand-ins
// for zeros yet (mask_panel_zeros). Padding columns hold 0 - fold. (Rows of A are one
// panel as wide as A, with no fold.)
template <class S>
OperandRange pack_panel_scanned(const typename S::type* src, size_t k, size_t n, size_t row_stride,
                                size_t col_stride, int mantissa_bits, size_t nr, size_t panel, uint32_t fold,
                                uint32_t* out) {
  const size_t j0 = panel * nr, width = std::min(nr, n - j0);
  if constexpr (!std::is_same<typename S::type, float>::value) {
    if (col_stride == 1) {  // 16-bit rows: widened (exactly) into float32 rows, then packed as those
      thread_local ThreadBuffer<float> wide_rows;
      float* wide = wide_rows.get(std::max<size_t>(1, k * width));
      widen_to_float32<S>(src + j0, k, width, row_stride, wide);
      const OperandRange range = pack_panel_scanned<Float32Storage>(wide, k, width, width, 1,
                                                                    widened_rounding_bits<S>(mantissa_bits), nr, 0,
                                                                    fold, out);
      wide_rows.trim();
      return range;
    }
  } else {
    if (col_stride == 1) {  // rows read in order: all in one pass, where no entry is zero or special
      uint32_t smallest, largest;
      round_fold_rows(src + j0, k, width, row_stride, mantissa_bits, fold, out, nr, smallest, largest);
      if (k == 0 || (smallest >= kSmallestNormalBits && largest < kInfBits)) {
        OperandRange range;  // (every entry normal: the smallest and largest are the range)
        if (k > 0) {
          range.min_nonzero = smallest;
          range.max_magnitude = largest;
        }
        return range;
      }
    }  // else packed again below, with the range's zeros and specials set apart
  }
  round_block<S>(src + j0 * col_stride, k, width, row_stride, col_stride, mantissa_bits, out, nr);
  OperandRange range;
  if (width == nr) {
    range.scan(out, k * nr);
  } else {
    for (size_t p = 0; p < k; ++p) {
      range.scan(out + p * nr, width);
      std::fill(out + p * nr + width, out + (p + 1) * nr, 0u);
    }
  }
  subtract_from_run(out, k * nr, fold);
  return range;
}

// Each K x N matrix of B rounded into row-major order (what the portable loops read).
template <class S>
std::unique_ptr<uint32_t[]> round_row_major(const typename S::type* data, size_t matrices, size_t k, size_t n,
                                            bool transposed, int mantissa_bits, const ParallelFor& parallel_for) {
  std::unique_ptr<uint32_t[]> rounded(new uint32_t[std::max<size_t>(1, matrices * k * n)]);
  for_elements(matrices * k * n, parallel_for)(matrices, [&](size_t i) {
    pack_rounded<S>(data + i * k * n, k, n, transposed ? 1 : n, transposed ? k : 1, mantissa_bits,
                    rounded.get() + i * k * n);
  });
  return rounded;
}

}  // namespace

void run_serially(size_t tasks, const std::function<void(size_t)>& task) {
  for (size_t i = 0; i < tasks; ++i) task(i);
}

size_t measure_concurrency(const ParallelFor& parallel_for, size_t limit, unsigned wait_us) {
  if (limit <= 1) return 1;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto wait = std::chrono::microseconds(wait_us);
  std::atomic<size_t> started{0};
  std::atomic<Clock::rep> last_start{start.time_since_epoch().count()};
  std::atomic<bool> waited{false};  // a task gave up waiting: later ones need not wait
  std::vector<std::thread::id> ran_on(limit);
  parallel_for(limit, [&](size_t i) {
    ran_on[i] = std::this_thread::get_id();
    started.fetch_add(1);
    last_start.store(Clock::now().time_since_epoch().count());
    // Until every task has started, or none has for `wait` (sleeping threads wake one
    // after another, slowly in a virtual machine), or 8 times that in all.
    while (started.load() < limit && !waited.load()) {
      const auto now = Clock::now();
      if (now - Clock::time_point(Clock::duration(last_start.load())) > wait || now - start > 8 * wait) {
        waited.store(true);
        break;
      }
      std::this_thread::yield();
    }
  });
  std::sort(ran_on.begin(), ran_on.end());
  return static_cast<size_t>(std::unique(ran_on.begin(), ran_on.end()) - ran_on.begin());
}

size_t hardware_threads() {
  static const size_t threads = [] {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return static_cast<size_t>(CPU_COUNT(&set));
#endif
    return static_cast<size_t>(std::max(1u, std::thread::hardware_concurrency()));
  }();  // (a system call: once)
  return threads;
}

size_t Concurrency::of(const ParallelFor& parallel_for) {
  size_t threads = threads_.load();
  const size_t limit = hardware_threads();
  // (the load first: a pool smaller than the machine would otherwise write the counter
  // on every call)
  if (threads < limit && measurements_.load(std::memory_order_relaxed) < kMeasurements &&
      measurements_.fetch_add(1) < kMeasurements) {
    // At most 3.2 ms each (a session of one thread: 0.4 ms); the largest count is kept.
    const size_t measured = measure_concurrency(parallel_for, limit, 400);
    while (measured > threads && !threads_.compare_exchange_weak(threads, measured)) {
    }
    threads = std::max(threads, measured);
  }
  return std::max<size_t>(threads, 1);
}

template <class S>
std::unique_ptr<const PackedB> pack_b(const typename S::type* data, const Shape& shape, size_t matrices, size_t k,
                                      size_t n, bool transposed, int mantissa_bits, const ParallelFor& parallel_for) {
  auto b = std::make_unique<PackedB>();
  b->shape = shape;
  b->matrices = matrices;
  b->shape_entries = k * n;
  const size_t row_stride = transposed ? 1 : n, col_stride = transposed ? k : 1;
  // Scan in chunks of rows, in parallel, then merge.
  const size_t chunks = ceil_div(std::max<size_t>(k, 1), kRowsPerChunk);
  std::vector<OperandRange> ranges(matrices * chunks);
  for_elements(matrices * k * n, parallel_for)(matrices * chunks, [&](size_t t) {
    const size_t i = t / chunks, r0 = (t % chunks) * kRowsPerChunk, r1 = std::min(k, r0 + kRowsPerChunk);
    scan_rounded<S>(data + i * k * n, r0, r1, n, row_stride, col_stride, mantissa_bits, ranges[t]);
  });
  for (const OperandRange& part : ranges) b->range.merge(part);
  const size_t nr = panel_width();
  if (nr == 0) {
    b->rounded = round_row_major<S>(data, matrices, k, n, transposed, mantissa_bits, parallel_for);
    return b;
  }
  b->panels_per_matrix = ceil_div(n, nr);
  const size_t per_matrix = b->panels_per_matrix * k * nr, entries = std::max<size_t>(1, matrices * per_matrix);
  b->entries_per_matrix = per_matrix;
  const bool half = mantissa_bits <= kHalfPanelMantissaBits;
  if (half) {
    b->half_panels.reset(new uint16_t[entries]);
  } else {
    b->panels.reset(new uint32_t[entries]);
  }
  b->zero_row_words_per_matrix = b->panels_per_matrix * zero_row_words(k);
  b->zero_rows.reset(new uint64_t[std::max<size_t>(1, matrices * b->zero_row_words_per_matrix)]);
  for_elements(matrices * k * n, parallel_for)(matrices * b->panels_per_matrix, [&](size_t t) {
    const size_t i = t / b->panels_per_matrix, panel = t % b->panels_per_matrix;
    if (half) {
      pack_panels_compact<S>(data + i * k * n, k, n, row_stride, col_stride, mantissa_bits, nr, panel, panel + 1,
                             b->half_panels.get() + i * per_matrix);
    } else {
      pack_panels_compact<S>(data + i * k * n, k, n, row_stride, col_stride, mantissa_bits, nr, panel, panel + 1,
                             b->panels.get() + i * per_matrix);
    }
    const PanelsView view = b->matrix(i);
    zero_row_bits(PanelsView{view.wide, view.half}, k, n, nr, panel, panel + 1,
                  b->zero_rows.get() + i * b->zero_row_words_per_matrix);
  });
  return std::unique_ptr<const PackedB>(std::move(b));
}

PanelsView PackedB::matrix(size_t i) const {
  const size_t entries = i * entries_per_matrix;
  return PanelsView{panels ? panels.get() + entries : nullptr, half_panels ? half_panels.get() + entries : nullptr,
                    zero_rows ? zero_rows.get() + i * zero_row_words_per_matrix : nullptr, range.min_nonzero};
}

size_t PackedB::bytes() const {
  const size_t panel_entries = has_panels() ? matrices * entries_per_matrix : 0;
  return panel_entries * (half_panels ? sizeof(uint16_t) : sizeof(uint32_t)) +
         (zero_rows ? matrices * zero_row_words_per_matrix * sizeof(uint64_t) : 0) +
         (rounded ? matrices * shape_entries * sizeof(uint32_t) : 0);
}

namespace {

// Writes rows [r0, r1) x columns [j0, j1) of one output matrix from its float32 sums:
// Gemm's terms, then the narrowing to the storage type (nothing to do for an in-place
// float32 MatMul).
template <class S>
void finish_block(const float* acc, size_t n, size_t r0, size_t r1, size_t j0, size_t j1, const GemmTerms<S>* gemm,
                  typename S::type* out) {
  if (gemm == nullptr) {
    for (size_t r = r0; r < r1; ++r) narrow_sums<S>(acc + r * n + j0, j1 - j0, out + r * n + j0);
    return;
  }
  for (size_t r = r0; r < r1; ++r) {
    const float* s = acc + r * n;
    typename S::type* row = out + r * n;
    for (size_t j = j0; j < j1; ++j) {
      float value = gemm->alpha * s[j];  // ordinary float32 scalings (SPEC 3)
      if (gemm->c) value += gemm->beta * S::load(gemm->c[r * gemm->c_row_stride + j * gemm->c_col_stride]);
      row[j] = S::store(value);
    }
  }
}

// Small M against a per-call B, float32 read in place (lmul_small_m.h), float16 /
// bfloat16 widened block by block: tasks are (batch, column block) pairs, each over all
// M rows, so B streams through once.
template <class S>
void small_m_product(const MatMulPlan& plan, const uint32_t* a_rounded, const OperandRange& a_range,
                     const typename S::type* b, int mantissa_bits, uint32_t bias, const GemmTerms<S>* gemm,
                     typename S::type* y, float* scratch, const ParallelFor& parallel_for, Concurrency* concurrency) {
  const size_t m = plan.m, k = plan.k, n = plan.n, batches = plan.a_matrix.size();
  // Blocks of whole vectors, wide enough for long sequential reads of B's rows (measured
  // on 1x4096x4096, one thread: blocks of 256 or 512 columns ran at 0.6 the speed of 2048).
  constexpr size_t kAlign = 64;
  const size_t fewest_columns = ceil_div(kMinOpsPerTask / std::max<size_t>(1, m * k), kAlign) * kAlign;
  const size_t all_columns = ceil_div(n, kAlign) * kAlign;
  size_t width = std::min(all_columns, std::max<size_t>(2048, fewest_columns));
  // With more threads than blocks, narrower blocks: threads reading side by side make up
  // for shorter streams (1x4096x4096 on 16 Xeon cores: 2.3x faster than 1 thread with 2
  // blocks of 2048 columns).
  if (concurrency != nullptr && batches * ceil_div(n, width) < hardware_threads()) {
    const size_t threads = concurrency->of(parallel_for);
    if (batches * ceil_div(n, width) < threads) {
      const size_t per_batch = ceil_div(threads, batches);
      width = std::min(width, std::max({kAlign, fewest_columns, ceil_div(ceil_div(n, per_batch), kAlign) * kAlign}));
    }
  }
  if constexpr (!std::is_same<typename S::type, float>::value) {
    // A 16-bit B is widened block by block into the thread's buffer: blocks of at most
    // 2^18 float32 values (1 MiB), still in cache when the kernel reads them.
    constexpr size_t kWidenedEntries = size_t{1} << 18;
    width = std::min(width, std::max(kAlign, kWidenedEntries / std::max<size_t>(1, k) / kAlign * kAlign));
  }
  const size_t blocks = ceil_div(n, width);
  parallel_for(batches * blocks, [&](size_t t) {
    const size_t batch = t / blocks, j0 = (t % blocks) * width, j1 = std::min(n, j0 + width);
    float* acc = scratch ? scratch + batch * m * n : reinterpret_cast<float*>(y) + batch * m * n;
    const uint32_t* a_matrix = a_rounded + plan.a_matrix[batch] * m * k;
    const typename S::type* b_matrix = b + plan.b_matrix[batch] * k * n;
    if constexpr (std::is_same<typename S::type, float>::value) {
      lmul_small_m(a_matrix, m, k, a_range, b_matrix, n, j0, j1, mantissa_bits, bias, acc, n);
    } else {
      // A 16-bit B: the block's columns widened (exactly) into this thread's buffer, where
      // the float32 kernel reads them while they are in cache.
      const int b_bits = widened_rounding_bits<S>(mantissa_bits);
      thread_local ThreadBuffer<float> wide_block;
      const size_t block_width = j1 - j0;
      float* wide = wide_block.get(std::max<size_t>(1, k * block_width));
      widen_to_float32<S>(b_matrix + j0, k, block_width, n, wide);
      lmul_small_m(a_matrix, m, k, a_range, wide, block_width, 0, block_width, b_bits, bias, acc + j0, n);
      wide_block.trim();
    }
    if (scratch) finish_block<S>(acc, n, 0, m, j0, j1, gemm, y + batch * m * n);
  });
}

// B as the product kernels read it: packed panels (with masks where B has zeros) for the
// one-add kernels, or row-major rounded matrices for the portable loops.
//
// A per-call B is packed with SPEC 1's bias already subtracted ("folded"): the one-add
// product (a - bias) + b equals a + (b - bias) modulo 2^32, so A then needs no pass of
// its own unless it has zeros (stand-ins and masks).
struct BView {
  OperandRange range;
  uint32_t folded_bias = 0;
  size_t panel_columns = 0;  // panel_width(), or narrow_panel_width() for a narrow per-call B
  const uint32_t* panels = nullptr;
  const float* masks = nullptr;
  const uint32_t* rounded = nullptr;
  size_t panels_per_matrix = 0;
  // Constant weights: compact panels (32- or 16-bit, zeros tested by the kernels, no
  // masks), read through lmul_gemm_panels instead of `panels`.
  const PackedB* constant = nullptr;

  bool has_panels() const { return panels != nullptr || (constant != nullptr && constant->has_panels()); }
};

// Phase 1 of a product, in one pass of tasks: A rounded and scanned in row chunks, and,
// for a per-call B, each matrix of B rounded, scanned and packed panel by panel (or
// rounded row-major without SIMD). Returns A's range; fills `b` for a per-call B.
template <class S>
OperandRange prepare_operands(const MatMulPlan& plan, const ProductOperands<S>& operands, int mantissa_bits,
                              uint32_t bias, bool pack_per_call_b, uint32_t* a_rounded, bool a_in_place,
                              CallBuffers& buffers, BView& b, const ParallelFor& parallel_for) {
  const size_t m = plan.m, k = plan.k, n = plan.n;
  // Narrow B (p.V with 32-wide heads) in narrow panels: a 64-wide panel would be half padding.
  const size_t nr = n <= narrow_panel_width() ? narrow_panel_width() : panel_width();
  const size_t a_chunks = ceil_div(m, kRowsPerChunk), a_tasks = plan.a_matrices * a_chunks;
  const size_t a_row_stride = operands.trans_a ? 1 : k, a_col_stride = operands.trans_a ? m : 1;
  const size_t b_row_stride = operands.trans_b ? 1 : n, b_col_stride = operands.trans_b ? k : 1;
  const size_t b_units = !pack_per_call_b ? 0 : nr > 0 ? ceil_div(n, nr) : 1;  // per matrix
  const size_t b_tasks = plan.b_matrices * b_units;
  const size_t per_matrix = nr > 0 ? b_units * k * nr : k * n;
  uint32_t* b_out = pack_per_call_b ? buffers.b_packed.get(std::max<size_t>(1, plan.b_matrices * per_matrix)) : nullptr;
  std::vector<OperandRange> ranges(a_tasks + b_tasks);
  const size_t elements = plan.a_matrices * m * k + (pack_per_call_b ? plan.b_matrices * k * n : 0);
  for_elements(elements, parallel_for)(a_tasks + b_tasks, [&](size_t t) {
    if (t < a_tasks) {
      const size_t i = t / a_chunks, r0 = (t % a_chunks) * kRowsPerChunk, r1 = std::min(m, r0 + kRowsPerChunk);
      if (a_in_place) {  // A is its own rounding: only scanned
        ranges[t].scan(operands.a_bits + i * m * k + r0 * k, (r1 - r0) * k);
        return;
      }
      uint32_t* rows = a_rounded + i * m * k + r0 * k;
      const typename S::type* src = operands.a + i * m * k + r0 * a_row_stride;
      ranges[t] = pack_panel_scanned<S>(src, r1 - r0, k, a_row_stride, a_col_stride, mantissa_bits, k, 0, 0, rows);
      return;
    }
    const size_t u = t - a_tasks, i = u / b_units, unit = u % b_units;
    const typename S::type* src = operands.b + i * k * n;
    if (nr > 0) {
      ranges[t] = pack_panel_scanned<S>(src, k, n, b_row_stride, b_col_stride, mantissa_bits, nr, unit, bias,
                                        b_out + i * per_matrix + unit * k * nr);
    } else {
      round_block<S>(src, k, n, b_row_stride, b_col_stride, mantissa_bits, b_out + i * per_matrix, n);
      ranges[t].scan(b_out + i * per_matrix, k * n);
    }
  });
  OperandRange a_range;
  for (size_t t = 0; t < a_tasks; ++t) a_range.merge(ranges[t]);
  if (!pack_per_call_b) return a_range;
  b = BView();
  for (size_t t = a_tasks; t < ranges.size(); ++t) b.range.merge(ranges[t]);
  if (nr == 0) {
    b.rounded = b_out;
    return a_range;
  }
  b.panels = b_out;
  b.panel_columns = nr;
  b.panels_per_matrix = b_units;
  b.folded_bias = bias;
  if (b.range.has_zero) {  // stand-ins and masks, now that B's smallest magnitude is known
    float* masks = buffers.b_masks.get(plan.b_matrices * per_matrix);
    const uint32_t stand_in = zero_stand_in_b(b.range);
    for_elements(plan.b_matrices * k * n, parallel_for)(b_tasks, [&](size_t u) {
      const size_t i = u / b_units, unit = u % b_units, offset = i * per_matrix + unit * k * nr;
      mask_panel_zeros(b_out + offset, masks + offset, k, nr, std::min(nr, n - unit * nr), stand_in, bias);
    });
    b.masks = masks;
  }
  return a_range;
}

}  // namespace

// Whether a batch of products against per-call B's (attention's heads) runs one task per
// product: at least two per thread, each with more rows than the small-M kernel takes
// (that one streams B: nothing to keep in cache), and either small (waking the pool twice
// costs more than an uneven share) or shared evenly among the threads.
template <class S>
bool product_per_task(const MatMulPlan& plan, const ProductOperands<S>& operands, const GemmTerms<S>* gemm,
                      const ParallelFor& parallel_for, Concurrency* concurrency) {
  constexpr size_t kSmallProductOps = size_t{1} << 22;  // a 128 x 128 x 256 product
  const size_t batches = plan.a_matrix.size();
  if (batches < 2 || operands.prepared_b || gemm || plan.m <= kSmallMMaxRows || plan.k == 0) return false;
  const size_t threads = concurrency ? concurrency->of(parallel_for) : 1;
  const bool small = plan.m * plan.k * plan.n <= kSmallProductOps;
  const bool even = batches % threads == 0 || batches >= 8 * threads;
  return batches >= 2 * threads && (small || even);
}

template <class S>
void lmul_matrix_product(const MatMulPlan& plan, const ProductOperands<S>& operands, int mantissa_bits, uint32_t bias,
                         const GemmTerms<S>* gemm, typename S::type* y, const ParallelFor& parallel_for,
                         Concurrency* concurrency) {
  using T = typename S::type;
  const size_t m = plan.m, k = plan.k, n = plan.n, batches = plan.a_matrix.size();
  if (m == 0 || n == 0 || batches == 0) return;
  if (product_per_task(plan, operands, gemm, parallel_for, concurrency)) {
    // One task per product (attention's heads): each prepared, packed and summed by this
    // function on one thread, while its B is in cache, in one pass of the pool instead
    // of a preparation pass and a product pass. Each picks its own kernel: all give the
    // same bits.
    parallel_for(batches, [&](size_t i) {
      MatMulPlan one;
      one.m = m;
      one.k = k;
      one.n = n;
      one.a_matrices = one.b_matrices = 1;
      one.a_matrix = one.b_matrix = std::vector<size_t>{0};
      ProductOperands<S> single = operands;
      single.a = operands.a + plan.a_matrix[i] * m * k;
      single.b = operands.b + plan.b_matrix[i] * k * n;
      if (operands.a_bits) single.a_bits = operands.a_bits + plan.a_matrix[i] * m * k;
      lmul_matrix_product<S>(one, single, mantissa_bits, bias, nullptr, y + i * m * n, run_serially);
    });
    return;
  }
  thread_local CallBuffers buffers;
  struct Trim {
    CallBuffers& b;
    ~Trim() { b.trim(); }
  } trim{buffers};

  // float32 results are summed in place; other types and Gemm's terms go through a
  // float32 scratch buffer.
  const bool in_place = std::is_same<T, float>::value && gemm == nullptr;
  float* scratch = in_place ? nullptr : buffers.sums.get(batches * m * n);

  // Few rows against a B that changes per call: stream B instead of packing it (a 16-bit
  // B widened to float32 block by block, small_m_product).
  const PackedB* prepared = operands.prepared_b;
  const bool small_m = !prepared && !operands.trans_b && m <= kSmallMMaxRows && panel_width() > 0;

  // Phase 1: A rounded once (not once per product) and scanned; a per-call B packed.
  // (Full-precision float32 A needs no rounded copy: it is read where it is.)
  const bool a_in_place = operands.a_bits != nullptr && std::is_same<T, float>::value &&
                          mantissa_bits == kFloat32MantissaBits && !operands.trans_a;
  uint32_t* a_rounded = a_in_place ? nullptr : buffers.a_rounded.get(std::max<size_t>(1, plan.a_matrices * m * k));
  BView b_view;
  const bool pack_per_call_b = !prepared && !small_m;
  const OperandRange a_range = prepare_operands<S>(plan, operands, mantissa_bits, bias, pack_per_call_b, a_rounded,
                                                   a_in_place, buffers, b_view, parallel_for);
  const uint32_t* a_view = a_in_place ? operands.a_bits : a_rounded;  // A as the kernels read it
  if (small_m) {
    small_m_product<S>(plan, a_view, a_range, operands.b, mantissa_bits, bias, gemm, y, scratch, parallel_for,
                       concurrency);
    return;
  }
  if (prepared) {
    b_view.range = prepared->range;
    b_view.constant = prepared;
    b_view.panel_columns = panel_width();
    b_view.rounded = prepared->rounded.get();
    b_view.panels_per_matrix = prepared->panels_per_matrix;
  }

  // Can every product be one integer add, or else a clamped one (lmul_gemm.h)?
  const size_t nr = b_view.panel_columns;
  const GemmVariant variant = choose_variant(a_range, b_view.range, bias, b_view.has_panels(), /*clamped=*/true);
  const bool fast = uses_panels(variant), clamped = is_clamped(variant);
  const size_t panels = fast ? b_view.panels_per_matrix : 1;
  // The portable loop needs row-major rounded B, which packed panels do not keep.
  std::unique_ptr<uint32_t[]> b_rounded;
  if (!fast && !b_view.rounded) {
    b_rounded = round_row_major<S>(operands.b, plan.b_matrices, k, n, operands.trans_b, mantissa_bits, parallel_for);
  }
  const uint32_t* b_row_major = b_view.rounded ? b_view.rounded : b_rounded.get();
  const float* b_masks = masks_b(variant) ? b_view.masks : nullptr;
  const uint32_t stand_in = fast ? zero_stand_in_a(b_view.range, variant) : 0;

  // Phase 2, tasks: (batch, row block, panel block), each preparing its block of A
  // (a - bias, zeros' stand-ins and masks) in its own buffer. Few rows (e.g.
  // matrix-vector): split the columns too, so that every thread gets work.
  const size_t row_ops = std::max<size_t>(1, k * n);
  // 16-bit panels are widened once per task and panel (lmul_gemm_panels): more rows per
  // task spread that over more tiles.
  const size_t min_rows = !fast ? 1 : (prepared && prepared->half_panels) ? 384 : 48;
  const size_t rows_per_task = std::min(m, std::max<size_t>(min_rows, kMinOpsPerTask / row_ops));
  const size_t row_blocks = ceil_div(m, rows_per_task);
  const size_t panel_ops = std::max<size_t>(1, rows_per_task * k * (fast ? nr : n));
  // A task prepares its rows of A once for all its panels: all of them when B's panels
  // stay in the L2 cache (attention's small per-head B), else blocks that do.
  const size_t panels_per_task = !fast                                        ? 1
                                 : k * panels * nr <= kCachedPanelEntries ? panels
                                                                              : std::max<size_t>(1, (kMinOpsPerTask * 4) / panel_ops);
  const size_t panel_blocks = fast ? ceil_div(panels, panels_per_task) : 1;

  // A task prepares its rows of A itself when no other task needs them; with several
  // panel blocks per row block, A is prepared once beforehand instead (in place).
  const uint32_t fold = b_view.folded_bias;
  // A for the one-add kernels absorbs what B's fold left of the bias; the clamped kernels
  // add the fold back to B's entries and take A with the whole bias.
  const uint32_t a_bias = clamped ? bias : bias - fold, a_stand_in = clamped ? stand_in : stand_in + fold;
  const bool prepare_a_per_task = fast && (fold == 0 || masks_a(variant)) && panel_blocks == 1;
  float* a_masks = nullptr;
  // An A with few zeros (at most 1 in 64 entries: GELU outputs) against a B without: where
  // each row has them (zero_bits_of_rows) instead of A's float masks, so that the tiles run
  // the plain step between them (lmul_gemm_fast). Denser zeros (ReLU outputs) keep masks.
  const bool zero_bits = variant == GemmVariant::kAddMaskedA && simd_lanes() == 16 &&
                         a_range.zeros * 64 <= plan.a_matrices * m * k;
  const bool float_masks_a = masks_a(variant) && !zero_bits;
  const size_t words = zero_row_words(k);
  uint64_t* a_zero_bits = nullptr;
  if (fast && (fold == 0 || masks_a(variant)) && panel_blocks > 1) {
    const size_t count = plan.a_matrices * m * k;
    if (a_in_place) {  // prepared in place: into a copy, not the caller's A
      a_rounded = buffers.a_rounded.get(std::max<size_t>(1, count));
      std::memcpy(a_rounded, operands.a_bits, count * sizeof(uint32_t));
      a_view = a_rounded;
    }
    a_masks = float_masks_a ? buffers.a_masks.get(std::max<size_t>(1, count)) : nullptr;
    if (zero_bits) a_zero_bits = buffers.a_zero_bits.get(std::max<size_t>(1, plan.a_matrices * m * words));
    const size_t chunks = ceil_div(m, kRowsPerChunk);
    for_elements(count, parallel_for)(plan.a_matrices * chunks, [&](size_t t) {
      const size_t i = t / chunks, r0 = (t % chunks) * kRowsPerChunk, r1 = std::min(m, r0 + kRowsPerChunk);
      const size_t offset = i * m * k + r0 * k;
      if (a_zero_bits) zero_bits_of_rows(a_rounded + offset, r1 - r0, k, a_zero_bits + (i * m + r0) * words);
      prepare_a(a_rounded + offset, a_masks ? a_masks + offset : nullptr, (r1 - r0) * k, variant, a_bias,
                a_stand_in);
    });
  }

  parallel_for(batches * row_blocks * panel_blocks, [&](size_t t) {
    const size_t batch = t / (row_blocks * panel_blocks), rest = t % (row_blocks * panel_blocks);
    const size_t r0 = (rest / panel_blocks) * rows_per_task, r1 = std::min(m, r0 + rows_per_task);
    float* acc = in_place ? reinterpret_cast<float*>(y) + batch * m * n : scratch + batch * m * n;
    const uint32_t* a_matrix = a_view + plan.a_matrix[batch] * m * k;
    size_t j0 = 0, j1 = n;
    if (fast) {
      const size_t p0 = (rest % panel_blocks) * panels_per_task, p1 = std::min(panels, p0 + panels_per_task);
      j0 = p0 * nr;
      j1 = std::min(n, p1 * nr);
      // Rows of A as the kernel takes them: a - bias, zeros replaced (prepare_a), or,
      // against a B with the bias folded in, rounded A itself when it has no zeros.
      const uint32_t* a_block = a_matrix + r0 * k;
      const float* a_mask = a_masks ? a_masks + plan.a_matrix[batch] * m * k + r0 * k : nullptr;
      const uint64_t* row_zero_bits = a_zero_bits ? a_zero_bits + (plan.a_matrix[batch] * m + r0) * words : nullptr;
      thread_local TaskBuffers task_buffers;
      if (prepare_a_per_task) {
        const size_t count = (r1 - r0) * k;
        uint32_t* prepared_rows = task_buffers.a.get(std::max<size_t>(1, count));
        float* mask = float_masks_a ? task_buffers.mask.get(std::max<size_t>(1, count)) : nullptr;
        std::memcpy(prepared_rows, a_block, count * sizeof(uint32_t));
        if (zero_bits) {
          uint64_t* bits = task_buffers.zero_bits.get(std::max<size_t>(1, (r1 - r0) * words));
          zero_bits_of_rows(prepared_rows, r1 - r0, k, bits);
          row_zero_bits = bits;
        }
        prepare_a(prepared_rows, mask, count, variant, a_bias, a_stand_in);
        a_block = prepared_rows;
        a_mask = mask;
      }
      if (b_view.constant) {
        lmul_gemm_panels(variant, a_block, a_mask, b_view.constant->matrix(plan.b_matrix[batch]), k, n, 0, r1 - r0,
                         p0, p1, acc + r0 * n, n, row_zero_bits);
      } else {
        const uint32_t* b_panels = b_view.panels + plan.b_matrix[batch] * panels * k * nr;
        const float* masks = b_masks ? b_masks + plan.b_matrix[batch] * panels * k * nr : nullptr;
        lmul_gemm_fast(variant, a_block, a_mask, b_panels, masks, k, n, 0, r1 - r0, p0, p1, acc + r0 * n, n, nr,
                       b_view.range.min_nonzero, fold, row_zero_bits);
      }
      task_buffers.a.trim();
      task_buffers.mask.trim();
      task_buffers.zero_bits.trim();
    } else {
      const auto rows = variant == GemmVariant::kNormal ? lmul_matmul_rows_normal : lmul_matmul_rows;
      rows(a_matrix, b_row_major + plan.b_matrix[batch] * k * n, k, n, r0, r1, bias, acc + r0 * n);
    }
    if (!in_place) finish_block<S>(acc, n, r0, r1, j0, j1, gemm, y + batch * m * n);
  });
}

template <class S>
void lmul_elementwise(const BroadcastPlan& plan, const typename S::type* a, const typename S::type* b,
                      typename S::type* y, int mantissa_bits, uint32_t bias, const ParallelFor& parallel_for) {
  if (plan.total == 0) return;
  const size_t chunk = kMinOpsPerTask;
  // An output larger than this many bytes is written with streaming stores (it would not
  // stay in the cache anyway, and they save reading it in before overwriting it).
  constexpr size_t kStreamBytes = size_t{8} << 20;
  const bool stream = plan.total * sizeof(float) >= kStreamBytes;
  parallel_for(ceil_div(plan.total, chunk), [&](size_t t) {
    const size_t begin = t * chunk, end = std::min(plan.total, begin + chunk);
    for_each_run(plan, begin, end, [&](size_t ao, size_t bo, size_t yo, size_t length, size_t as, size_t bs) {
      if constexpr (std::is_same<typename S::type, float>::value) {
        lmul_run_float32(a + ao, as, b + bo, bs, y + yo, length, mantissa_bits, bias, stream);
      } else {
        // 16-bit values: widened (exactly) into float32 pieces, multiplied by the float32
        // kernel, each product narrowed back once (SPEC 2): vectorised all the way, where
        // lmul_run converts value by value.
        constexpr size_t kPiece = 1024;
        float wide_a[kPiece], wide_b[kPiece], products[kPiece];
        for (size_t i = 0; i < length; i += kPiece) {
          const size_t count = std::min(kPiece, length - i);
          widen_to_float32<S>(a + ao + i * as, 1, as ? count : 1, 0, wide_a);
          widen_to_float32<S>(b + bo + i * bs, 1, bs ? count : 1, 0, wide_b);
          lmul_run_float32(wide_a, as, wide_b, bs, products, count, mantissa_bits, bias);
          narrow_sums<S>(products, count, y + yo + i);
        }
      }
    });
  });
}

template <class S>
void round_to_bits(const typename S::type* src, size_t count, int mantissa_bits, uint32_t* dst) {
  if constexpr (std::is_same<typename S::type, float>::value) {
    round_float32_run(src, count, mantissa_bits, dst);
  } else {
    const int bits = widened_rounding_bits<S>(mantissa_bits);
    constexpr size_t kPiece = 4096;
    float wide[kPiece];
    for (size_t i = 0; i < count; i += kPiece) {
      const size_t piece = std::min(kPiece, count - i);
      widen_to_float32<S>(src + i, 1, piece, 0, wide);
      round_float32_run(wide, piece, bits, dst + i);
    }
  }
}

#define LMUL_INSTANTIATE(S)                                                                                        \
  template std::unique_ptr<const PackedB> pack_b<S>(const S::type*, const Shape&, size_t, size_t, size_t, bool,   \
                                                    int, const ParallelFor&);                                     \
  template void lmul_matrix_product<S>(const MatMulPlan&, const ProductOperands<S>&, int, uint32_t,               \
                                       const GemmTerms<S>*, S::type*, const ParallelFor&, Concurrency*);          \
  template void lmul_elementwise<S>(const BroadcastPlan&, const S::type*, const S::type*, S::type*, int,          \
                                    uint32_t, const ParallelFor&);                                                 \
  template void round_to_bits<S>(const S::type*, size_t, int, uint32_t*);                                          \
  template void narrow_sums<S>(const float*, size_t, S::type*);

LMUL_INSTANTIATE(Float32Storage)
LMUL_INSTANTIATE(Float16Storage)
LMUL_INSTANTIATE(BFloat16Storage)

#undef LMUL_INSTANTIATE

}  // namespace lmul
