#include "lmul_conv.h"

#include <algorithm>
#include <functional>
#include <memory>

#include "lmul_arith.h"

#if LMUL_HAVE_X86_SIMD
#include <immintrin.h>
#endif

namespace lmul {

namespace {

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// How the im2col / panel writers treat zero operands and padding.
struct ZeroRule {
  bool replace = false;  // one-add kernels: zeros become `stand_in` (mask 0 when masks exist)
  uint32_t stand_in = 0;
};

// Writes entry (value) or a padding entry at row[j] / mask_row[j].
inline void put(uint32_t value, const ZeroRule& rule, uint32_t* row, float* mask_row, size_t j) {
  const bool zero = (value & kMagnitudeMask) < kSmallestNormalBits;
  row[j] = (rule.replace && zero) ? rule.stand_in : value;
  if (mask_row) mask_row[j] = zero ? 0.0f : 1.0f;
}

inline void put_padding(const ZeroRule& rule, uint32_t* row, float* mask_row, size_t j) {
  row[j] = rule.replace ? rule.stand_in : 0u;
  if (mask_row) mask_row[j] = 0.0f;
}

// First and one-past-last o in [o_begin, o_end) with 0 <= o * stride + shift < limit.
inline void valid_range(int64_t o_begin, int64_t o_end, int64_t stride, int64_t shift, int64_t limit,
                        int64_t& lo, int64_t& hi) {
  // o * stride >= -shift  and  o * stride < limit - shift
  lo = -shift <= 0 ? 0 : (-shift + stride - 1) / stride;
  hi = limit - shift <= 0 ? 0 : (limit - shift + stride - 1) / stride;
  lo = std::min(std::max(lo, o_begin), o_end);
  hi = std::max(std::min(hi, o_end), lo);
}

// A box of output positions, [begin, begin + extent) per spatial dimension; its pixels
// are numbered row-major inside the box.
struct Box {
  size_t begin[kMaxSpatial] = {0, 0, 0}, extent[kMaxSpatial] = {1, 1, 1};
  bool padded = false;  // some product of its outputs may meet padding
  size_t pixels() const { return extent[0] * extent[1] * extent[2]; }
};

// Calls fn(j, oz, oy, ox, run) for box pixels [p0, p0 + count), one call per stretch of
// `run` pixels along the innermost dimension (j counts from 0 at p0).
template <class Fn>
void for_each_run(const Box& box, size_t p0, size_t count, Fn&& fn) {
  size_t ox = p0 % box.extent[2], oy = (p0 / box.extent[2]) % box.extent[1], oz = p0 / (box.extent[2] * box.extent[1]);
  for (size_t j = 0; j < count;) {
    const size_t run = std::min(count - j, box.extent[2] - ox);
    fn(j, box.begin[0] + oz, box.begin[1] + oy, box.begin[2] + ox, run);
    j += run;
    ox = 0;
    if (++oy == box.extent[1]) {
      oy = 0;
      ++oz;
    }
  }
}

// dst[j] = src[2 * j] for j < count (a constant stride, which the compiler vectorises).
LMUL_TARGET_CLONES
void every_second(const uint32_t* src, size_t count, uint32_t* dst) {
  for (size_t j = 0; j < count; ++j) dst[j] = src[2 * j];
}

// Rows k = (channel, kz, ky, kx) of the im2col matrix of `channels` input planes (x: the
// first plane) for output pixels [p0, p0 + count): row k at dst + k * ld, columns
// [count, ld) left alone. Entries are copies of x (and of x_mask, when masked);
// padding positions get `padding` (and mask 0).
template <bool kMasked>
void im2col(const ConvPlan& plan, const uint32_t* x, const float* x_mask, size_t channels, const Box& box, size_t p0,
            size_t count, uint32_t padding, uint32_t* dst, float* mask, size_t ld) {
  const int64_t in0 = static_cast<int64_t>(plan.in[0]), in1 = static_cast<int64_t>(plan.in[1]),
                in2 = static_cast<int64_t>(plan.in[2]);
  size_t k = 0;
  for (size_t c = 0; c < channels; ++c) {
    const uint32_t* plane = x + c * plan.in_pixels;
    const float* mask_plane = kMasked ? x_mask + c * plan.in_pixels : nullptr;
    for (size_t kz = 0; kz < plan.kernel[0]; ++kz) {
      for (size_t ky = 0; ky < plan.kernel[1]; ++ky) {
        for (size_t kx = 0; kx < plan.kernel[2]; ++kx, ++k) {
          uint32_t* row = dst + k * ld;
          float* mask_row = kMasked ? mask + k * ld : nullptr;
          auto fill = [&](size_t begin, size_t end) {
            std::fill(row + begin, row + end, padding);
            if (kMasked) std::fill(mask_row + begin, mask_row + end, 0.0f);
          };
          const int64_t shift_z = static_cast<int64_t>(kz * plan.dilation[0]) - static_cast<int64_t>(plan.pad_begin[0]);
          const int64_t shift_y = static_cast<int64_t>(ky * plan.dilation[1]) - static_cast<int64_t>(plan.pad_begin[1]);
          const int64_t shift_x = static_cast<int64_t>(kx * plan.dilation[2]) - static_cast<int64_t>(plan.pad_begin[2]);
          const int64_t sx = static_cast<int64_t>(plan.stride[2]);
          for_each_run(box, p0, count, [&](size_t j, size_t oz, size_t oy, size_t ox, size_t run) {
            const int64_t iz = static_cast<int64_t>(oz * plan.stride[0]) + shift_z;
            const int64_t iy = static_cast<int64_t>(oy * plan.stride[1]) + shift_y;
            if (iz < 0 || iz >= in0 || iy < 0 || iy >= in1) {
              fill(j, j + run);
              return;
            }
            const size_t row_offset = (static_cast<size_t>(iz) * plan.in[1] + static_cast<size_t>(iy)) * plan.in[2];
            const uint32_t* in_row = plane + row_offset;
            if (run == 1) {  // one pixel (the side strips of a border): no run arithmetic
              const int64_t ix = static_cast<int64_t>(ox) * sx + shift_x;
              const bool inside = ix >= 0 && ix < in2;
              row[j] = inside ? in_row[ix] : padding;
              if (kMasked) mask_row[j] = inside ? mask_plane[row_offset + static_cast<size_t>(ix)] : 0.0f;
              return;
            }
            int64_t lo = 0, hi = 0;
            const int64_t begin = static_cast<int64_t>(ox), end = begin + static_cast<int64_t>(run);
            valid_range(begin, end, sx, shift_x, in2, lo, hi);
            const size_t first = j + static_cast<size_t>(lo - begin), last = j + static_cast<size_t>(hi - begin);
            fill(j, first);
            if (sx == 1) {
              std::copy(in_row + lo + shift_x, in_row + hi + shift_x, row + first);
              if (kMasked) std::copy(mask_plane + row_offset + lo + shift_x, mask_plane + row_offset + hi + shift_x, mask_row + first);
            } else {
              if (sx == 2 && hi > lo) {
                every_second(in_row + lo * 2 + shift_x, static_cast<size_t>(hi - lo), row + first);
              } else {
                for (int64_t o = lo; o < hi; ++o) row[first + (o - lo)] = in_row[o * sx + shift_x];
              }
              if (kMasked) {
                for (int64_t o = lo; o < hi; ++o) mask_row[first + (o - lo)] = mask_plane[row_offset + o * sx + shift_x];
              }
            }
            fill(last, j + run);
          });
        }
      }
    }
  }
}

// The taps of one output plane: acc[i] = sum over t of x_t[i] (+) w_t, i < count, with
// x_t = base + offsets[t] and w_t = prepared[t] = weight - bias, in tap order; zero x
// entries (zeros, padding) add nothing (+-0: the same sum). Only for data the one-add
// kernels accept.
LMUL_TARGET_CLONES
void depthwise_taps(float* acc, size_t count, const uint32_t* base, const size_t* offsets, const uint32_t* prepared,
                    size_t taps) {
  std::fill(acc, acc + count, 0.0f);
  for (size_t t = 0; t < taps; ++t) {
    const uint32_t* x = base + offsets[t];
    const uint32_t w = prepared[t];
    for (size_t i = 0; i < count; ++i) {
      const uint32_t v = x[i];
      const float product = bits_float(v + w);
      acc[i] += (v & kMagnitudeMask) < kSmallestNormalBits ? 0.0f : product;
    }
  }
}

#if LMUL_HAVE_X86_SIMD
// depthwise_taps with AVX-512, register-blocked: 16 * NV outputs summed over every tap in
// registers (a lane mask from the exponent bits skips zero x entries), then stored once.
// `tail` marks the valid lanes of the last vector; nothing beyond them is read or written.
template <int NV>
__attribute__((target("avx512f"))) void depthwise_block_avx512(float* acc, const uint32_t* base,
                                                               const size_t* offsets, const uint32_t* prepared,
                                                               size_t taps, __mmask16 tail) {
  const __m512i exponent = _mm512_set1_epi32(static_cast<int>(kInfBits));
  __m512 sum[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) sum[v] = _mm512_setzero_ps();
  for (size_t t = 0; t < taps; ++t) {
    const uint32_t* x = base + offsets[t];
    const __m512i w = _mm512_set1_epi32(static_cast<int>(prepared[t]));
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512i xv = v == NV - 1 ? _mm512_maskz_loadu_epi32(tail, x + 16 * v) : _mm512_loadu_si512(x + 16 * v);
      const __mmask16 live = _mm512_test_epi32_mask(xv, exponent);
      sum[v] = _mm512_mask_add_ps(sum[v], live, sum[v], _mm512_castsi512_ps(_mm512_add_epi32(xv, w)));
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(acc + 16 * v, sum[v]);
  _mm512_mask_storeu_ps(acc + 16 * (NV - 1), tail, sum[NV - 1]);
}

void depthwise_taps_avx512(float* acc, size_t count, const uint32_t* base, const size_t* offsets,
                           const uint32_t* prepared, size_t taps) {
  for (size_t i = 0; i < count; i += 64) {
    const size_t width = std::min<size_t>(64, count - i), vectors = (width + 15) / 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (width - 16 * (vectors - 1))) - 1u);
    const uint32_t* block = base + i;
    switch (vectors) {
      case 1: depthwise_block_avx512<1>(acc + i, block, offsets, prepared, taps, tail); break;
      case 2: depthwise_block_avx512<2>(acc + i, block, offsets, prepared, taps, tail); break;
      case 3: depthwise_block_avx512<3>(acc + i, block, offsets, prepared, taps, tail); break;
      default: depthwise_block_avx512<4>(acc + i, block, offsets, prepared, taps, tail); break;
    }
  }
}
#endif

// Where the input columns go in the stride phases of depthwise_forward: column ix + pad =
// j * s2 + px, so phase px takes `count` columns, every s2-th from `first`, to column j0.
struct PhaseColumns {
  size_t first = 0, count = 0, j0 = 0;
};

std::vector<PhaseColumns> phase_columns(const ConvPlan& plan) {
  const size_t s2 = plan.stride[2], pad = plan.pad_begin[2];
  std::vector<PhaseColumns> phases(s2);
  for (size_t px = 0; px < s2; ++px) {
    const size_t ix0 = (px + s2 - pad % s2) % s2;  // the first input column of phase px
    if (ix0 < plan.in[2]) phases[px] = {ix0, (plan.in[2] - ix0 + s2 - 1) / s2, (ix0 + pad) / s2};
  }
  return phases;
}

// The input planes of one channel into the stride phases of depthwise_forward (positions
// that hold padding are not written): phases[(iz * s1 + py) * s2 + px][i][j] = padded
// plane iz at row i * s1 + py, column j * s2 + px.
LMUL_TARGET_CLONES
void split_phases(const ConvPlan& plan, const PhaseColumns* columns, const uint32_t* input, size_t wq,
                  size_t phase_size, uint32_t* phases) {
  const size_t s1 = plan.stride[1], s2 = plan.stride[2];
  for (size_t iz = 0; iz < plan.in[0]; ++iz) {
    // padded row iy + pad = i * s1 + py
    size_t py = plan.pad_begin[1] % s1, i = plan.pad_begin[1] / s1;
    for (size_t iy = 0; iy < plan.in[1]; ++iy) {
      const uint32_t* src = input + (iz * plan.in[1] + iy) * plan.in[2];
      uint32_t* dst = phases + (iz * s1 + py) * s2 * phase_size + i * wq;
      if (++py == s1) {
        py = 0;
        ++i;
      }
      if (s2 == 1) {
        std::copy(src, src + plan.in[2], dst + plan.pad_begin[2]);
        continue;
      }
      for (size_t px = 0; px < s2; ++px) {
        const PhaseColumns& c = columns[px];
        uint32_t* phase_row = dst + px * phase_size + c.j0;
        const uint32_t* first = src + c.first;
        if (s2 == 2) {  // a constant stride, which the compiler vectorises
          for (size_t j = 0; j < c.count; ++j) phase_row[j] = first[2 * j];
        } else {
          for (size_t j = 0; j < c.count; ++j) phase_row[j] = first[j * s2];
        }
      }
    }
  }
}

// Depthwise Conv (one input channel per group) for one-add data, without im2col. Each
// input plane is padded with zeros and split into stride phases, so that a tap reads one
// phase plane at a fixed offset: with the accumulator laid out at the phase plane's row
// pitch, a tap is one contiguous loop over the whole output plane (the columns beyond the
// output width are computed and dropped). Every output sums its taps in kernel order, as
// the matrix product would; products with padding or zeros are +-0 and add nothing, so
// zero weights and taps on depth padding are left out. Tasks take blocks of channels and
// reuse their buffers.
void depthwise_forward(const ConvPlan& plan, const ConvWeights& w, const uint32_t* x, const float* bias,
                       uint32_t bias_bits, float* y, const ParallelFor& parallel) {
  const size_t mg = plan.out_per_group(), taps = plan.kernel_size;
  const size_t s1 = plan.stride[1], s2 = plan.stride[2];
  // Padded extents (rows/columns any tap reads), phase planes of hq x wq (+1 spare row).
  const size_t hp = std::max(plan.pad_begin[1] + plan.in[1], (plan.out[1] - 1) * s1 + (plan.kernel[1] - 1) * plan.dilation[1] + 1);
  const size_t wp = std::max(plan.pad_begin[2] + plan.in[2], (plan.out[2] - 1) * s2 + (plan.kernel[2] - 1) * plan.dilation[2] + 1);
  const size_t hq = ceil_div(hp, s1) + 1, wq = ceil_div(wp, s2);
  const size_t phase_size = hq * wq, plane_size = s1 * s2 * phase_size;
  // Per output plane oz, the taps that do not fall on a whole plane of depth padding
  // (whose products are +-0): kernel index and offset in the phase planes.
  std::vector<size_t> tap_begin{0}, tap_index, tap_offset;
  for (size_t oz = 0; oz < plan.out[0]; ++oz) {
    size_t k = 0;
    for (size_t kz = 0; kz < plan.kernel[0]; ++kz) {
      const int64_t iz = static_cast<int64_t>(oz * plan.stride[0] + kz * plan.dilation[0]) -
                         static_cast<int64_t>(plan.pad_begin[0]);
      const bool plane_inside = iz >= 0 && iz < static_cast<int64_t>(plan.in[0]);
      for (size_t ky = 0; ky < plan.kernel[1]; ++ky) {
        for (size_t kx = 0; kx < plan.kernel[2]; ++kx, ++k) {
          if (!plane_inside) continue;
          const size_t dy = ky * plan.dilation[1], dx = kx * plan.dilation[2];
          tap_index.push_back(k);
          tap_offset.push_back(((static_cast<size_t>(iz) * s1 + dy % s1) * s2 + dx % s2) * phase_size +
                               (dy / s1) * wq + dx / s2);
        }
      }
    }
    tap_begin.push_back(tap_index.size());
  }
  const std::vector<PhaseColumns> columns = phase_columns(plan);
  const size_t planes = plan.batch * plan.group;
  const size_t per_task = ceil_div(planes, 64), tasks = ceil_div(planes, per_task);  // at most 64 tasks
  parallel(tasks, [&](size_t task) {
    std::vector<uint32_t> phases(plan.in[0] * plane_size);
    std::vector<float> acc(plan.out[1] * wq);
    std::vector<size_t> offsets(taps);
    std::vector<uint32_t> prepared(taps);
    for (size_t t = task * per_task; t < std::min(planes, (task + 1) * per_task); ++t) {
      const size_t n = t / plan.group, g = t % plan.group;
      const uint32_t* input = x + (n * plan.in_channels + g) * plan.in_pixels;
      // Every plane writes the same positions: the padding stays zero.
      split_phases(plan, columns.data(), input, wq, phase_size, phases.data());
      for (size_t m = 0; m < mg; ++m) {
        const size_t channel = g * mg + m;
        const uint32_t* weights = w.bits.data() + channel * taps;
        float* out = y + (n * plan.out_channels + channel) * plan.out_pixels;
        for (size_t oz = 0; oz < plan.out[0]; ++oz) {
          size_t used = 0;
          for (size_t i = tap_begin[oz]; i < tap_begin[oz + 1]; ++i) {
            const uint32_t wk = weights[tap_index[i]];
            if ((wk & kMagnitudeMask) < kSmallestNormalBits) continue;  // +-0 products
            offsets[used] = tap_offset[i];
            prepared[used++] = wk - bias_bits;
          }
#if LMUL_HAVE_X86_SIMD
          if (simd_lanes() == 16) {
            depthwise_taps_avx512(acc.data(), acc.size(), phases.data(), offsets.data(), prepared.data(), used);
          } else {
            depthwise_taps(acc.data(), acc.size(), phases.data(), offsets.data(), prepared.data(), used);
          }
#else
          depthwise_taps(acc.data(), acc.size(), phases.data(), offsets.data(), prepared.data(), used);
#endif
          const float b = bias ? bias[channel] : 0.0f;
          for (size_t oy = 0; oy < plan.out[1]; ++oy) {
            float* dst = out + (oz * plan.out[1] + oy) * plan.out[2];
            const float* src = acc.data() + oy * wq;
            for (size_t ox = 0; ox < plan.out[2]; ++ox) dst[ox] = bias ? src[ox] + b : src[ox];
          }
        }
      }
    }
  });
}

// The weights as the one-add kernels read A: a -> a - bias, zeros -> stand-in (with a
// 0/1 mask when W has zeros), or as the clamped ones do (prepare_a: a'' and a's sign).
// The variants of one call differ only in B's masks (padding zeros do not change what
// may underflow or overflow), so one preparation serves every box of a call.
struct PreparedWeights {
  std::vector<uint32_t> bits;
  std::unique_ptr<float[]> mask;

