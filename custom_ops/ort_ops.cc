// The onnxruntime binding of the `lmul` op domain (docs/SPEC.md section 3).
//
// This file knows onnxruntime and nothing about the arithmetic: it reads attributes,
// validates shapes, allocates outputs, splits the work over onnxruntime's intra-op
// thread pool and calls the kernels in kernels/. Every failure becomes an OrtStatus that
// names the node; no exception crosses the C boundary.
#include "ort_attributes.h"  // includes onnxruntime_cxx_api.h with ORT_API_MANUAL_INIT

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "kernels/conv_shapes.h"
#include "kernels/lmul_conv.h"
#include "kernels/lmul_gemm.h"
#include "kernels/lmul_kernels.h"
#include "kernels/shapes.h"

namespace {

using lmul::BFloat16Storage;
using lmul::Float16Storage;
using lmul::Float32Storage;

constexpr const char* kDomain = "lmul";
// The C API version this library asks for: onnxruntime 1.21's, whatever headers it is built
// against, so that a build against newer headers still runs on every onnxruntime >= 1.21
// (pyproject's floor). Only functions of API <= 21 may be used.
constexpr uint32_t kOrtApiVersion = 21;
static_assert(ORT_API_VERSION >= kOrtApiVersion, "onnxruntime headers older than API 21");
constexpr const char* kMantissaBitsAttribute = "mantissa_bits";
constexpr const char* kOffsetAttribute = "offset";
// Work below this many scalar operations is not worth handing to another thread.
constexpr size_t kMinOpsPerTask = size_t{1} << 16;

enum class OpKind { kMul, kMatMul, kGemm, kConv, kConvTranspose };

constexpr const char* op_name(OpKind kind) {
  return kind == OpKind::kMul             ? "LMul"
         : kind == OpKind::kMatMul        ? "LMulMatMul"
         : kind == OpKind::kGemm          ? "LMulGemm"
         : kind == OpKind::kConv          ? "LMulConv"
                                          : "LMulConvTranspose";
}

template <class S>
constexpr ONNXTensorElementDataType onnx_type() {
  return S::kind == lmul::ElementType::kFloat32   ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
         : S::kind == lmul::ElementType::kFloat16 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                  : ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
}

template <class S>
constexpr const char* type_name() {
  return S::kind == lmul::ElementType::kFloat32   ? "float32"
         : S::kind == lmul::ElementType::kFloat16 ? "float16"
                                                  : "bfloat16";
}

using lmul_ort::NodeError;

// The `mantissa_bits` attribute (1..the type's width; absent = the type's width) and the
// L-Mul constant of the `offset` attribute (SPEC 4; absent = the paper's), as every op
// of the domain reads them.
template <class S>
void read_width_and_offset(const OrtKernelInfo* info, int& mantissa_bits, uint32_t& bias) {
  int64_t bits = 0;
  const int limit = lmul::type_mantissa_bits(S::kind);
  mantissa_bits = limit;
  if (lmul_ort::read_int(info, kMantissaBitsAttribute, bits)) {
    if (bits < 1 || bits > limit) {
      throw NodeError("attribute 'mantissa_bits' must be in 1.." + std::to_string(limit) + " for " +
                      type_name<S>() + " inputs, got " + std::to_string(bits));
    }
    mantissa_bits = static_cast<int>(bits);
  }
  int64_t offset = lmul::paper_offset(mantissa_bits);
  if (lmul_ort::read_int(info, kOffsetAttribute, offset) && (offset < 0 || offset >= lmul::kOffsetLimit)) {
    throw NodeError("attribute 'offset' must be in 0.." + std::to_string(lmul::kOffsetLimit - 1) +
                    " (0 <= offset < 2^23), got " + std::to_string(offset));
  }
  bias = lmul::lmul_bias_for_offset(static_cast<uint32_t>(offset));
}

// Hands `tasks` independent calls task(i) to onnxruntime's intra-op thread pool.
template <class Task>
void parallel_for(const Ort::KernelContext& context, size_t tasks, Task& task) {
  if (tasks == 0) return;
  if (tasks == 1) {
    task(size_t{0});
    return;
  }
  context.ParallelFor([](void* data, size_t i) { (*static_cast<Task*>(data))(i); }, tasks, 0, &task);
}

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

lmul::Shape shape_of(const Ort::ConstValue& value) {
  return value.GetTensorTypeAndShapeInfo().GetShape();
}

// Runs fn(i) for i < tasks, serially (used at session creation, without a thread pool).
struct SerialRunner {
  template <class Fn>
  void operator()(size_t tasks, Fn&& fn) const {
    for (size_t i = 0; i < tasks; ++i) fn(i);
  }
};

// Runs fn(i) for i < tasks on onnxruntime's intra-op thread pool.
struct PoolRunner {
  const Ort::KernelContext& context;
  template <class Fn>
  void operator()(size_t tasks, Fn&& fn) const {
    parallel_for(context, tasks, fn);
  }
};

// Runs body(), turning any exception into a status that names the op and the node.
template <OpKind Kind, class Body>
OrtStatusPtr guarded(const std::string& node, Body&& body) noexcept {
  auto fail = [&node](OrtErrorCode code, const char* what) {
    const std::string message = std::string(kDomain) + "." + op_name(Kind) + " node '" + node + "': " + what;
    return Ort::GetApi().CreateStatus(code, message.c_str());
  };
  try {
    body();
    return nullptr;
  } catch (const NodeError& e) {
    return fail(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(ORT_FAIL, "out of memory");
  } catch (const std::exception& e) {
    return fail(ORT_FAIL, e.what());
  } catch (...) {
    return fail(ORT_FAIL, "unknown error");
  }
}

// B of a matrix product, rounded, analysed and packed into the fast kernels' panels:
// per call, or once when B is a constant initializer (weights). Without SIMD, it keeps
// row-major rounded B for the portable loop instead.
struct PackedB {
  lmul::Shape shape;
  lmul::OperandRange range;
  std::vector<uint32_t> rounded;  // row-major K x N per matrix, only without SIMD
  std::unique_ptr<uint32_t[]> panels;
  std::unique_ptr<float[]> masks;  // 0/1 per panel entry, when B has zeros
  size_t panels_per_matrix = 0;

  // Each K x N matrix of B rounded into row-major order (what the portable loops read).
  template <class S, class Run>
  static std::vector<uint32_t> round_row_major(const typename S::type* data, size_t matrices, size_t k, size_t n,
                                               bool transposed, int mantissa_bits, Run&& run) {
    std::vector<uint32_t> rounded(matrices * k * n);
    run(matrices, [&](size_t i) {
      lmul::pack_rounded<S>(data + i * k * n, k, n, transposed ? 1 : n, transposed ? k : 1, mantissa_bits,
                            rounded.data() + i * k * n);
    });
    return rounded;
  }

  template <class S, class Run>
  static std::unique_ptr<const PackedB> from(const typename S::type* data, const lmul::Shape& shape, size_t matrices,
                                             size_t k, size_t n, bool transposed, int mantissa_bits, Run&& run) {
    auto b = std::make_unique<PackedB>();
    b->shape = shape;
    const size_t row_stride = transposed ? 1 : n, col_stride = transposed ? k : 1;
    // Scan in chunks of rows, in parallel, then merge.
    constexpr size_t kRowsPerChunk = 64;
    const size_t chunks = ceil_div(std::max<size_t>(k, 1), kRowsPerChunk);
    std::vector<lmul::OperandRange> ranges(matrices * chunks);
    run(matrices * chunks, [&](size_t t) {
      const size_t i = t / chunks, r0 = (t % chunks) * kRowsPerChunk, r1 = std::min(k, r0 + kRowsPerChunk);
      lmul::scan_rounded<S>(data + i * k * n, r0, r1, n, row_stride, col_stride, mantissa_bits, ranges[t]);
    });
    for (const lmul::OperandRange& part : ranges) b->range.merge(part);
    const size_t nr = lmul::panel_width();
    if (nr == 0) {
      b->rounded = round_row_major<S>(data, matrices, k, n, transposed, mantissa_bits, run);
      return b;
    }
    b->panels_per_matrix = ceil_div(n, nr);
    const size_t per_matrix = b->panels_per_matrix * k * nr;
    b->panels.reset(new uint32_t[matrices * per_matrix]);
    if (b->range.has_zero) b->masks.reset(new float[matrices * per_matrix]);
    const uint32_t stand_in = lmul::zero_stand_in_b(b->range);
    run(matrices * b->panels_per_matrix, [&](size_t t) {
      const size_t i = t / b->panels_per_matrix, panel = t % b->panels_per_matrix;
      lmul::pack_panels_rounded<S>(data + i * k * n, k, n, row_stride, col_stride, mantissa_bits, nr, stand_in, panel,
                                   panel + 1, b->panels.get() + i * per_matrix,
                                   b->masks ? b->masks.get() + i * per_matrix : nullptr);
    });
    return b;
  }
};

template <OpKind Kind, class S>
struct LMulKernel {
  using T = typename S::type;

  std::string node_name;
  int mantissa_bits = lmul::type_mantissa_bits(S::kind);
  uint32_t bias = 0;  // lmul_bias_for_offset of the `offset` attribute or the paper's (SPEC 4)
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 1.0f;
  std::unique_ptr<const PackedB> constant_b;  // B prepared at session creation, if constant

  LMulKernel(const OrtKernelInfo* info) {
    node_name = Ort::ConstKernelInfo(info).GetNodeName();
    read_width_and_offset<S>(info, mantissa_bits, bias);
    if (Kind == OpKind::kGemm) {
      trans_a = lmul_ort::read_flag(info, "transA");
      trans_b = lmul_ort::read_flag(info, "transB");
      lmul_ort::read_float(info, "alpha", alpha);
      lmul_ort::read_float(info, "beta", beta);
    }
    if (Kind != OpKind::kMul) PrepareConstantB(info);
  }

  // Weights are constant: round, scan and pack them once, here.
  void PrepareConstantB(const OrtKernelInfo* info) {
    int is_constant = 0;
    const Ort::ConstValue b = Ort::ConstKernelInfo(info).GetTensorConstantInput(1, &is_constant);
    if (!is_constant || !b || !b.IsTensor()) return;
    const Ort::TensorTypeAndShapeInfo type_shape = b.GetTensorTypeAndShapeInfo();
    if (type_shape.GetElementType() != onnx_type<S>()) return;
    const lmul::Shape shape = type_shape.GetShape();
    size_t matrices = 1, k = 0, n = 0;
    if (Kind == OpKind::kGemm) {
      if (shape.size() != 2) return;  // Compute reports the error
      k = static_cast<size_t>(trans_b ? shape[1] : shape[0]);
      n = static_cast<size_t>(trans_b ? shape[0] : shape[1]);
    } else if (shape.size() == 1) {
      k = static_cast<size_t>(shape[0]);
      n = 1;
    } else if (shape.size() >= 2) {
      k = static_cast<size_t>(shape[shape.size() - 2]);
      n = static_cast<size_t>(shape.back());
      if (!lmul::element_count(lmul::Shape(shape.begin(), shape.end() - 2), matrices)) return;
    } else {
      return;
    }
    constant_b = PackedB::from<S>(static_cast<const T*>(b.GetTensorRawData()), shape, matrices, k, n, trans_b,
                                  mantissa_bits, SerialRunner{});
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) noexcept { return guarded<Kind>(node_name, [&] { Compute(raw_context); }); }

  void Compute(OrtKernelContext* raw_context) const {
    Ort::KernelContext context(raw_context);
    if (Kind == OpKind::kMul) {
      ComputeMul(context);
    } else {
      ComputeMatrixProduct(context);
    }
  }

  void ComputeMul(Ort::KernelContext& context) const {
    const Ort::ConstValue a = context.GetInput(0), b = context.GetInput(1);
    lmul::BroadcastPlan plan;
    std::string error;
    if (!lmul::make_broadcast_plan(shape_of(a), shape_of(b), plan, error)) throw NodeError(error);
    Ort::UnownedValue y = context.GetOutput(0, plan.out_shape);
    if (plan.total == 0) return;
    const T* pa = static_cast<const T*>(a.GetTensorRawData());
    const T* pb = static_cast<const T*>(b.GetTensorRawData());
    T* py = static_cast<T*>(y.GetTensorMutableRawData());
    const size_t chunk = kMinOpsPerTask;
    const int m = mantissa_bits;
    const uint32_t product_bias = bias;
    auto task = [&](size_t t) {
      const size_t begin = t * chunk, end = std::min(plan.total, begin + chunk);
      lmul::for_each_run(plan, begin, end,
                         [&](size_t ao, size_t bo, size_t yo, size_t length, size_t as, size_t bs) {
                           if constexpr (std::is_same<T, float>::value) {
                             lmul::lmul_run_float32(pa + ao, as, pb + bo, bs, py + yo, length, m, product_bias);
                           } else {
                             lmul::lmul_run<S>(pa + ao, as, pb + bo, bs, py + yo, length, m, product_bias);
                           }
                         });
    };
    parallel_for(context, ceil_div(plan.total, chunk), task);
  }

  // LMulMatMul and LMulGemm: round and scan the operands once, pick the fastest exact
  // variant (lmul_gemm.h), then compute independent (batch, row block, panel) tasks.
  void ComputeMatrixProduct(Ort::KernelContext& context) const {
    const Ort::ConstValue a = context.GetInput(0), b = context.GetInput(1);
    const lmul::Shape a_shape = shape_of(a), b_shape = shape_of(b);
    std::string error;
    lmul::MatMulPlan mm;
    lmul::GemmPlan gemm;
    Ort::ConstValue c{nullptr};
    lmul::Shape c_shape;
    if (Kind == OpKind::kMatMul) {
      if (!lmul::make_matmul_plan(a_shape, b_shape, mm, error)) throw NodeError(error);
    } else {
      if (context.GetInputCount() > 2) c = context.GetInput(2);
      if (c) c_shape = shape_of(c);
      if (!lmul::make_gemm_plan(a_shape, b_shape, c ? &c_shape : nullptr, trans_a, trans_b, gemm, error)) {
        throw NodeError(error);
      }
      mm.m = gemm.m;
      mm.k = gemm.k;
      mm.n = gemm.n;
      mm.out_shape = {static_cast<int64_t>(gemm.m), static_cast<int64_t>(gemm.n)};
      mm.a_matrices = mm.b_matrices = 1;
      mm.a_matrix = mm.b_matrix = {0};
    }
    Ort::UnownedValue y = context.GetOutput(0, mm.out_shape);
    const size_t m = mm.m, k = mm.k, n = mm.n, batches = mm.a_matrix.size();
    if (m == 0 || n == 0 || batches == 0) return;

    const T* pa = static_cast<const T*>(a.GetTensorRawData());
    const T* pb = static_cast<const T*>(b.GetTensorRawData());
    const PoolRunner pool{context};
    // A rounded once (not once per product) and scanned, in parallel row chunks.
    constexpr size_t kRowsPerChunk = 64;
    const size_t a_chunks = ceil_div(m, kRowsPerChunk);
    std::unique_ptr<uint32_t[]> a_packed(new uint32_t[std::max<size_t>(1, mm.a_matrices * m * k)]);
    std::vector<lmul::OperandRange> a_ranges(mm.a_matrices * a_chunks);
    const size_t a_row_stride = trans_a ? 1 : k, a_col_stride = trans_a ? m : 1;
    pool(mm.a_matrices * a_chunks, [&](size_t t) {
      const size_t i = t / a_chunks, r0 = (t % a_chunks) * kRowsPerChunk, r1 = std::min(m, r0 + kRowsPerChunk);
      uint32_t* rows = a_packed.get() + i * m * k + r0 * k;
      lmul::pack_rounded<S>(pa + i * m * k + r0 * a_row_stride, r1 - r0, k, a_row_stride, a_col_stride, mantissa_bits,
                            rows);
      a_ranges[t].scan(rows, (r1 - r0) * k);
    });
    lmul::OperandRange a_range;
    for (const lmul::OperandRange& part : a_ranges) a_range.merge(part);

    std::unique_ptr<const PackedB> per_call_b;
    if (!(constant_b && constant_b->shape == b_shape)) {
      per_call_b = PackedB::from<S>(pb, b_shape, mm.b_matrices, k, n, trans_b, mantissa_bits, pool);
    }
    const PackedB& packed_b = per_call_b ? *per_call_b : *constant_b;

    T* py = static_cast<T*>(y.GetTensorMutableRawData());
    const T* pc = c ? static_cast<const T*>(c.GetTensorRawData()) : nullptr;

    // Can every product be one integer add (lmul_gemm.h)?
    const size_t nr = lmul::panel_width();
    const lmul::GemmVariant variant = lmul::choose_variant(a_range, packed_b.range, bias, packed_b.panels != nullptr);
    const bool fast = lmul::is_one_add(variant);
    const size_t panels = fast ? packed_b.panels_per_matrix : 1;
    // The portable loop needs row-major rounded B, which packed panels do not keep.
    std::vector<uint32_t> b_rounded;
    if (!fast && packed_b.rounded.empty()) {
      b_rounded = PackedB::round_row_major<S>(pb, mm.b_matrices, k, n, trans_b, mantissa_bits, pool);
    }
    const uint32_t* b_row_major = packed_b.rounded.empty() ? b_rounded.data() : packed_b.rounded.data();
    std::unique_ptr<float[]> a_mask(lmul::masks_a(variant) ? new float[mm.a_matrices * m * k] : nullptr);
    const float* b_masks = lmul::masks_b(variant) ? packed_b.masks.get() : nullptr;
    if (fast) {
      const uint32_t stand_in = lmul::zero_stand_in_a(packed_b.range);
      pool(mm.a_matrices * a_chunks, [&](size_t t) {
        const size_t i = t / a_chunks, r0 = (t % a_chunks) * kRowsPerChunk, r1 = std::min(m, r0 + kRowsPerChunk);
        const size_t offset = i * m * k + r0 * k;
        lmul::prepare_a(a_packed.get() + offset, a_mask ? a_mask.get() + offset : nullptr, (r1 - r0) * k, variant,
                        bias, stand_in);
      });
    }

    // float32 results are summed in place; other types go through a float32 scratch buffer.
    constexpr bool kInPlace = std::is_same<T, float>::value && Kind == OpKind::kMatMul;
    const size_t row_ops = std::max<size_t>(1, k * n);
    const size_t rows_per_task = std::min(m, std::max<size_t>(fast ? 48 : 1, kMinOpsPerTask / row_ops));
    const size_t row_blocks = ceil_div(m, rows_per_task);
    // Few rows (e.g. matrix-vector): split the columns too, so that every thread gets work.
    const size_t panel_ops = std::max<size_t>(1, rows_per_task * k * (fast ? nr : n));
    const size_t panels_per_task = fast ? std::max<size_t>(1, (kMinOpsPerTask * 4) / panel_ops) : 1;
    const size_t panel_blocks = fast ? ceil_div(panels, panels_per_task) : 1;
    std::unique_ptr<float[]> scratch(kInPlace ? nullptr : new float[batches * m * n]);

    auto task = [&](size_t t) {
      const size_t batch = t / (row_blocks * panel_blocks), rest = t % (row_blocks * panel_blocks);
      const size_t r0 = (rest / panel_blocks) * rows_per_task, r1 = std::min(m, r0 + rows_per_task);
      float* acc = kInPlace ? reinterpret_cast<float*>(py) + batch * m * n : scratch.get() + batch * m * n;
      const uint32_t* a_matrix = a_packed.get() + mm.a_matrix[batch] * m * k;
      size_t j0 = 0, j1 = n;
      if (fast) {
        const size_t p0 = (rest % panel_blocks) * panels_per_task, p1 = std::min(panels, p0 + panels_per_task);
        j0 = p0 * nr;
        j1 = std::min(n, p1 * nr);
        const size_t b_offset = mm.b_matrix[batch] * panels * k * nr;
        lmul::lmul_gemm_fast(variant, a_matrix, a_mask ? a_mask.get() + mm.a_matrix[batch] * m * k : nullptr,
                             packed_b.panels.get() + b_offset, b_masks ? b_masks + b_offset : nullptr, k, n, r0, r1,
                             p0, p1, acc, n);
      } else {
        const auto rows = variant == lmul::GemmVariant::kNormal ? lmul::lmul_matmul_rows_normal : lmul::lmul_matmul_rows;
        rows(a_matrix, b_row_major + mm.b_matrix[batch] * k * n, k, n, r0, r1, bias, acc + r0 * n);
      }
      if (kInPlace) return;
      for (size_t r = r0; r < r1; ++r) {
        const float* s = acc + r * n;
        T* out = py + batch * m * n + r * n;
        for (size_t j = j0; j < j1; ++j) {
          float value = s[j];
          if (Kind == OpKind::kGemm) {
            value = alpha * value;  // ordinary float32 scalings (SPEC 3)
            if (pc) value += beta * S::load(pc[r * gemm.c_row_stride + j * gemm.c_col_stride]);
          }
          out[j] = S::store(value);
        }
      }
    };
    parallel_for(context, batches * row_blocks * panel_blocks, task);
  }
};

// onnxruntime's thread pool as the kernels' ParallelFor. A task that throws (out of
// memory) must not unwind through onnxruntime's threads: the failure is rethrown here.
lmul::ParallelFor pool_parallel_for(const Ort::KernelContext& context) {
  return [&context](size_t tasks, const std::function<void(size_t)>& task) {
    std::atomic<bool> failed{false};
    std::function<void(size_t)> safe = [&](size_t i) {
      try {
        task(i);
      } catch (...) {
        failed = true;
      }
    };
    parallel_for(context, tasks, safe);
    if (failed) throw std::bad_alloc();
  };
}

void serial_for(size_t tasks, const std::function<void(size_t)>& task) {
  for (size_t i = 0; i < tasks; ++i) task(i);
}

// LMulConv and LMulConvTranspose: attributes checked when the session is created,
// constant weights rounded and scanned then, the rest in kernels/lmul_conv.h.
template <OpKind Kind, class S>
struct LMulConvKernel {
  using T = typename S::type;
  static constexpr bool kTranspose = Kind == OpKind::kConvTranspose;

  std::string node_name;
  int mantissa_bits = lmul::type_mantissa_bits(S::kind);
  uint32_t bias = 0;  // the L-Mul constant of `offset` or the paper's (SPEC 4)
  lmul::ConvAttributes attributes;
  std::unique_ptr<const lmul::ConvWeights> constant_w;

  explicit LMulConvKernel(const OrtKernelInfo* info) {
    node_name = Ort::ConstKernelInfo(info).GetNodeName();
    read_width_and_offset<S>(info, mantissa_bits, bias);
    std::string auto_pad;
    if (lmul_ort::read_string(info, "auto_pad", auto_pad) && !lmul::parse_auto_pad(auto_pad, attributes.auto_pad)) {
      throw NodeError("attribute 'auto_pad' must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '" + auto_pad + "'");
    }
    lmul_ort::read_int(info, "group", attributes.group);
    lmul_ort::read_ints(info, "dilations", attributes.dilations);
    lmul_ort::read_ints(info, "kernel_shape", attributes.kernel_shape);
    lmul_ort::read_ints(info, "pads", attributes.pads);
    lmul_ort::read_ints(info, "strides", attributes.strides);
    // Read for Conv too, so that check_conv_attributes refuses them there.
    lmul_ort::read_ints(info, "output_padding", attributes.output_padding);
    lmul_ort::read_ints(info, "output_shape", attributes.output_shape);
    std::string error;
    if (!lmul::check_conv_attributes(attributes, kTranspose, error)) throw NodeError(error);
    PrepareConstantW(info);
  }

  // Weights are constant: round and scan them once, here.
  void PrepareConstantW(const OrtKernelInfo* info) {
    int is_constant = 0;
    const Ort::ConstValue w = Ort::ConstKernelInfo(info).GetTensorConstantInput(1, &is_constant);
    if (!is_constant || !w || !w.IsTensor()) return;
    const Ort::TensorTypeAndShapeInfo type_shape = w.GetTensorTypeAndShapeInfo();
    if (type_shape.GetElementType() != onnx_type<S>()) return;
    const lmul::Shape shape = type_shape.GetShape();
    if (!WeightsUsable(shape)) return;  // Compute reports the error
    auto prepared = std::make_unique<lmul::ConvWeights>();
    lmul::round_conv_weights<S>(static_cast<const T*>(w.GetTensorRawData()), shape,
                                static_cast<size_t>(attributes.group), kTranspose, mantissa_bits, serial_for,
                                *prepared);
    constant_w = std::move(prepared);
  }

  bool WeightsUsable(const lmul::Shape& shape) const {
    size_t count = 0;
    if (shape.size() < 3 || !lmul::element_count(shape, count)) return false;
    return static_cast<size_t>(shape[0]) % static_cast<size_t>(attributes.group) == 0;
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) noexcept {
    return guarded<Kind>(node_name, [&] { Compute(raw_context); });
  }

  void Compute(OrtKernelContext* raw_context) const {
    Ort::KernelContext context(raw_context);
    const Ort::ConstValue x = context.GetInput(0), w = context.GetInput(1);
    Ort::ConstValue b{nullptr};
    if (context.GetInputCount() > 2) b = context.GetInput(2);
    const lmul::Shape x_shape = shape_of(x), w_shape = shape_of(w);
    lmul::Shape b_shape;
    if (b) b_shape = shape_of(b);
    lmul::ConvPlan plan;
    std::string error;
    if (!lmul::make_conv_plan(x_shape, w_shape, b ? &b_shape : nullptr, attributes, kTranspose, plan, error)) {
      throw NodeError(error);
    }
    Ort::UnownedValue y = context.GetOutput(0, plan.out_shape);
    const size_t y_count = plan.batch * plan.out_channels * plan.out_pixels;
    if (y_count == 0) return;
    const lmul::ParallelFor parallel = pool_parallel_for(context);

    // X rounded once, in parallel chunks.
    const size_t x_count = plan.batch * plan.in_channels * plan.in_pixels;
    std::unique_ptr<uint32_t[]> x_bits(new uint32_t[std::max<size_t>(1, x_count)]);
    const T* px = static_cast<const T*>(x.GetTensorRawData());
    const size_t chunk = kMinOpsPerTask;
    parallel(ceil_div(x_count, chunk), [&](size_t t) {
      const size_t begin = t * chunk, count = std::min(chunk, x_count - begin);
      lmul::pack_rounded<S>(px + begin, 1, count, 0, 1, mantissa_bits, x_bits.get() + begin);
    });

    std::unique_ptr<lmul::ConvWeights> per_call_w;
    if (!(constant_w && constant_w->matches(w_shape, plan))) {
      per_call_w = std::make_unique<lmul::ConvWeights>();
      lmul::round_conv_weights<S>(static_cast<const T*>(w.GetTensorRawData()), w_shape, plan.group, kTranspose,
                                  mantissa_bits, parallel, *per_call_w);
    }
    const lmul::ConvWeights& weights = per_call_w ? *per_call_w : *constant_w;

    std::vector<float> b_values;
    if (b) {
      const T* pb = static_cast<const T*>(b.GetTensorRawData());
      b_values.resize(plan.out_channels);
      for (size_t i = 0; i < plan.out_channels; ++i) b_values[i] = S::load(pb[i]);
    }
    T* py = static_cast<T*>(y.GetTensorMutableRawData());
    // float32 results are written in place; other types through a float32 buffer.
    constexpr bool kInPlace = std::is_same<T, float>::value;
    std::unique_ptr<float[]> scratch(kInPlace ? nullptr : new float[y_count]);
    float* out = kInPlace ? reinterpret_cast<float*>(py) : scratch.get();
    lmul::lmul_conv(plan, weights, x_bits.get(), b ? b_values.data() : nullptr, bias, out, parallel);
    if (!kInPlace) {
      parallel(ceil_div(y_count, chunk), [&](size_t t) {
        const size_t begin = t * chunk, end = std::min(y_count, begin + chunk);
        for (size_t i = begin; i < end; ++i) py[i] = S::store(out[i]);
      });
    }
  }
};

template <OpKind Kind, class S>
using KernelFor = typename std::conditional<Kind == OpKind::kConv || Kind == OpKind::kConvTranspose,
                                            LMulConvKernel<Kind, S>, LMulKernel<Kind, S>>::type;

template <OpKind Kind, class S>
struct LMulOp : Ort::CustomOpBase<LMulOp<Kind, S>, KernelFor<Kind, S>, /*WithStatus=*/true> {
  const char* GetName() const { return op_name(Kind); }
  static constexpr bool kOptionalThird = Kind == OpKind::kGemm || Kind == OpKind::kConv || Kind == OpKind::kConvTranspose;
  size_t GetInputTypeCount() const { return kOptionalThird ? 3 : 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return onnx_type<S>(); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return kOptionalThird && index == 2 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                               : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return onnx_type<S>(); }

  // Attributes are checked here, so a bad value fails when the session is created.
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const noexcept {
    std::string node;
    return guarded<Kind>(node, [&] {
      node = Ort::ConstKernelInfo(info).GetNodeName();
      *kernel = new KernelFor<Kind, S>(info);
    });
  }
};

// One op object per (op, element type): onnxruntime merges them into one schema per op
// name with a type constraint, and picks the kernel that matches the node's inputs.
struct Registry {
  Ort::CustomOpDomain domain{kDomain};
  LMulOp<OpKind::kMul, Float32Storage> mul_f32;
  LMulOp<OpKind::kMul, Float16Storage> mul_f16;
  LMulOp<OpKind::kMul, BFloat16Storage> mul_bf16;
  LMulOp<OpKind::kMatMul, Float32Storage> matmul_f32;
  LMulOp<OpKind::kMatMul, Float16Storage> matmul_f16;
  LMulOp<OpKind::kMatMul, BFloat16Storage> matmul_bf16;
  LMulOp<OpKind::kGemm, Float32Storage> gemm_f32;
  LMulOp<OpKind::kGemm, Float16Storage> gemm_f16;
  LMulOp<OpKind::kGemm, BFloat16Storage> gemm_bf16;
  LMulOp<OpKind::kConv, Float32Storage> conv_f32;
  LMulOp<OpKind::kConv, Float16Storage> conv_f16;
  LMulOp<OpKind::kConv, BFloat16Storage> conv_bf16;
  LMulOp<OpKind::kConvTranspose, Float32Storage> conv_transpose_f32;
  LMulOp<OpKind::kConvTranspose, Float16Storage> conv_transpose_f16;
  LMulOp<OpKind::kConvTranspose, BFloat16Storage> conv_transpose_bf16;

  Registry() {
    for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{
             &mul_f32, &mul_f16, &mul_bf16, &matmul_f32, &matmul_f16, &matmul_bf16, &gemm_f32, &gemm_f16,
             &gemm_bf16, &conv_f32, &conv_f16, &conv_bf16, &conv_transpose_f32, &conv_transpose_f16,
             &conv_transpose_bf16}) {
      domain.Add(op);
    }
  }
};

}  // namespace

