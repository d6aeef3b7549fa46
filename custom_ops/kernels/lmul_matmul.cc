#include "lmul_matmul.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "lmul_small_m.h"

namespace lmul {

namespace {

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// Rows per chunk when operands are rounded and scanned in parallel.
constexpr size_t kRowsPerChunk = 64;

// `parallel_for` for a preparation pass over `elements` operand elements, or the calling
// thread when they are too few to pay for waking the pool's threads.
const ParallelFor& for_elements(size_t elements, const ParallelFor& parallel_for) {
  static const ParallelFor serial = run_serially;
  return elements >= kMinOpsPerTask ? parallel_for : serial;
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

template <class S>
std::unique_ptr<const PackedB> pack_b(const typename S::type* data, const Shape& shape, size_t matrices, size_t k,
                                      size_t n, bool transposed, int mantissa_bits, const ParallelFor& parallel_for) {
  auto b = std::make_unique<PackedB>();
  b->shape = shape;
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
  const size_t per_matrix = b->panels_per_matrix * k * nr;
  b->panels.reset(new uint32_t[std::max<size_t>(1, matrices * per_matrix)]);
  if (b->range.has_zero) b->masks.reset(new float[std::max<size_t>(1, matrices * per_matrix)]);
  const uint32_t stand_in = zero_stand_in_b(b->range);
  for_elements(matrices * k * n, parallel_for)(matrices * b->panels_per_matrix, [&](size_t t) {
    const size_t i = t / b->panels_per_matrix, panel = t % b->panels_per_matrix;
    pack_panels_rounded<S>(data + i * k * n, k, n, row_stride, col_stride, mantissa_bits, nr, stand_in, panel,
                           panel + 1, b->panels.get() + i * per_matrix,
                           b->masks ? b->masks.get() + i * per_matrix : nullptr);
  });
  return std::unique_ptr<const PackedB>(std::move(b));
}

namespace {

// Writes rows [r0, r1) x columns [j0, j1) of one output matrix from its float32 sums:
// Gemm's terms, then the narrowing to the storage type (nothing to do for an in-place
// float32 MatMul).
template <class S>
void finish_block(const float* acc, size_t n, size_t r0, size_t r1, size_t j0, size_t j1, const GemmTerms<S>* gemm,
                  typename S::type* out) {
  for (size_t r = r0; r < r1; ++r) {
    const float* s = acc + r * n;
    typename S::type* row = out + r * n;
    for (size_t j = j0; j < j1; ++j) {
      float value = s[j];
      if (gemm) {
        value = gemm->alpha * value;  // ordinary float32 scalings (SPEC 3)
        if (gemm->c) value += gemm->beta * S::load(gemm->c[r * gemm->c_row_stride + j * gemm->c_col_stride]);
      }
      row[j] = S::store(value);
    }
  }
}

// Rounds and scans the A matrices, in parallel row chunks; returns the range.
template <class S>
OperandRange round_a(const typename S::type* a, bool trans_a, size_t matrices, size_t m, size_t k, int mantissa_bits,
                     uint32_t* rounded, const ParallelFor& parallel_for) {
  const size_t chunks = ceil_div(m, kRowsPerChunk);
  std::vector<OperandRange> ranges(matrices * chunks);
  const size_t row_stride = trans_a ? 1 : k, col_stride = trans_a ? m : 1;
  for_elements(matrices * m * k, parallel_for)(matrices * chunks, [&](size_t t) {
    const size_t i = t / chunks, r0 = (t % chunks) * kRowsPerChunk, r1 = std::min(m, r0 + kRowsPerChunk);
    uint32_t* rows = rounded + i * m * k + r0 * k;
    pack_rounded<S>(a + i * m * k + r0 * row_stride, r1 - r0, k, row_stride, col_stride, mantissa_bits, rows);
    ranges[t].scan(rows, (r1 - r0) * k);
  });
  OperandRange range;
  for (const OperandRange& part : ranges) range.merge(part);
  return range;
}

// Small M against a per-call float32 B, read in place (lmul_small_m.h): tasks are
// (batch, column block) pairs, each over all M rows, so B streams through once.
template <class S>
void small_m_product(const MatMulPlan& plan, const uint32_t* a_rounded, const OperandRange& a_range, const float* b,
                     int mantissa_bits, uint32_t bias, const GemmTerms<S>* gemm, typename S::type* y, float* scratch,
                     const ParallelFor& parallel_for) {
  const size_t m = plan.m, k = plan.k, n = plan.n, batches = plan.a_matrix.size();
  // Blocks of whole vectors, wide enough for long sequential reads of B's rows (measured
  // on 1x4096x4096: blocks of 256 columns ran at half the speed of whole rows).
  constexpr size_t kAlign = 64;
  const size_t wanted = std::max<size_t>(2048, kMinOpsPerTask / std::max<size_t>(1, m * k));
  const size_t width = std::min(ceil_div(n, kAlign) * kAlign, ceil_div(wanted, kAlign) * kAlign);
  const size_t blocks = ceil_div(n, width);
  parallel_for(batches * blocks, [&](size_t t) {
    const size_t batch = t / blocks, j0 = (t % blocks) * width, j1 = std::min(n, j0 + width);
    float* acc = scratch ? scratch + batch * m * n : reinterpret_cast<float*>(y) + batch * m * n;
    lmul_small_m(a_rounded + plan.a_matrix[batch] * m * k, m, k, a_range, b + plan.b_matrix[batch] * k * n, n, j0,
                 j1, mantissa_bits, bias, acc, n);
    if (scratch) finish_block<S>(acc, n, 0, m, j0, j1, gemm, y + batch * m * n);
  });
}

}  // namespace

template <class S>
void lmul_matrix_product(const MatMulPlan& plan, const ProductOperands<S>& operands, int mantissa_bits, uint32_t bias,
                         const GemmTerms<S>* gemm, typename S::type* y, const ParallelFor& parallel_for) {
  using T = typename S::type;
  const size_t m = plan.m, k = plan.k, n = plan.n, batches = plan.a_matrix.size();
  if (m == 0 || n == 0 || batches == 0) return;

  // float32 results are summed in place; other types and Gemm's terms go through a
  // float32 scratch buffer.
  const bool in_place = std::is_same<T, float>::value && gemm == nullptr;
  std::unique_ptr<float[]> scratch(in_place ? nullptr : new float[batches * m * n]);

  // A rounded once (not once per product) and scanned.
  std::unique_ptr<uint32_t[]> a_packed(new uint32_t[std::max<size_t>(1, plan.a_matrices * m * k)]);
  const OperandRange a_range =
      round_a<S>(operands.a, operands.trans_a, plan.a_matrices, m, k, mantissa_bits, a_packed.get(), parallel_for);

  const PackedB* prepared = operands.prepared_b;
  if constexpr (std::is_same<T, float>::value) {
    // Few rows against a B that changes per call: stream B instead of packing it.
    if (!prepared && !operands.trans_b && m <= kSmallMMaxRows && panel_width() > 0) {
      small_m_product<S>(plan, a_packed.get(), a_range, operands.b, mantissa_bits, bias, gemm, y, scratch.get(),
                         parallel_for);
      return;
    }
  }

  std::unique_ptr<const PackedB> per_call_b;
  if (!prepared) {
    per_call_b =
        pack_b<S>(operands.b, Shape{}, plan.b_matrices, k, n, operands.trans_b, mantissa_bits, parallel_for);
    prepared = per_call_b.get();
  }
  const PackedB& packed_b = *prepared;

  // Can every product be one integer add, or else a clamped one (lmul_gemm.h)?
  const size_t nr = panel_width();
  const GemmVariant variant =
      choose_variant(a_range, packed_b.range, bias, packed_b.panels != nullptr, /*clamped=*/true);
  const bool fast = uses_panels(variant);
  const size_t panels = fast ? packed_b.panels_per_matrix : 1;
  // The portable loop needs row-major rounded B, which packed panels do not keep.
  std::unique_ptr<uint32_t[]> b_rounded;
  if (!fast && !packed_b.rounded) {
    b_rounded = round_row_major<S>(operands.b, plan.b_matrices, k, n, operands.trans_b, mantissa_bits, parallel_for);
  }
  const uint32_t* b_row_major = packed_b.rounded ? packed_b.rounded.get() : b_rounded.get();
  std::unique_ptr<float[]> a_mask(masks_a(variant) ? new float[plan.a_matrices * m * k] : nullptr);
  const float* b_masks = masks_b(variant) ? packed_b.masks.get() : nullptr;
  if (fast) {
    const uint32_t stand_in = zero_stand_in_a(packed_b.range, variant);
    const size_t chunks = ceil_div(m, kRowsPerChunk);
    for_elements(plan.a_matrices * m * k, parallel_for)(plan.a_matrices * chunks, [&](size_t t) {
      const size_t i = t / chunks, r0 = (t % chunks) * kRowsPerChunk, r1 = std::min(m, r0 + kRowsPerChunk);
      const size_t offset = i * m * k + r0 * k;
      prepare_a(a_packed.get() + offset, a_mask ? a_mask.get() + offset : nullptr, (r1 - r0) * k, variant, bias,
                stand_in);
    });
  }

  // Tasks: (batch, row block, panel block). Few rows (e.g. matrix-vector): split the
  // columns too, so that every thread gets work.
  const size_t row_ops = std::max<size_t>(1, k * n);
  const size_t rows_per_task = std::min(m, std::max<size_t>(fast ? 48 : 1, kMinOpsPerTask / row_ops));
  const size_t row_blocks = ceil_div(m, rows_per_task);
  const size_t panel_ops = std::max<size_t>(1, rows_per_task * k * (fast ? nr : n));
  const size_t panels_per_task = fast ? std::max<size_t>(1, (kMinOpsPerTask * 4) / panel_ops) : 1;
  const size_t panel_blocks = fast ? ceil_div(panels, panels_per_task) : 1;

  parallel_for(batches * row_blocks * panel_blocks, [&](size_t t) {
    const size_t batch = t / (row_blocks * panel_blocks), rest = t % (row_blocks * panel_blocks);
    const size_t r0 = (rest / panel_blocks) * rows_per_task, r1 = std::min(m, r0 + rows_per_task);
    float* acc = in_place ? reinterpret_cast<float*>(y) + batch * m * n : scratch.get() + batch * m * n;
    const uint32_t* a_matrix = a_packed.get() + plan.a_matrix[batch] * m * k;
    size_t j0 = 0, j1 = n;
    if (fast) {
      const size_t p0 = (rest % panel_blocks) * panels_per_task, p1 = std::min(panels, p0 + panels_per_task);
      j0 = p0 * nr;
      j1 = std::min(n, p1 * nr);
      const size_t b_offset = plan.b_matrix[batch] * panels * k * nr;
      lmul_gemm_fast(variant, a_matrix, a_mask ? a_mask.get() + plan.a_matrix[batch] * m * k : nullptr,
                     packed_b.panels.get() + b_offset, b_masks ? b_masks + b_offset : nullptr, k, n, r0, r1, p0, p1,
                     acc, n, packed_b.range.min_nonzero);
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
        lmul_run<S>(a + ao, as, b + bo, bs, y + yo, length, mantissa_bits, bias);
      }
    });
  });
}

#define LMUL_INSTANTIATE(S)                                                                                        \
  template std::unique_ptr<const PackedB> pack_b<S>(const S::type*, const Shape&, size_t, size_t, size_t, bool,   \
                                                    int, const ParallelFor&);                                     \
  template void lmul_matrix_product<S>(const MatMulPlan&, const ProductOperands<S>&, int, uint32_t,               \
                                       const GemmTerms<S>*, S::type*, const ParallelFor&);                        \
  template void lmul_elementwise<S>(const BroadcastPlan&, const S::type*, const S::type*, S::type*, int,          \
                                    uint32_t, const ParallelFor&);

LMUL_INSTANTIATE(Float32Storage)
LMUL_INSTANTIATE(Float16Storage)
LMUL_INSTANTIATE(BFloat16Storage)

#undef LMUL_INSTANTIATE

}  // namespace lmul