  void prepare(const ConvWeights& w, GemmVariant variant, const OperandRange& x_range, uint32_t bias_bits,
               const ParallelFor& parallel) {
    bits = w.bits;
    if (masks_a(variant)) mask.reset(new float[bits.size()]);
    const size_t per_group = w.rows * w.depth;
    parallel(w.group, [&](size_t g) {
      const size_t offset = g * per_group;
      prepare_a(bits.data() + offset, mask ? mask.get() + offset : nullptr, per_group, variant, bias_bits,
                zero_stand_in_a(x_range, variant));
    });
  }
};

// A for lmul_gemm_offsets: the one made when the session was created, or made here.
struct OffsetsOperand {
  std::vector<uint32_t> own_bits;
  std::vector<uint64_t> own_zero;
  const uint32_t* bits = nullptr;
  const uint64_t* zero = nullptr;  // (depth + 63) / 64 words a row
  size_t words = 0;

  OffsetsOperand(const ConvWeights& w, uint32_t bias_bits) : words((w.depth + 63) / 64) {
    const bool made = !w.offsets_bits.empty() && w.offsets_bias == bias_bits;
    if (!made) prepare_offsets_operand(w, bias_bits, own_bits, own_zero);
    bits = made ? w.offsets_bits.data() : own_bits.data();
    const std::vector<uint64_t>& z = made ? w.offsets_zero : own_zero;
    zero = z.empty() ? nullptr : z.data();
  }
};

// The output split into boxes: when padding is involved, the interior (outputs whose
// windows lie inside the input, computed without masks) and the border around it.
std::vector<Box> output_boxes(const ConvPlan& plan) {
  Box full;
  for (size_t d = 0; d < kMaxSpatial; ++d) full.extent[d] = plan.out[d];
  if (!plan.uses_padding) return {full};
  size_t lo[kMaxSpatial], hi[kMaxSpatial];
  for (size_t d = 0; d < kMaxSpatial; ++d) {
    const size_t s = plan.stride[d], pad = plan.pad_begin[d];
    const size_t reach = (plan.kernel[d] - 1) * plan.dilation[d];  // window extent - 1
    lo[d] = std::min(plan.out[d], (pad + s - 1) / s);
    hi[d] = plan.in[d] + pad >= reach + 1 ? std::min(plan.out[d], (plan.in[d] + pad - reach - 1) / s + 1) : 0;
    hi[d] = std::max(hi[d], lo[d]);
  }
  std::vector<Box> boxes;
  auto add = [&](const size_t (&b)[kMaxSpatial], const size_t (&e)[kMaxSpatial], bool padded) {
    Box box;
    for (size_t d = 0; d < kMaxSpatial; ++d) box.begin[d] = b[d], box.extent[d] = e[d];
    box.padded = padded;
    if (box.pixels() > 0) boxes.push_back(box);
  };
  add({lo[0], lo[1], lo[2]}, {hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]}, false);
  // Below and above the interior along dimension d, inside it along the dimensions before d.
  for (size_t d = 0; d < kMaxSpatial; ++d) {
    size_t b[kMaxSpatial], e_low[kMaxSpatial], b_high[kMaxSpatial], e_high[kMaxSpatial];
    for (size_t i = 0; i < kMaxSpatial; ++i) {
      const bool inside = i < d;
      b[i] = inside ? lo[i] : 0;
      e_low[i] = inside ? hi[i] - lo[i] : plan.out[i];
      b_high[i] = b[i];
      e_high[i] = e_low[i];
    }
    e_low[d] = lo[d];
    b_high[d] = hi[d];
    e_high[d] = plan.out[d] - hi[d];
    add(b, e_low, true);
    add(b_high, e_high, true);
  }
  return boxes;
}

