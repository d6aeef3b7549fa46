// Shape rules of the three ops (numpy broadcasting, numpy matmul, ONNX Gemm), without
// onnxruntime types. Each function validates its inputs and reports a readable error
// instead of touching memory it should not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lmul {

using Shape = std::vector<int64_t>;

std::string shape_to_string(const Shape& shape);

// Number of elements; false when a dimension is negative or the count overflows.
bool element_count(const Shape& shape, size_t& count);

// Multidirectional (numpy) broadcasting of two shapes.
bool broadcast_shapes(const Shape& a, const Shape& b, Shape& out, std::string& error);

// Element strides of `in` (row-major) seen through the broadcast shape `out`
// (right-aligned; 0 along broadcast dimensions). Precondition: `in` broadcasts to `out`.
std::vector<size_t> broadcast_strides(const Shape& in, const Shape& out);

// An element-wise broadcast, reduced to runs along the innermost dimension.
struct BroadcastPlan {
  Shape out_shape;
  std::vector<size_t> a_strides, b_strides;  // per output dimension, in elements
  size_t total = 0;                          // output elements
};

bool make_broadcast_plan(const Shape& a, const Shape& b, BroadcastPlan& plan, std::string& error);

// Calls run(a_offset, b_offset, out_offset, length, a_step, b_step) for the output range
// [begin, end), one call per stretch along the innermost dimension.
template <class Run>
void for_each_run(const BroadcastPlan& plan, size_t begin, size_t end, Run&& run) {
  const size_t rank = plan.out_shape.size();
  if (begin >= end) return;
  if (rank == 0) {
    run(size_t{0}, size_t{0}, size_t{0}, size_t{1}, size_t{0}, size_t{0});
    return;
  }
  const size_t inner = static_cast<size_t>(plan.out_shape[rank - 1]);
  std::vector<size_t> index(rank, 0);
  size_t rest = begin;
  for (size_t d = rank; d-- > 0;) {
    const size_t extent = static_cast<size_t>(plan.out_shape[d]);
    index[d] = rest % extent;
    rest /= extent;
  }
  size_t position = begin;
  while (position < end) {
    size_t a_offset = 0, b_offset = 0;
    for (size_t d = 0; d < rank; ++d) {
      a_offset += index[d] * plan.a_strides[d];
      b_offset += index[d] * plan.b_strides[d];
    }
    const size_t available = inner - index[rank - 1];
    const size_t length = available < end - position ? available : end - position;
    run(a_offset, b_offset, position, length, plan.a_strides[rank - 1], plan.b_strides[rank - 1]);
    position += length;
    // Advance the multi-index by `length` (to the start of the next row, or the end).
    index[rank - 1] += length;
    for (size_t d = rank - 1; d > 0 && index[d] == static_cast<size_t>(plan.out_shape[d]); --d) {
      index[d] = 0;
      ++index[d - 1];
    }
  }
}

// numpy.matmul: 1-D promotion, batch broadcasting. Offsets are in matrices.
struct MatMulPlan {
  Shape out_shape;
  size_t m = 0, k = 0, n = 0;
  size_t a_matrices = 0, b_matrices = 0;        // matrices stored in A and B
  std::vector<size_t> a_matrix, b_matrix;       // per output batch: which A / B matrix
};

bool make_matmul_plan(const Shape& a, const Shape& b, MatMulPlan& plan, std::string& error);

// ONNX Gemm: A (M,K) or transposed, B (K,N) or transposed, optional C broadcast to (M,N).
struct GemmPlan {
  size_t m = 0, k = 0, n = 0;
  bool has_c = false;
  size_t c_row_stride = 0, c_col_stride = 0;  // elements; 0 along broadcast dimensions
};

bool make_gemm_plan(const Shape& a, const Shape& b, const Shape* c, bool trans_a, bool trans_b,
                    GemmPlan& plan, std::string& error);

}  // namespace lmul
