// The onnxruntime binding of the `lmul` op domain (docs/SPEC.md section 3).
//
// This file knows onnxruntime and nothing about the arithmetic: it reads attributes,
// validates shapes, allocates outputs and calls the kernels in kernels/ (lmul_matmul.h)
// with onnxruntime's intra-op thread pool as their ParallelFor. Every failure becomes an
// OrtStatus that names the node; no exception crosses the C boundary.
#include "ort_attributes.h"  // includes onnxruntime_cxx_api.h with ORT_API_MANUAL_INIT

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "api_version.h"
#include "kernels/conv_shapes.h"
#include "kernels/lmul_conv.h"
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

// onnxruntime keeps its own copy of every initializer, and the API (version 21) offers
// custom ops no PrePack through which it would drop it. Once constant weights are packed,
// the kernels read that copy again only on the portable fall-back path (operands that a
// one-add kernel cannot take). When onnxruntime has memory-mapped the copy from an
// external-data file, its pages need not stay resident: MADV_PAGEOUT (Linux >= 5.4) asks
// the kernel to reclaim the pages lying wholly inside it now, and a later read maps them
// in again. The hint never changes what the memory holds (on anonymous memory without
// swap it does nothing); when it fails (older kernels), nothing happens.
void release_resident_pages(const void* data, size_t bytes) {
#if defined(__linux__)
#ifdef MADV_PAGEOUT
  constexpr int kPageOut = MADV_PAGEOUT;
#else
  constexpr int kPageOut = 21;  // MADV_PAGEOUT, for C libraries older than Linux 5.4
#endif
  const long page_size = sysconf(_SC_PAGESIZE);
  if (page_size <= 0 || !data) return;
  const uintptr_t page = static_cast<uintptr_t>(page_size), start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (start + page - 1) / page * page, end = (start + bytes) / page * page;
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, kPageOut);
#else
  (void)data, (void)bytes;
#endif
}

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

// onnxruntime's intra-op thread pool of this call, as it is (the kernels get it through
// pool_parallel_for).
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

// onnxruntime's thread pool as the kernels' ParallelFor. A task that throws (out of
// memory) must not unwind through onnxruntime's threads: the failure is rethrown here.
lmul::ParallelFor pool_parallel_for(const Ort::KernelContext& context) {
  return [pool = pool_of(context)](size_t tasks, const std::function<void(size_t)>& task) {
    std::atomic<bool> failed{false};
    pool(tasks, [&](size_t i) {
      try {
        task(i);
      } catch (...) {
        failed = true;
      }
    });
    if (failed) throw std::bad_alloc();
  };
}

lmul::Shape shape_of(const Ort::ConstValue& value) {
  return value.GetTensorTypeAndShapeInfo().GetShape();
}

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

template <OpKind Kind, class S>
struct LMulKernel {
  using T = typename S::type;

  std::string node_name;
  int mantissa_bits = lmul::type_mantissa_bits(S::kind);
  uint32_t bias = 0;  // lmul_bias_for_offset of the `offset` attribute or the paper's (SPEC 4)
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 1.0f;
  std::unique_ptr<const lmul::PackedB> constant_b;  // B prepared at session creation, if constant
  mutable lmul::Concurrency concurrency;  // of this session's thread pool, measured when first needed

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
    const T* data = static_cast<const T*>(b.GetTensorRawData());
    constant_b = lmul::pack_b<S>(data, shape, matrices, k, n, trans_b, mantissa_bits, lmul::run_serially);
    // B is read again only when no one-add kernel can take it (see above).
    const lmul::OperandRange& range = constant_b->range;
    if (!range.has_special && range.min_nonzero != 0xFFFFFFFFu) {
      release_resident_pages(data, matrices * k * n * sizeof(T));
    }
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
    lmul::lmul_elementwise<S>(plan, static_cast<const T*>(a.GetTensorRawData()),
                              static_cast<const T*>(b.GetTensorRawData()), static_cast<T*>(y.GetTensorMutableRawData()),
                              mantissa_bits, bias, pool_parallel_for(context));
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
    if constexpr (std::is_same<T, float>::value) operands.a_bits = static_cast<const uint32_t*>(a.GetTensorRawData());
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
                                 static_cast<T*>(y.GetTensorMutableRawData()), pool_parallel_for(context),
                                 &concurrency);
  }
};

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
  mutable lmul::Concurrency concurrency;  // of this session's thread pool, measured when first needed

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
                                static_cast<size_t>(attributes.group), kTranspose, mantissa_bits, lmul::run_serially,
                                *prepared);
    lmul::prepare_offsets_operand(*prepared, bias);
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

    // X rounded once, in parallel chunks; float32 X at 23 bits is its own rounding, so its
    // buffer is read in place as bit patterns (this library reads it only as uint32_t and
    // never writes it).
    const size_t x_count = plan.batch * plan.in_channels * plan.in_pixels;
    const T* px = static_cast<const T*>(x.GetTensorRawData());
    constexpr size_t chunk = size_t{1} << 16;  // elements per task of the conversions
    const bool x_as_is = std::is_same<T, float>::value && mantissa_bits == 23;
    std::unique_ptr<uint32_t[]> x_rounded(x_as_is ? nullptr : new uint32_t[std::max<size_t>(1, x_count)]);
    if (!x_as_is) {
      parallel((x_count + chunk - 1) / chunk, [&](size_t t) {
        const size_t begin = t * chunk, count = std::min(chunk, x_count - begin);
        lmul::round_to_bits<S>(px + begin, count, mantissa_bits, x_rounded.get() + begin);
      });
    }
    const uint32_t* x_bits = x_as_is ? static_cast<const uint32_t*>(x.GetTensorRawData()) : x_rounded.get();

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
    lmul::lmul_conv(plan, weights, x_bits, b ? b_values.data() : nullptr, bias, out, parallel, &concurrency);
    if (!kInPlace) {
      parallel((y_count + chunk - 1) / chunk, [&](size_t t) {
        const size_t begin = t * chunk;
        lmul::narrow_sums<S>(out + begin, std::min(chunk, y_count - begin), py + begin);
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
// with the given offset (-1: the paper's), against a per-call B or packed weights alike
// (0 general, 1 add, 2 add-masked-a, 3 add-masked-b, 4 add-masked-ab, 5 normal, 6 clamped,
// 7 clamped-masked-b, 8 clamped-high, 9 clamped-high-masked-b, 10 clamped-low,
// 11 clamped-low-masked-b; -1 for a bad m or offset: lmul_onnx.testing.MATMUL_VARIANTS).
// Lets tests check that data selects the micro-kernel they mean to exercise.
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
      lmul::choose_variant(ranges[0], ranges[1], bias, lmul::panel_width() > 0, /*clamped=*/true));
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