// Conv on the in-place kernels of lmul_gemm_offsets (AVX-512), which skip zero X
// entries themselves: no stand-ins, no masks, no copy of X. With every stride 1 the
// interior outputs read X in place: output (oz, oy, ox) and tap k read
//     x[v + offset[k]],  v = (oz * H + oy) * W + ox,  offset[k] = c * pixels + (kz*dz - pz) * H * W + ...
// so the outputs of an interior plane, from its first to its last pixel, are one run of
// consecutive v whose B rows are stretches of X. The columns of the run outside the
// interior (the border columns between its rows) are computed too and overwritten (or
// dropped); every read stays between the first and the last interior pixel's taps.
// Border boxes (and every box with strides) go through im2col with zeros for padding.
void conv_forward_offsets(const ConvPlan& plan, const ConvWeights& w, const uint32_t* x, GemmVariant interior,
                          GemmVariant border, const float* bias, uint32_t bias_bits, float* y,
                          const ParallelFor& parallel, Concurrency* concurrency);

void conv_forward(const ConvPlan& plan, const ConvWeights& w, const uint32_t* x, const OperandRange& x_range,
                  const float* bias, uint32_t bias_bits, float* y, const ParallelFor& parallel,
                  Concurrency* concurrency) {
  const size_t groups = plan.group, cg = plan.in_per_group(), mg = plan.out_per_group();
  const size_t depth = w.depth, pixels = plan.out_pixels;
  OperandRange padded_range = x_range;
  padded_range.has_zero = true;  // padding zeros are operands too
  const bool simd = panel_width() > 0;
  // (products that may underflow or overflow take the clamped kernels on im2col panels)
  const GemmVariant interior = choose_variant(w.range, x_range, bias_bits, simd, /*clamped=*/true);
  const GemmVariant border =
      plan.uses_padding ? choose_variant(w.range, padded_range, bias_bits, simd, /*clamped=*/true) : interior;
  if (is_one_add(border) && cg == 1 && mg <= 4) {  // depthwise (small channel multiplier)
    depthwise_forward(plan, w, x, bias, bias_bits, y, parallel);
    return;
  }
  if (is_one_add(border) && offsets_gemm_available()) {
    conv_forward_offsets(plan, w, x, interior, border, bias, bias_bits, y, parallel, concurrency);
    return;
  }
  // Splitting off the interior pays when it then needs no masks and the boxes' partial
  // panels waste little (not for small images); otherwise one box, masked if padded.
  std::vector<Box> boxes = output_boxes(plan);
  if (boxes.size() > 1) {
    const size_t unit = simd ? panel_width() : 1;
    size_t split_panels = 0;
    for (const Box& box : boxes) split_panels += ceil_div(box.pixels(), unit);
    if (masks_b(interior) || 8 * split_panels > 9 * ceil_div(pixels, unit)) {
      Box full;
      for (size_t d = 0; d < kMaxSpatial; ++d) full.extent[d] = plan.out[d];
      full.padded = true;
      boxes = {full};
    }
  }
  const bool any_fast = uses_panels(interior) || uses_panels(border);
  const size_t nr = simd ? panel_width() : 0;

  PreparedWeights prepared;
  if (any_fast) prepared.prepare(w, uses_panels(interior) ? interior : border, x_range, bias_bits, parallel);
  const float* a_mask = prepared.mask.get();

  // X with zeros replaced by the stand-in, and its 0/1 mask, once, for the boxes that mask B.
  std::vector<uint32_t> x_masked_bits;
  std::unique_ptr<float[]> x_mask;
  if (masks_b(interior) || masks_b(border)) {
    const size_t count = plan.batch * plan.in_channels * plan.in_pixels;
    x_masked_bits.resize(count);
    x_mask.reset(new float[count]);
    const ZeroRule rule{true, zero_stand_in_b(x_range)};
    constexpr size_t kChunk = size_t{1} << 16;
    parallel(ceil_div(count, kChunk), [&](size_t c) {
      for (size_t i = c * kChunk; i < std::min(count, (c + 1) * kChunk); ++i) {
        put(x[i], rule, x_masked_bits.data(), x_mask.get(), i);
      }
    });
  }
  const uint32_t* x_masked = x_masked_bits.data();

  // Pieces: chunks of each box's pixels whose im2col matrix fits in about 128 KiB.
  const size_t unit = simd ? nr : 8;
  const size_t chunk = unit * std::max<size_t>(1, (size_t{32} << 10) / std::max<size_t>(1, depth * unit));
  struct Piece {
    size_t box, p0, count;
  };
  std::vector<Piece> pieces;
  for (size_t b = 0; b < boxes.size(); ++b) {
    for (size_t p0 = 0; p0 < boxes[b].pixels(); p0 += chunk) pieces.push_back({b, p0, std::min(chunk, boxes[b].pixels() - p0)});
  }
  // Few pieces (small images, deep layers): split the output channels too.
  size_t rows_per_task = mg;
  while (plan.batch * groups * pieces.size() * ceil_div(mg, rows_per_task) < 16 && rows_per_task > 48) {
    rows_per_task = std::max<size_t>(48, ceil_div(rows_per_task, 2));
  }
  const size_t row_blocks = ceil_div(mg, rows_per_task), per_image = groups * pieces.size() * row_blocks;

  parallel(plan.batch * per_image, [&](size_t t) {
    const size_t n = t / per_image, rest = t % per_image;
    const size_t g = rest / (pieces.size() * row_blocks), piece_index = (rest / row_blocks) % pieces.size();
    const size_t r0 = (rest % row_blocks) * rows_per_task, rows = std::min(mg, r0 + rows_per_task) - r0;
    const Piece& piece = pieces[piece_index];
    const Box& box = boxes[piece.box];
    const size_t p0 = piece.p0, count = piece.count;
    const GemmVariant variant = box.padded ? border : interior;
    const bool fast = uses_panels(variant), mask_b = masks_b(variant);
    const uint32_t padding = zero_stand_in_b(x_range);  // what masked panels hold at padding
    const size_t x_offset = (n * plan.in_channels + g * cg) * plan.in_pixels;
    const uint32_t* a_rows = (fast ? prepared.bits.data() : w.bits.data()) + (g * mg + r0) * depth;
    float* y_rows = y + (n * plan.out_channels + g * mg + r0) * pixels;
    // Pixels that are consecutive in Y (the whole output; a row; full-width bands) are
    // written in place, others through a buffer.
    const bool consecutive = (box.extent[2] == plan.out[2] || (box.extent[1] == 1 && box.extent[0] == 1)) &&
                             (box.extent[1] == plan.out[1] || box.extent[0] == 1);
    const bool direct = fast && consecutive;
    size_t first = 0;  // Y position of pixel p0
    for_each_run(box, p0, 1, [&](size_t, size_t oz, size_t oy, size_t ox, size_t) {
      first = (oz * plan.out[1] + oy) * plan.out[2] + ox;
    });
    std::unique_ptr<float[]> sums(direct ? nullptr : new float[rows * count]);
    if (fast) {
      const size_t panels = ceil_div(count, nr);
      std::unique_ptr<uint32_t[]> col(new uint32_t[panels * depth * nr]);
      std::unique_ptr<float[]> col_mask(mask_b ? new float[panels * depth * nr] : nullptr);
      for (size_t q = 0; q < panels; ++q) {
        const size_t width = std::min(nr, count - q * nr);
        uint32_t* panel = col.get() + q * depth * nr;
        float* panel_mask = col_mask ? col_mask.get() + q * depth * nr : nullptr;
        if (mask_b) {
          im2col<true>(plan, x_masked + x_offset, x_mask.get() + x_offset, cg, box, p0 + q * nr, width, padding,
                       panel, panel_mask, nr);
        } else {
          im2col<false>(plan, x + x_offset, nullptr, cg, box, p0 + q * nr, width, 0u, panel, nullptr, nr);
        }
        for (size_t k = 0; k < depth && width < nr; ++k) {  // padding columns: zeros, masked
          std::fill(panel + k * nr + width, panel + (k + 1) * nr, 0u);
          if (panel_mask) std::fill(panel_mask + k * nr + width, panel_mask + (k + 1) * nr, 0.0f);
        }
      }
      // (the clamped kernels tell X's zeros and the padding's by their magnitude)
      lmul_gemm_fast(variant, a_rows, a_mask ? a_mask + (g * mg + r0) * depth : nullptr, col.get(),
                     col_mask.get(), depth, count, 0, rows, 0, panels, direct ? y_rows + first : sums.get(),
                     direct ? pixels : count, nr, x_range.min_nonzero);
    } else {
      std::unique_ptr<uint32_t[]> col(new uint32_t[depth * count]);
      im2col<false>(plan, x + x_offset, nullptr, cg, box, p0, count, 0u, col.get(), nullptr, count);
      const auto product = variant == GemmVariant::kNormal ? lmul_matmul_rows_normal : lmul_matmul_rows;
      product(a_rows, col.get(), depth, count, 0, rows, bias_bits, sums.get());
    }
    for (size_t r = 0; r < rows; ++r) {
      const float b = bias ? bias[g * mg + r0 + r] : 0.0f;
      float* out = y_rows + r * pixels;
      if (direct) {
        if (bias) {
          for (size_t j = 0; j < count; ++j) out[first + j] += b;
        }
        continue;
      }
      const float* s = sums.get() + r * count;
      for_each_run(box, p0, count, [&](size_t j, size_t oz, size_t oy, size_t ox, size_t run) {
        float* dst = out + (oz * plan.out[1] + oy) * plan.out[2] + ox;
        for (size_t i = 0; i < run; ++i) dst[i] = bias ? s[j + i] + b : s[j + i];
      });
    }
  });
}

