// Whole L-Mul operations over tensors: operand preparation (rounding, pre-scan, packing
// of B) and the scheduling of the work into independent tasks, without onnxruntime types.
//
// The caller (the onnxruntime binding, the C++ tests, a benchmark) validates shapes with
// shapes.h, allocates the output and passes a ParallelFor: the only thing it knows about
// threads. Everything here is deterministic: the split into tasks never changes a bit of
// the result (each output element is summed over k in order by exactly one task).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "lmul_gemm.h"
#include "lmul_kernels.h"
#include "shapes.h"

namespace lmul {

// Runs task(i) for every i < tasks, in any order and possibly concurrently, and returns
// when all have finished. Tasks never write to the same memory.
using ParallelFor = std::function<void(size_t tasks, const std::function<void(size_t)>& task)>;

// A ParallelFor that runs the tasks one after the other on the calling thread.
void run_serially(size_t tasks, const std::function<void(size_t)>& task);

// Work below this many scalar operations is not worth handing to another thread.
constexpr size_t kMinOpsPerTask = size_t{1} << 16;

// The most threads that ran tasks of one call of `parallel_for` at once, at most `limit`:
// it runs `limit` tasks that each wait until all have started (or none has for `wait_us`
// microseconds, or 8 times that has passed in all), and counts the threads they ran on.
size_t measure_concurrency(const ParallelFor& parallel_for, size_t limit, unsigned wait_us);

// The CPUs this process may run on (its affinity mask; std::thread::hardware_concurrency
// where there is none), at least 1.
size_t hardware_threads();

// How many threads a ParallelFor runs at once, measured on first use and kept (one per
// kernel instance). onnxruntime's C API does not tell a custom op the size of its
// intra-op pool (a session of one thread has none: every task runs on the caller), and
// some splits of work only pay when threads run them side by side. A hint for the split,
// never for the bits: no result depends on it.
class Concurrency {
 public:
  Concurrency() = default;
  // A fixed count, never measured (tests: the splits of many threads on any machine).
  explicit Concurrency(size_t threads) : threads_(threads), measurements_(kMeasurements), fixed_(true) {}

  // The threads `parallel_for` runs at once, up to hardware_threads(). The largest of up
  // to three measurements, one per call while it is below that (a pool asleep or a
  // machine busy at the first one can show fewer).
  size_t of(const ParallelFor& parallel_for);
  bool fixed() const { return fixed_; }

 private:
  static constexpr unsigned kMeasurements = 3;
  std::atomic<size_t> threads_{0};
  std::atomic<unsigned> measurements_{0};
  bool fixed_ = false;
};

// B of a matrix product, rounded, analysed and packed into the one-add kernels' compact
// panels (lmul_gemm.h, PanelsView): per call, or once when B is a constant initializer
// (weights). Rounded to m <= 7 bits, every entry is a bfloat16 bit pattern and the panels
// keep 16 bits per entry (half the memory and the bytes read of 32-bit panels); zeros
// are stored as 0 and tested by the kernels, so no mask is kept. Without SIMD it keeps
// row-major rounded B for the portable loop instead.
struct PackedB {
  Shape shape;  // the tensor shape it was packed from (a constant B is reused only for it)
  OperandRange range;
  std::unique_ptr<uint32_t[]> rounded;      // row-major K x N per matrix, only without SIMD
  std::unique_ptr<uint32_t[]> panels;       // panels_per_matrix panels of K x panel_width() each,
  std::unique_ptr<uint16_t[]> half_panels;  // or their high halves (m <= kHalfPanelMantissaBits)
  std::unique_ptr<uint64_t[]> zero_rows;    // zero_row_bits of every panel, with panels
  size_t panels_per_matrix = 0;
  size_t entries_per_matrix = 0;  // panels_per_matrix * K * panel_width()
  size_t zero_row_words_per_matrix = 0;  // panels_per_matrix * zero_row_words(K)
  size_t matrices = 0;            // K x N matrices packed
  size_t shape_entries = 0;       // K * N

  bool has_panels() const { return panels || half_panels; }
  // The panels of B matrix `i`.
  PanelsView matrix(size_t i) const;
  // Bytes of packed data it holds (what constant weights add to a session).
  size_t bytes() const;
};

// Packs `matrices` K x N matrices of B (each stored N x K when `transposed`), consecutive
// in `data`, rounded to `mantissa_bits`.
template <class S>
std::unique_ptr<const PackedB> pack_b(const typename S::type* data, const Shape& shape, size_t matrices, size_t k,
                                      size_t n, bool transposed, int mantissa_bits, const ParallelFor& parallel_for);

// Gemm's ordinary float32 terms (SPEC 3): y = alpha * (A (*) B) + beta * C, C read through
// strides (0 along broadcast dimensions); c may be null.
template <class S>
struct GemmTerms {
  float alpha = 1.0f, beta = 1.0f;
  const typename S::type* c = nullptr;
  size_t c_row_stride = 0, c_col_stride = 0;
};

// The operands of one LMulMatMul / LMulGemm call. A holds plan.a_matrices M x K matrices
// (K x M when trans_a), B plan.b_matrices K x N matrices (N x K when trans_b).
template <class S>
struct ProductOperands {
  const typename S::type* a = nullptr;
  const typename S::type* b = nullptr;
  bool trans_a = false, trans_b = false;
  // B packed beforehand by pack_b from this same tensor (constant weights), or null: then
  // B is read, and packed if that pays, on every call.
  const PackedB* prepared_b = nullptr;
  // A's float32 bit patterns (the memory of `a`, from a caller that holds it untyped), or
  // null: at full precision (m = 23) and not transposed, A is then read in place instead
  // of copied (A is already "rounded").
  const uint32_t* a_bits = nullptr;
};

// y (plan.out_shape, row-major) = A (*) B per batch of `plan`, every product an L-Mul at
// `mantissa_bits` (the operands' own precision at most) with SPEC 1's additive constant
// `bias` (lmul_bias, or lmul_bias_for_offset of a node's `offset`: SPEC 4), sums in float32 in k order, then the Gemm terms when `gemm` is not
// null. Picks the fastest exact kernel for the data. `concurrency` (may be null: one
// thread is assumed) tells how finely to split work that only pays on several threads.
template <class S>
void lmul_matrix_product(const MatMulPlan& plan, const ProductOperands<S>& operands, int mantissa_bits, uint32_t bias,
                         const GemmTerms<S>* gemm, typename S::type* y, const ParallelFor& parallel_for,
                         Concurrency* concurrency = nullptr);

// `count` values of a tensor as float32 bit patterns rounded to `mantissa_bits` (SPEC 1,
// step 1; float16 / bfloat16 widened exactly first, SPEC 2), vectorised.
template <class S>
void round_to_bits(const typename S::type* src, size_t count, int mantissa_bits, uint32_t* dst);

// `count` float32 sums stored in the tensor type (SPEC 2: round-to-nearest-even once),
// vectorised.
template <class S>
void narrow_sums(const float* src, size_t count, typename S::type* dst);

// y (plan.out_shape) = LMul(a, b) element-wise with numpy broadcasting, with SPEC 1's
// additive constant `bias`.
template <class S>
void lmul_elementwise(const BroadcastPlan& plan, const typename S::type* a, const typename S::type* b,
                      typename S::type* y, int mantissa_bits, uint32_t bias, const ParallelFor& parallel_for);

}  // namespace lmul
