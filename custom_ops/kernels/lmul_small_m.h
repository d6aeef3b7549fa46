// Small-M products against a float32 B read in place: no packing, no separate pre-scan.
//
// With a B that changes on every call (q.K^T and p.V against a KV cache while decoding,
// M = 1) packing B costs more than the product itself. Here B's rows stream once through
// the registers: for each k, acc[r][0..N) += L-Mul(a[r][k], B[k][0..N)) with the one-add
// product of lmul_gemm.h, vectorised over N, while the same pass rounds B on the fly and
// records its range. Afterwards the range decides whether every product really was one
// add (choose_variant's conditions, zeros being skipped by masks); if not, the block is
// recomputed by a pass of lmul_gemm.h's clamped product (products that underflow or
// overflow: the tiny probabilities of a peaked softmax), which goes first when A's range
// alone makes one add unlikely; only a B with an infinity, a NaN or a value that
// saturates when rounded leaves the block to the portable loop. Each output is summed
// over k in order from +0, so the bits equal lmul_matmul_rows' whichever way the block
// was computed.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lmul_gemm.h"

namespace lmul {

// The most rows lmul_small_m takes at once (more rows amortise packing B).
constexpr size_t kSmallMMaxRows = 8;

// Columns [j0, j1) of rows [0, rows) of C = A (*) B, rows <= kSmallMMaxRows. A is rounded
// (rows x k, row-major, lmul_arith.h), `a_range` its range (or a superset's); B is float32,
// row-major K x ldb, not rounded (a float16 / bfloat16 B is widened block by block by
// lmul_matmul.cc first); `bias` is SPEC 1's additive constant (lmul_bias). Row
// r of C starts at c + r * ldc. Returns true when the one-add or the clamped pass
// computed the block (all but the last columns short of a whole vector), false when the
// portable loop did (the bits are the same; tests use it to tell the paths apart).
bool lmul_small_m(const uint32_t* a, size_t rows, size_t k, const OperandRange& a_range, const float* b, size_t ldb,
                  size_t j0, size_t j1, int mantissa_bits, uint32_t bias, float* c, size_t ldc);

}  // namespace lmul