void conv_forward_offsets(const ConvPlan& plan, const ConvWeights& w, const uint32_t* x, GemmVariant interior,
                          GemmVariant border, const float* bias, uint32_t bias_bits, float* y,
                          const ParallelFor& parallel, Concurrency* concurrency) {
  const size_t groups = plan.group, cg = plan.in_per_group(), mg = plan.out_per_group();
  const size_t depth = w.depth, pixels = plan.out_pixels;
  const OffsetsOperand a(w, bias_bits);  // W's zeros serve both variants
  const bool unit_strides = plan.stride[0] == 1 && plan.stride[1] == 1 && plan.stride[2] == 1;

  std::vector<Box> boxes = output_boxes(plan);
  std::vector<Box> in_place;  // the interior, read from X in place
  // (v numbers the interior outputs uniquely when they lie inside the input's extent,
  // which they do unless a pad exceeds the kernel's reach.)
  const Box front = boxes.front();
  const bool fits = front.begin[1] + front.extent[1] <= plan.in[1] && front.begin[2] + front.extent[2] <= plan.in[2];
  if (unit_strides && !front.padded && fits) {
    in_place.push_back(boxes.front());
    boxes.erase(boxes.begin());
  } else if (boxes.size() > 1) {  // split only when the boxes' partial vectors waste little
    size_t split = 0;
    for (const Box& box : boxes) split += ceil_div(box.pixels(), 16);
    if (8 * split > 9 * ceil_div(pixels, 16)) {
      Box full;
      for (size_t d = 0; d < kMaxSpatial; ++d) full.extent[d] = plan.out[d];
      full.padded = true;
      boxes = {full};
    }
  }

  // Rows of output channels per task: all of a group's, unless that leaves few tasks (at
  // least 16, and two per thread), in blocks of equal size (64 rows: 32 + 32, not 48 + 16).
  // (With 8 threads or fewer that is 16 whatever the count: no need to measure it.)
  const size_t threads = concurrency != nullptr && (hardware_threads() > 8 || concurrency->fixed())
                             ? concurrency->of(parallel)
                             : 1;
  const size_t wanted_tasks = std::max<size_t>(16, 2 * threads);
  auto rows_per_task = [&](size_t tasks) {
    size_t r = mg;
    while (plan.batch * groups * tasks * ceil_div(mg, r) < wanted_tasks && r > 48) {
      r = std::max<size_t>(48, ceil_div(r, 2));
    }
    return ceil_div(mg, ceil_div(mg, r));
  };

  // The interior's tasks and the other boxes' run in one parallel pass: the borders'
  // few tasks in a pass of their own would leave most threads idle.
  size_t interior_tasks = 0;
  // Rows [crossed_begin, crossed_end) whose border columns the interior's direct runs
  // also write (they run on from one row to the next); empty where they write none.
  size_t crossed_begin = 0, crossed_end = 0;
  std::function<void(size_t)> interior_task;
  std::vector<ptrdiff_t> offsets;
  if (!in_place.empty()) {
    const Box box = in_place.front();
    const size_t hw = plan.in[1] * plan.in[2];
    const size_t in_w = plan.in[2];
    offsets.assign(depth, 0);
    size_t k = 0;
    for (size_t c = 0; c < cg; ++c) {
      for (size_t kz = 0; kz < plan.kernel[0]; ++kz) {
        for (size_t ky = 0; ky < plan.kernel[1]; ++ky) {
          for (size_t kx = 0; kx < plan.kernel[2]; ++kx, ++k) {
            const auto shift = [&](size_t d, size_t kd) {
              return static_cast<ptrdiff_t>(kd * plan.dilation[d]) - static_cast<ptrdiff_t>(plan.pad_begin[d]);
            };
            offsets[k] = static_cast<ptrdiff_t>(c * plan.in_pixels) + shift(0, kz) * static_cast<ptrdiff_t>(hw) +
                         shift(1, ky) * static_cast<ptrdiff_t>(in_w) + shift(2, kx);
          }
        }
      }
    }
    // Runs: per interior plane, its first to its last pixel, cut into chunks of columns.
    const size_t first_row = box.begin[1], last_row = box.begin[1] + box.extent[1] - 1;
    const size_t run = (last_row - first_row) * in_w + box.extent[2];
    // Chunks of 256 columns, fewer where many threads would otherwise idle.
    auto tasks_for = [&](size_t chunk) {
      const size_t t = box.extent[0] * ceil_div(run, chunk);
      return plan.batch * groups * t * ceil_div(mg, rows_per_task(t));
    };
    size_t chunk = 256;
    while (chunk > 64 && tasks_for(chunk) < wanted_tasks) chunk /= 2;
    const size_t chunks_per_plane = ceil_div(run, chunk), tasks = box.extent[0] * chunks_per_plane;
    const size_t rows = rows_per_task(tasks), row_blocks = ceil_div(mg, rows);
    // Y holds the run's outputs at the same v when the output rows have the input's width.
    const bool direct = plan.out[2] == in_w && (plan.out[1] == plan.in[1] || plan.out[0] == 1);
    if (direct && box.extent[1] > 1 && box.extent[2] < in_w) {
      crossed_begin = box.begin[1];
      crossed_end = box.begin[1] + box.extent[1];
    }
    const size_t per_image = groups * tasks * row_blocks;
    interior_tasks = plan.batch * per_image;
    interior_task = [=, &plan, &a, &offsets](size_t t) {
      const size_t n = t / per_image, g = (t / (tasks * row_blocks)) % groups;
      const size_t task = (t / row_blocks) % tasks, r0 = (t % row_blocks) * rows, r1 = std::min(mg, r0 + rows);
      const size_t oz = box.begin[0] + task / chunks_per_plane, j0 = (task % chunks_per_plane) * chunk;
      const size_t count = std::min(chunk, run - j0);
      const size_t v0 = (oz * plan.in[1] + first_row) * in_w + box.begin[2] + j0;
      const uint32_t* xg = x + (n * plan.in_channels + g * cg) * plan.in_pixels + v0;
      const size_t channel0 = g * mg + r0;
      float* y0 = y + (n * plan.out_channels + channel0) * pixels;
      const uint32_t* a_rows = a.bits + channel0 * depth;
      const uint64_t* mask_rows = a.zero ? a.zero + channel0 * a.words : nullptr;
      if (direct) {
        lmul_gemm_offsets(interior, a_rows, mask_rows, depth, xg, offsets.data(), depth, r1 - r0, count,
                          bias ? bias + channel0 : nullptr, y0 + v0, pixels);
        return;
      }
      std::unique_ptr<float[]> sums(new float[(r1 - r0) * count]);
      lmul_gemm_offsets(interior, a_rows, mask_rows, depth, xg, offsets.data(), depth, r1 - r0, count, nullptr,
                        sums.get(), count);
      for (size_t r = r0; r < r1; ++r) {
        const float b = bias ? bias[g * mg + r] : 0.0f;
        const float* s = sums.get() + (r - r0) * count;
        float* out = y0 + (r - r0) * pixels + oz * plan.out[1] * plan.out[2];
        for (size_t j = 0; j < count;) {  // one input row of the run at a time
          const size_t v = box.begin[2] + j0 + j, oy = first_row + v / in_w, ox = v % in_w;
          const size_t stretch = std::min(count - j, in_w - ox);
          const size_t lo = std::max(ox, box.begin[2]), hi = std::min(ox + stretch, box.begin[2] + box.extent[2]);
          for (size_t i = lo; i < hi; ++i) out[oy * plan.out[2] + i] = bias ? s[j + i - ox] + b : s[j + i - ox];
          j += stretch;
        }
      }
    };
  }
  if (boxes.empty()) {
    parallel(interior_tasks, interior_task);
    return;
  }

  // The other boxes: im2col with zeros at padding, in pieces of about 128 KiB.
  const size_t chunk = 64 * std::max<size_t>(1, (size_t{32} << 10) / std::max<size_t>(1, depth * 64));
  struct Piece {
    size_t box, p0, count;
  };
  std::vector<Piece> pieces;
  for (size_t b = 0; b < boxes.size(); ++b) {
    for (size_t p0 = 0; p0 < boxes[b].pixels(); p0 += chunk) pieces.push_back({b, p0, std::min(chunk, boxes[b].pixels() - p0)});
  }
  const size_t rows = rows_per_task(pieces.size()), row_blocks = ceil_div(mg, rows);
  const size_t per_image = groups * pieces.size() * row_blocks, border_tasks = plan.batch * per_image;
  // Task t: image n, group g, output channels [r0, r1) of the group, a piece of a box.
  struct BorderTask {
    size_t n, g, r0, r1;
    const Piece* piece;
    const Box* box;
  };
  auto border_task_of = [&](size_t t) {
    const size_t rest = t % per_image, r0 = (rest % row_blocks) * rows;
    const Piece* piece = &pieces[(rest / row_blocks) % pieces.size()];
    return BorderTask{t / per_image, rest / (pieces.size() * row_blocks), r0, std::min(mg, r0 + rows), piece,
                      &boxes[piece->box]};
  };
  // Sums of a task (rows x piece count, bias not added) to their places in Y.
  auto write_border = [&](const BorderTask& task, const float* sums) {
    const size_t count = task.piece->count;
    for (size_t r = task.r0; r < task.r1; ++r) {
      const float b = bias ? bias[task.g * mg + r] : 0.0f;
      const float* s = sums + (r - task.r0) * count;
      float* out = y + (task.n * plan.out_channels + task.g * mg + r) * pixels;
      for_each_run(*task.box, task.piece->p0, count, [&](size_t j, size_t oz, size_t oy, size_t ox, size_t stretch) {
        float* dst = out + (oz * plan.out[1] + oy) * plan.out[2] + ox;
        for (size_t i = 0; i < stretch; ++i) dst[i] = bias ? s[j + i] + b : s[j + i];
      });
    }
  };
  // The interior's direct runs also write (wrong) sums at the border columns between
  // its rows, which the borders' sums must overwrite: in a shared pass, the sums of the
  // boxes beside the interior rows are kept aside (at aside_at[t]) and written after it.
  std::vector<size_t> aside_at(border_tasks + 1, 0);
  for (size_t t = 0; t < border_tasks; ++t) {
    const BorderTask task = border_task_of(t);
    const bool beside = task.box->begin[1] < crossed_end && task.box->begin[1] + task.box->extent[1] > crossed_begin;
    aside_at[t + 1] = aside_at[t] + (beside ? (task.r1 - task.r0) * task.piece->count : 0);
  }
  std::vector<float> aside(aside_at[border_tasks]);
  const bool keep_aside_any = !aside.empty();
  auto border_task = [&](size_t t) {
    const BorderTask task = border_task_of(t);
    const Box& box = *task.box;
    const size_t p0 = task.piece->p0, count = task.piece->count, channel0 = task.g * mg + task.r0;
    const size_t n = task.n, g = task.g, r0 = task.r0, r1 = task.r1;
    const GemmVariant variant = box.padded ? border : interior;
    std::unique_ptr<uint32_t[]> col(new uint32_t[depth * count]);
    im2col<false>(plan, x + (n * plan.in_channels + g * cg) * plan.in_pixels, nullptr, cg, box, p0, count, 0u,
                  col.get(), nullptr, count);
    std::vector<ptrdiff_t> col_offsets(depth);  // row k of the piece's columns
    for (size_t k = 0; k < depth; ++k) col_offsets[k] = static_cast<ptrdiff_t>(k * count);
    const uint32_t* a_rows = a.bits + channel0 * depth;
    const uint64_t* mask_rows = a.zero ? a.zero + channel0 * a.words : nullptr;
    const bool consecutive = (box.extent[2] == plan.out[2] || (box.extent[1] == 1 && box.extent[0] == 1)) &&
                             (box.extent[1] == plan.out[1] || box.extent[0] == 1);
    const bool keep_aside = aside_at[t + 1] > aside_at[t];
    if (consecutive && !keep_aside) {
      size_t first = 0;  // Y position of pixel p0
      for_each_run(box, p0, 1, [&](size_t, size_t oz, size_t oy, size_t ox, size_t) {
        first = (oz * plan.out[1] + oy) * plan.out[2] + ox;
      });
      lmul_gemm_offsets(variant, a_rows, mask_rows, depth, col.get(), col_offsets.data(), depth, r1 - r0, count,
                        bias ? bias + channel0 : nullptr, y + (n * plan.out_channels + channel0) * pixels + first,
                        pixels);
      return;
    }
    std::unique_ptr<float[]> own(keep_aside ? nullptr : new float[(r1 - r0) * count]);
    float* sums = keep_aside ? aside.data() + aside_at[t] : own.get();
    lmul_gemm_offsets(variant, a_rows, mask_rows, depth, col.get(), col_offsets.data(), depth, r1 - r0, count, nullptr,
                      sums, count);
    if (!keep_aside) write_border(task, sums);
  };
  // The borders' tasks first: with their im2col, they are the longer ones.
  parallel(border_tasks + interior_tasks,
           [&](size_t t) { t < border_tasks ? border_task(t) : interior_task(t - border_tasks); });
  if (keep_aside_any) {
    parallel(border_tasks, [&](size_t t) {
      if (aside_at[t + 1] > aside_at[t]) write_border(border_task_of(t), aside.data() + aside_at[t]);
    });
  }
}

