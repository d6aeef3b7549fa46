// The onnxruntime binding of the `lmul` op domain (docs/SPEC.md section 3).
//
// This file knows onnxruntime and nothing about the arithmetic: it reads attributes,
// validates shapes, allocates outputs and calls the kernels in kernels/ (lmul_matmul.h)
// with onnxruntime's intra-op thread pool as their ParallelFor. Every failure becomes an
// OrtStatus that names the node; no exception crosses the C boundary.
#include "ort_attributes.h"  // includes onnxruntime_cxx_api.h with ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "api_version.h"
#include "kernels/lmul_gemm.h"
#include "kernels/lmul_kernels.h"
#include "kernels/lmul_matmul.h"
#include "kernels/shapes.h"

namespace {

using lmul::BFloat16Storage;
using lmul::Float16Storage;
using lmul::Float32Storage;

constexpr const char* kDomain = "lmul";
using lmul::kOrtApiVersion;  // api_version.h
static_assert(ORT_API_VERSION >= kOrtApiVersion, "onnxruntime headers older than API 21");
constexpr const char* kMantissaBitsAttribute = "mantissa_bits";
constexpr const char* kOffsetAttribute = "offset";

enum class OpKind { kMul, kMatMul, kGemm };

constexpr const char* op_name(OpKind kind) {
  return kind == OpKind::kMul ? "LMul" : kind == OpKind::kMatMul ? "LMulMatMul" : "LMulGemm";
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

// The kernels' ParallelFor on onnxruntime's intra-op thread pool of this call.
lmul::ParallelFor pool_of(const Ort::KernelContext& context) {
  return [&context](size_t tasks, const std::function<void(size_t)>& task) {
    if (tasks == 0) return;
    if (tasks == 1) {
      task(size_t{0});
      return;
    }
    auto run = [](void* data, size_t i) { (*static_cast<const std::function<void(size_t)>*>(data))(i); };
    context.ParallelFor(run, tasks, 0, const_cast<std::function<void(size_t)>*>(&task));
  };
}

lmul::Shape shape_of(const Ort::ConstValue& value) {
  return value.GetTensorTypeAndShapeInfo().GetShape();
}

template <OpKind Kind, class S>
struct LMulKernel {
  using T = typename S::type;

  std::string node_name;
  int mantissa_bits = lmul::type_mantissa_bits(S::kind);
  uint32_t bias = 0;  // lmul_bias_for_offset of the `offset` attribute or the paper's (SPEC 4)
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 1.0f;
  std::unique_ptr<const lmul::PackedB> constant_b;  // B prepared at session creation, if constant

  LMulKernel(const OrtKernelInfo* info) {
    node_name = Ort::ConstKernelInfo(info).GetNodeName();
    int64_t bits = 0;
    if (lmul_ort::read_int(info, kMantissaBitsAttribute, bits)) {
      const int limit = lmul::type_mantissa_bits(S::kind);
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
    constant_b = lmul::pack_b<S>(static_cast<const T*>(b.GetTensorRawData()), shape, matrices, k, n, trans_b,
                                 mantissa_bits, lmul::run_serially);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) noexcept { return guarded(node_name, [&] { Compute(raw_context); }); }

  // Runs body(), turning any exception into a status that names the op and the node.
  template <class Body>
  static OrtStatusPtr guarded(const std::string& node, Body&& body) noexcept {
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
    lmul::lmul_elementwise<S>(plan, static_cast<const T*>(a.GetTensorRawData()),
                              static_cast<const T*>(b.GetTensorRawData()), static_cast<T*>(y.GetTensorMutableRawData()),
                              mantissa_bits, bias, pool_of(context));
  }

  // LMulMatMul and LMulGemm: shapes and attributes here, the product in lmul_matmul.h.
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
    lmul::ProductOperands<S> operands;
    operands.a = static_cast<const T*>(a.GetTensorRawData());
    operands.b = static_cast<const T*>(b.GetTensorRawData());
    operands.trans_a = trans_a;
    operands.trans_b = trans_b;
    if (constant_b && constant_b->shape == b_shape) operands.prepared_b = constant_b.get();
    lmul::GemmTerms<S> terms;
    terms.alpha = alpha;
    terms.beta = beta;
    if (c) {
      terms.c = static_cast<const T*>(c.GetTensorRawData());
      terms.c_row_stride = gemm.c_row_stride;
      terms.c_col_stride = gemm.c_col_stride;
    }
    lmul::lmul_matrix_product<S>(mm, operands, mantissa_bits, bias, Kind == OpKind::kGemm ? &terms : nullptr,
                                 static_cast<T*>(y.GetTensorMutableRawData()), pool_of(context));
  }
};

template <OpKind Kind, class S>
struct LMulOp : Ort::CustomOpBase<LMulOp<Kind, S>, LMulKernel<Kind, S>, /*WithStatus=*/true> {
  const char* GetName() const { return op_name(Kind); }
  size_t GetInputTypeCount() const { return Kind == OpKind::kGemm ? 3 : 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return onnx_type<S>(); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return Kind == OpKind::kGemm && index == 2 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                               : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return onnx_type<S>(); }

  // Attributes are checked here, so a bad value fails when the session is created.
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const noexcept {
    std::string node;
    return LMulKernel<Kind, S>::guarded(node, [&] {
      node = Ort::ConstKernelInfo(info).GetNodeName();
      *kernel = new LMulKernel<Kind, S>(info);
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

  Registry() {
    for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{&mul_f32, &mul_f16, &mul_bf16, &matmul_f32,
                                                               &matmul_f16, &matmul_bf16, &gemm_f32,
                                                               &gemm_f16, &gemm_bf16}) {
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
