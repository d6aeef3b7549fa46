// L-Mul Conv and ConvTranspose (docs/SPEC.md section 3) on the matrix-product kernels of
// lmul_gemm.h, without onnxruntime types.
//
// Both ops are matrix products with the weights as the A operand:
//   Conv:          Y_g (M/g x pixels) = W_g (M/g x C/g*k) (*) im2col(X_g) (C/g*k x pixels)
//   ConvTranspose: cols_g (M/g*k x in pixels) = W_g^T (M/g*k x C/g) (*) X_g (C/g x in pixels),
//                  then col2im adds each column into the output positions it reaches.
// The pre-scan of lmul_gemm.h picks the fastest exact variant from the ranges of W and X
// (padding zeros count as zero operands). With AVX-512, lmul_gemm_offsets reads X in
// place (stride-1 interiors, ConvTranspose's X_g) or an im2col matrix with plain zeros
// (borders, strides), skipping zero X entries itself; otherwise the one-add kernels read
// the im2col matrix packed into column panels, one chunk of output pixels at a time.
// Depthwise Convs take a direct loop over stride phases of the padded input.
//
// Every output element is the same float32 sum whatever the variant, SIMD width, thread
// count or chunking: Conv sums the products of each output in k order (channel, then
// kernel offset), like the matmul kernels; ConvTranspose sums each column over C/g in
// order, then adds the columns to each output in kernel-offset order, then the bias.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "conv_shapes.h"
#include "lmul_gemm.h"
#include "lmul_kernels.h"
#include "lmul_matmul.h"  // ParallelFor

namespace lmul {

// The weights as the A operand, rounded: per group a `rows` x `depth` row-major matrix.
//   Conv:          rows = M/group (output channels), depth = C/group * kernel size
//   ConvTranspose: rows = M/group * kernel size (output channel, kernel offset), depth = C/group
struct ConvWeights {
  Shape shape;
  size_t group = 0, rows = 0, depth = 0;
  bool transpose = false;
  OperandRange range;
  std::vector<uint32_t> bits;
  // The A operand of lmul_gemm_offsets (AVX-512), made once for constant weights when the
  // session is created (prepare_offsets_operand); empty otherwise.
  std::vector<uint32_t> offsets_bits;
  std::vector<uint64_t> offsets_zero;  // zero entries, one bit each, (depth + 63) / 64 words a row
  uint32_t offsets_bias = 0;

  bool matches(const Shape& w_shape, const ConvPlan& plan) const {
    return shape == w_shape && group == plan.group && transpose == plan.transpose;
  }
};

// The weights as lmul_gemm_offsets reads A, which needs no stand-ins: a -> a - bias, and
// a bit per zero entry (zero: empty when W has no zeros), whose products the kernel skips
// (+-0 products add nothing), as it skips zero X entries. Depends on W and the L-Mul
// constant only.
void prepare_offsets_operand(const ConvWeights& w, uint32_t bias_bits, std::vector<uint32_t>& bits,
                             std::vector<uint64_t>& zero);

// Stores that operand in w itself when the kernel exists (constant weights).
void prepare_offsets_operand(ConvWeights& w, uint32_t bias_bits);

// Range of rounded bit patterns, scanned in parallel chunks.
OperandRange scan_range(const uint32_t* bits, size_t count, const ParallelFor& parallel);

// Rounds W (shape `shape`, already validated: rank >= 3, dimensions divisible by group)
// into the A layout above and scans it.
template <class S>
void round_conv_weights(const typename S::type* w, const Shape& shape, size_t group, bool transpose, int mantissa_bits,
                        const ParallelFor& parallel, ConvWeights& out) {
  size_t kernel_size = 1;
  for (size_t i = 2; i < shape.size(); ++i) kernel_size *= static_cast<size_t>(shape[i]);
  const size_t dim0 = static_cast<size_t>(shape[0]), dim1 = static_cast<size_t>(shape[1]);
  out.shape = shape;
  out.group = group;
  out.transpose = transpose;
  out.rows = transpose ? dim1 * kernel_size : dim0 / group;
  out.depth = transpose ? dim0 / group : dim1 * kernel_size;
  out.bits.assign(group * out.rows * out.depth, 0u);
  const size_t per_group = out.rows * out.depth;
  parallel(group, [&](size_t g) {
    uint32_t* dst = out.bits.data() + g * per_group;
    if (transpose) {  // W (C, M/g, *kernel): A_g[(m, k)][c] = W[g*C/g + c][m][k]
      pack_rounded<S>(w + g * per_group, out.rows, out.depth, 1, out.rows, mantissa_bits, dst);
    } else {  // W (M, C/g, *kernel) is A, row-major already
      pack_rounded<S>(w + g * per_group, 1, per_group, 0, 1, mantissa_bits, dst);
    }
  });
  out.range = scan_range(out.bits.data(), out.bits.size(), parallel);
}

// y (float32, N x M x output pixels) = the L-Mul Conv / ConvTranspose of rounded X (N x C
// x input pixels) and the weights, plus bias (M floats, or null). `bias_bits` is the
// L-Mul constant of SPEC 1, step 3 (lmul_bias). The weights must match the plan.
// `concurrency` (may be null) lets the work be split finer where many threads run it.
void lmul_conv(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* x, const float* bias,
               uint32_t bias_bits, float* y, const ParallelFor& parallel, Concurrency* concurrency = nullptr);

}  // namespace lmul