// The matmul variant for these weights and X; padding zeros count as zero operands.
GemmVariant conv_variant(const ConvPlan& plan, const ConvWeights& weights, const OperandRange& x_range,
                         uint32_t bias_bits) {
  OperandRange b = x_range;
  if (plan.uses_padding) b.has_zero = true;  // padding zeros are operands too
  return choose_variant(weights.range, b, bias_bits, panel_width() > 0, /*clamped=*/true);
}

// ConvTranspose: per image, the columns W_g^T (*) X_g of every group (phase 1), then
// col2im per output channel (phase 2).
void conv_transpose_forward(const ConvPlan& plan, const ConvWeights& w, const uint32_t* x,
                            const OperandRange& x_range, const float* bias, uint32_t bias_bits, float* y,
                            const ParallelFor& parallel) {
  const size_t groups = plan.group, cg = plan.in_per_group(), mg = plan.out_per_group();
  const size_t rows = w.rows, depth = w.depth, in_pixels = plan.in_pixels, out_pixels = plan.out_pixels;
  const GemmVariant variant = conv_variant(plan, w, x_range, bias_bits);
  const bool fast = uses_panels(variant), one_add = is_one_add(variant);
  const size_t nr = fast ? panel_width() : 0;
  // X_g is read in place by lmul_gemm_offsets (AVX-512, one add), else packed into panels.
  const bool in_place = one_add && offsets_gemm_available();
  std::vector<ptrdiff_t> x_offsets(in_place ? depth : 0);
  for (size_t k = 0; k < x_offsets.size(); ++k) x_offsets[k] = static_cast<ptrdiff_t>(k * in_pixels);

  PreparedWeights prepared;
  if (fast && !in_place) prepared.prepare(w, variant, x_range, bias_bits, parallel);
  std::unique_ptr<const OffsetsOperand> operand(in_place ? new OffsetsOperand(w, bias_bits) : nullptr);
  const uint32_t* a = in_place ? operand->bits : fast ? prepared.bits.data() : w.bits.data();
  const float* a_mask = prepared.mask.get();
  // (the clamped kernels tell X's zeros by their magnitude: no stand-ins)
  const ZeroRule rule{one_add, one_add ? zero_stand_in_b(x_range) : 0u};
  const bool mask_b = masks_b(variant);
  const size_t panels = fast ? ceil_div(in_pixels, nr) : 0;
  const size_t panel_entries = panels * depth * nr;  // per group
  std::unique_ptr<uint32_t[]> x_panels(fast && !in_place ? new uint32_t[groups * panel_entries] : nullptr);
  std::unique_ptr<float[]> x_masks(mask_b && !in_place ? new float[groups * panel_entries] : nullptr);
  std::unique_ptr<float[]> cols(new float[std::max<size_t>(1, groups * rows * in_pixels)]);

  // Phase 1 blocking, as for MatMul: row blocks x panel blocks.
  const size_t rows_per_task = std::min<size_t>(rows, 96);
  const size_t row_blocks = ceil_div(rows, rows_per_task);
  const size_t column_unit = fast ? nr : in_pixels;
  const size_t units = fast ? panels : 1;
  const size_t units_per_task =
      std::max<size_t>(1, (size_t{1} << 18) / std::max<size_t>(1, rows_per_task * depth * column_unit));
  const size_t unit_blocks = ceil_div(units, units_per_task);

  for (size_t n = 0; n < plan.batch; ++n) {
    const uint32_t* x_n = x + n * plan.in_channels * in_pixels;
    if (fast && !in_place) {  // X_g (C/g x in pixels) into column panels
      parallel(groups * panels, [&](size_t t) {
        const size_t g = t / panels, q = t % panels, j0 = q * nr, width = std::min(nr, in_pixels - j0);
        uint32_t* panel = x_panels.get() + g * panel_entries + q * depth * nr;
        float* panel_mask = x_masks ? x_masks.get() + g * panel_entries + q * depth * nr : nullptr;
        const uint32_t* src = x_n + g * cg * in_pixels + j0;
        for (size_t k = 0; k < depth; ++k) {
          uint32_t* row = panel + k * nr;
          float* mask_row = panel_mask ? panel_mask + k * nr : nullptr;
          for (size_t j = 0; j < width; ++j) put(src[k * in_pixels + j], rule, row, mask_row, j);
          for (size_t j = width; j < nr; ++j) put_padding(ZeroRule{}, row, mask_row, j);
        }
      });
    }
    parallel(groups * row_blocks * unit_blocks, [&](size_t t) {
      const size_t ub = t % unit_blocks, rb = (t / unit_blocks) % row_blocks, g = t / (unit_blocks * row_blocks);
      const size_t r0 = rb * rows_per_task, r1 = std::min(rows, r0 + rows_per_task);
      const uint32_t* a_rows = a + (g * rows + r0) * depth;
      float* out = cols.get() + (g * rows + r0) * in_pixels;
      if (in_place) {
        const size_t j0 = ub * units_per_task * nr, j1 = std::min(in_pixels, j0 + units_per_task * nr);
        const uint64_t* zero = operand->zero ? operand->zero + (g * rows + r0) * operand->words : nullptr;
        lmul_gemm_offsets(variant, a_rows, zero, depth,
                          x_n + g * cg * in_pixels + j0, x_offsets.data(), depth, r1 - r0, j1 - j0, nullptr,
                          out + j0, in_pixels);
      } else if (fast) {
        const size_t q0 = ub * units_per_task, q1 = std::min(panels, q0 + units_per_task);
        lmul_gemm_fast(variant, a_rows, a_mask ? a_mask + (g * rows + r0) * depth : nullptr,
                       x_panels.get() + g * panel_entries, x_masks ? x_masks.get() + g * panel_entries : nullptr,
                       depth, in_pixels, 0, r1 - r0, q0, q1, out, in_pixels, nr, x_range.min_nonzero);
      } else {
        const auto product = variant == GemmVariant::kNormal ? lmul_matmul_rows_normal : lmul_matmul_rows;
        product(a_rows, x_n + g * cg * in_pixels, depth, in_pixels, 0, r1 - r0, bias_bits, out);
      }
    });
    // Phase 2, col2im: each output channel adds its columns in kernel-offset order. The
    // sums are kept split by output column phase (ox mod stride), where a column's
    // contributions to one output row are consecutive: contiguous loops whatever the stride.
    const size_t sx = plan.stride[2], wj = ceil_div(plan.out[2], sx);
    const size_t phase_rows = plan.out[0] * plan.out[1];
    parallel(plan.out_channels, [&](size_t channel) {
      const size_t g = channel / mg, m = channel % mg;
      std::vector<float> acc(sx * phase_rows * wj, 0.0f);  // [phase][oz][oy][ox / stride]
      const float* col = cols.get() + (g * rows + m * plan.kernel_size) * in_pixels;
      const int64_t out1 = static_cast<int64_t>(plan.out[1]), out2 = static_cast<int64_t>(plan.out[2]);
      for (size_t kz = 0; kz < plan.kernel[0]; ++kz) {
        for (size_t ky = 0; ky < plan.kernel[1]; ++ky) {
          for (size_t kx = 0; kx < plan.kernel[2]; ++kx, col += in_pixels) {
            const int64_t shift_z = static_cast<int64_t>(kz * plan.dilation[0]) - static_cast<int64_t>(plan.pad_begin[0]);
            const int64_t shift_y = static_cast<int64_t>(ky * plan.dilation[1]) - static_cast<int64_t>(plan.pad_begin[1]);
            const int64_t shift_x = static_cast<int64_t>(kx * plan.dilation[2]) - static_cast<int64_t>(plan.pad_begin[2]);
            int64_t lo = 0, hi = 0;
            valid_range(0, static_cast<int64_t>(plan.in[2]), static_cast<int64_t>(sx), shift_x, out2, lo, hi);
            if (lo == hi) continue;
            // ox = ix * stride + shift_x = (ix + q) * stride + phase
            const int64_t stride = static_cast<int64_t>(sx);
            const int64_t phase = ((shift_x % stride) + stride) % stride, q = (shift_x - phase) / stride;
            float* acc_phase = acc.data() + static_cast<size_t>(phase) * phase_rows * wj;
            for (size_t iz = 0; iz < plan.in[0]; ++iz) {
              const int64_t oz = static_cast<int64_t>(iz * plan.stride[0]) + shift_z;
              if (oz < 0 || oz >= static_cast<int64_t>(plan.out[0])) continue;
              for (size_t iy = 0; iy < plan.in[1]; ++iy) {
                const int64_t oy = static_cast<int64_t>(iy * plan.stride[1]) + shift_y;
                if (oy < 0 || oy >= out1) continue;
                const float* src = col + (iz * plan.in[1] + iy) * plan.in[2];
                float* dst = acc_phase + (static_cast<size_t>(oz) * plan.out[1] + static_cast<size_t>(oy)) * wj;
                const size_t begin = static_cast<size_t>(lo), end = static_cast<size_t>(hi);
                const size_t offset = static_cast<size_t>(lo + q);  // dst index of ix = lo
                for (size_t ix = begin; ix < end; ++ix) dst[offset + (ix - begin)] += src[ix];
              }
            }
          }
        }
      }
      float* out = y + (n * plan.out_channels + channel) * out_pixels;
      const float b = bias ? bias[channel] : 0.0f;
      for (size_t r = 0; r < phase_rows; ++r) {
        float* dst = out + r * plan.out[2];
        for (size_t ox = 0, j = 0, phase = 0; ox < plan.out[2]; ++ox) {
          const float sum = acc[(phase * phase_rows + r) * wj + j];
          dst[ox] = bias ? sum + b : sum;
          if (++phase == sx) {
            phase = 0;
            ++j;
          }
        }
      }
    });
  }
}

}  // namespace

