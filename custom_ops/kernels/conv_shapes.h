// Attribute and shape rules of ONNX Conv and ConvTranspose (docs/SPEC.md section 3), as
// onnxruntime's CPU ops read them, without onnxruntime types. lmul_onnx/conv.py is the
// Python twin (conv_geometry, conv_transpose_geometry); the tests hold the two together.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "shapes.h"

namespace lmul {

enum class AutoPad { kNotSet, kSameUpper, kSameLower, kValid };

// False for a string that is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID.
bool parse_auto_pad(const std::string& text, AutoPad& value);

// The attributes of one node; an empty list is an absent attribute.
struct ConvAttributes {
  AutoPad auto_pad = AutoPad::kNotSet;
  int64_t group = 1;
  std::vector<int64_t> dilations, kernel_shape, pads, strides;
  std::vector<int64_t> output_padding, output_shape;  // ConvTranspose only
};

// Checks what can be checked without the input shapes (values in range, list lengths
// consistent with each other), so that a bad node fails when the session is created.
bool check_conv_attributes(const ConvAttributes& attributes, bool transpose, std::string& error);

// Conv / ConvTranspose resolved for one pair of input shapes. Spatial dimensions are
// right-aligned into 3 (a 1-D input has depth = height = 1, kernel 1, stride 1, no pads).
constexpr size_t kMaxSpatial = 3;

struct ConvPlan {
  bool transpose = false;
  size_t batch = 0, in_channels = 0, out_channels = 0, group = 1;
  size_t in[kMaxSpatial] = {1, 1, 1}, out[kMaxSpatial] = {1, 1, 1}, kernel[kMaxSpatial] = {1, 1, 1};
  size_t stride[kMaxSpatial] = {1, 1, 1}, dilation[kMaxSpatial] = {1, 1, 1};
  size_t pad_begin[kMaxSpatial] = {0, 0, 0};
  size_t in_pixels = 1, out_pixels = 1, kernel_size = 1;
  bool uses_padding = false;  // Conv: some product meets a padding zero
  Shape out_shape;

  size_t in_per_group() const { return in_channels / group; }
  size_t out_per_group() const { return out_channels / group; }
};

// X (N, C, *spatial), W (M, C/group, *kernel) for Conv or (C, M/group, *kernel) for
// ConvTranspose, optional B (M). False with a readable error when they break the rules.
bool make_conv_plan(const Shape& x, const Shape& w, const Shape* b, const ConvAttributes& attributes, bool transpose,
                    ConvPlan& plan, std::string& error);

}  // namespace lmul