// Test hook: the matmul variant the pre-scan picks for float32 operands rounded to m bits
// with the given offset (-1: the paper's) (0 general, 1 add, 2 add-masked-a,
// 3 add-masked-b, 4 add-masked-ab, 5 normal; -1 for a bad m or offset). Lets tests check
// that data selects the micro-kernel they mean to exercise.
extern "C" __attribute__((visibility("default"))) int lmul_matmul_variant(const float* a, size_t a_count,
                                                                          const float* b, size_t b_count,
                                                                          int mantissa_bits, int64_t offset) {
  if (mantissa_bits < 1 || mantissa_bits > lmul::kFloat32MantissaBits) return -1;
  if (offset < -1 || offset >= lmul::kOffsetLimit) return -1;
  const uint32_t bias = offset < 0 ? lmul::lmul_bias(mantissa_bits)
                                   : lmul::lmul_bias_for_offset(static_cast<uint32_t>(offset));
  lmul::OperandRange ranges[2];
  const float* operands[2] = {a, b};
  const size_t counts[2] = {a_count, b_count};
  for (int o = 0; o < 2; ++o) {
    std::vector<uint32_t> bits(counts[o]);
    for (size_t i = 0; i < counts[o]; ++i) {
      bits[i] = lmul::round_mantissa_bits(lmul::float_bits(operands[o][i]), mantissa_bits);
    }
    ranges[o].scan(bits.data(), bits.size());
  }
  return static_cast<int>(
      lmul::choose_variant(ranges[0], ranges[1], bias, lmul::panel_width() > 0));
}

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(kOrtApiVersion);
  if (api == nullptr) {
    // An onnxruntime older than the headers: report it with the oldest API there is.
    const std::string message = std::string("lmul-onnx custom ops need onnxruntime API version ") +
                                std::to_string(kOrtApiVersion) + " (onnxruntime >= 1." +
                                std::to_string(kOrtApiVersion) + "), but this onnxruntime is " +
                                api_base->GetVersionString();
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message.c_str());
  }
  Ort::InitApi(api);
  try {
    // Kept alive for the whole process: sessions keep pointers to the domain and ops.
    static Registry* registry = new Registry();
    return api->AddCustomOpDomain(options, registry->domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("lmul-onnx: ") + e.what()).c_str());
  }
}