OperandRange scan_range(const uint32_t* bits, size_t count, const ParallelFor& parallel) {
  constexpr size_t kChunk = size_t{1} << 16;
  const size_t chunks = ceil_div(count, kChunk);
  std::vector<OperandRange> parts(chunks);
  parallel(chunks, [&](size_t c) { parts[c].scan(bits + c * kChunk, std::min(kChunk, count - c * kChunk)); });
  OperandRange range;
  for (const OperandRange& part : parts) range.merge(part);
  return range;
}


void prepare_offsets_operand(const ConvWeights& w, uint32_t bias_bits, std::vector<uint32_t>& bits,
                             std::vector<uint64_t>& zero) {
  const size_t count = w.bits.size(), depth = w.depth, words = (depth + 63) / 64;
  const size_t rows = depth == 0 ? 0 : count / depth;
  bits.resize(count);
  zero.assign(w.range.has_zero ? rows * words : 0, 0u);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t p = 0; p < depth; ++p) {
      const uint32_t value = w.bits[r * depth + p];
      const bool is_zero = (value & kMagnitudeMask) < kSmallestNormalBits;
      bits[r * depth + p] = is_zero ? 0u : value - bias_bits;
      if (is_zero && !zero.empty()) zero[r * words + p / 64] |= uint64_t{1} << (p % 64);
    }
  }
}

void prepare_offsets_operand(ConvWeights& w, uint32_t bias_bits) {
  if (!offsets_gemm_available()) return;
  prepare_offsets_operand(w, bias_bits, w.offsets_bits, w.offsets_zero);
  w.offsets_bias = bias_bits;
}

void lmul_conv(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* x, const float* bias,
               uint32_t bias_bits, float* y, const ParallelFor& parallel, Concurrency* concurrency) {
  if (plan.batch == 0 || plan.out_channels == 0 || plan.out_pixels == 0) return;

  const OperandRange x_range = scan_range(x, plan.batch * plan.in_channels * plan.in_pixels, parallel);
  if (plan.transpose) {
    conv_transpose_forward(plan, weights, x, x_range, bias, bias_bits, y, parallel);
  } else {
    conv_forward(plan, weights, x, x_range, bias, bias_bits, y, parallel, concurrency);
  }
}

}  // namespace lmul
