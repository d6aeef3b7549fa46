#include "shapes.h"

#include <algorithm>

namespace lmul {

std::string shape_to_string(const Shape& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  if (shape.size() == 1) text += ",";
  return text + ")";
}

bool element_count(const Shape& shape, size_t& count) {
  size_t total = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    if (__builtin_mul_overflow(total, static_cast<size_t>(dim), &total)) return false;
  }
  count = total;
  return true;
}

bool broadcast_shapes(const Shape& a, const Shape& b, Shape& out, std::string& error) {
  const size_t rank = std::max(a.size(), b.size());
  out.assign(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) {
      error = "shapes " + shape_to_string(a) + " and " + shape_to_string(b) +
              " cannot be broadcast together";
      return false;
    }
    out[i] = da == 1 ? db : da;
  }
  return true;
}

std::vector<size_t> broadcast_strides(const Shape& in, const Shape& out) {
  std::vector<size_t> strides(out.size(), 0);
  size_t stride = 1;
  for (size_t i = in.size(); i-- > 0;) {
    const size_t out_axis = i + (out.size() - in.size());
    strides[out_axis] = in[i] == 1 ? 0 : stride;
    stride *= static_cast<size_t>(in[i]);
  }
  return strides;
}

bool make_broadcast_plan(const Shape& a, const Shape& b, BroadcastPlan& plan, std::string& error) {
  if (!broadcast_shapes(a, b, plan.out_shape, error)) return false;
  if (!element_count(plan.out_shape, plan.total)) {
    error = "output shape " + shape_to_string(plan.out_shape) + " is too large";
    return false;
  }
  plan.a_strides = broadcast_strides(a, plan.out_shape);
  plan.b_strides = broadcast_strides(b, plan.out_shape);
  return true;
}

bool make_matmul_plan(const Shape& a, const Shape& b, MatMulPlan& plan, std::string& error) {
  if (a.empty() || b.empty()) {
    error = "MatMul operands must have at least one dimension, got " + shape_to_string(a) +
            " and " + shape_to_string(b);
    return false;
  }
  // numpy's 1-D promotion: A (K,) -> (1, K), B (K,) -> (K, 1); the unit axis is dropped later.
  Shape a2 = a, b2 = b;
  if (a2.size() == 1) a2.insert(a2.begin(), 1);
  if (b2.size() == 1) b2.push_back(1);
  const int64_t k_a = a2.back(), k_b = b2[b2.size() - 2];
  if (k_a != k_b) {
    error = "MatMul inner dimensions differ: " + shape_to_string(a) + " @ " + shape_to_string(b);
    return false;
  }
  const Shape a_batch(a2.begin(), a2.end() - 2), b_batch(b2.begin(), b2.end() - 2);
  Shape batch;
  if (!broadcast_shapes(a_batch, b_batch, batch, error)) {
    error = "MatMul batch dimensions of " + shape_to_string(a) + " and " + shape_to_string(b) +
            " cannot be broadcast together";
    return false;
  }
  plan.m = static_cast<size_t>(a2[a2.size() - 2]);
  plan.k = static_cast<size_t>(k_a);
  plan.n = static_cast<size_t>(b2.back());

  plan.out_shape = batch;
  if (a.size() > 1) plan.out_shape.push_back(static_cast<int64_t>(plan.m));
  if (b.size() > 1) plan.out_shape.push_back(static_cast<int64_t>(plan.n));
  size_t out_elements = 0, batches = 0;
  if (!element_count(plan.out_shape, out_elements) || !element_count(batch, batches) ||
      !element_count(a_batch, plan.a_matrices) || !element_count(b_batch, plan.b_matrices)) {
    error = "MatMul output shape " + shape_to_string(plan.out_shape) + " is too large";
    return false;
  }
  const std::vector<size_t> a_strides = broadcast_strides(a_batch, batch);
  const std::vector<size_t> b_strides = broadcast_strides(b_batch, batch);
  plan.a_matrix.assign(batches, 0);
  plan.b_matrix.assign(batches, 0);
  std::vector<size_t> index(batch.size(), 0);
  for (size_t t = 0; t < batches; ++t) {
    size_t ia = 0, ib = 0;
    for (size_t d = 0; d < batch.size(); ++d) {
      ia += index[d] * a_strides[d];
      ib += index[d] * b_strides[d];
    }
    plan.a_matrix[t] = ia;
    plan.b_matrix[t] = ib;
    for (size_t d = batch.size(); d-- > 0;) {
      if (++index[d] < static_cast<size_t>(batch[d])) break;
      index[d] = 0;
    }
  }
  return true;
}

bool make_gemm_plan(const Shape& a, const Shape& b, const Shape* c, bool trans_a, bool trans_b,
                    GemmPlan& plan, std::string& error) {
  if (a.size() != 2 || b.size() != 2) {
    error = "Gemm operands A and B must be 2-D, got " + shape_to_string(a) + " and " +
            shape_to_string(b);
    return false;
  }
  plan.m = static_cast<size_t>(trans_a ? a[1] : a[0]);
  plan.k = static_cast<size_t>(trans_a ? a[0] : a[1]);
  const size_t k_b = static_cast<size_t>(trans_b ? b[1] : b[0]);
  plan.n = static_cast<size_t>(trans_b ? b[0] : b[1]);
  if (plan.k != k_b) {
    error = "Gemm inner dimensions differ: A " + shape_to_string(a) + (trans_a ? " (transposed)" : "") +
            ", B " + shape_to_string(b) + (trans_b ? " (transposed)" : "");
    return false;
  }
  plan.has_c = c != nullptr;
  if (c) {
    const Shape target{static_cast<int64_t>(plan.m), static_cast<int64_t>(plan.n)};
    Shape out;
    std::string ignored;
    if (c->size() > 2 || !broadcast_shapes(*c, target, out, ignored) || out != target) {
      error = "Gemm input C " + shape_to_string(*c) + " cannot be broadcast to (M, N) = " +
              shape_to_string(target);
      return false;
    }
    const std::vector<size_t> strides = broadcast_strides(*c, target);
    plan.c_row_stride = strides[0];
    plan.c_col_stride = strides[1];
  }
  return true;
}

}  // namespace lmul
