#include "conv_shapes.h"

#include <algorithm>

namespace lmul {

namespace {

std::string list_to_string(const std::vector<int64_t>& values) { return shape_to_string(values); }

bool all_at_least(const std::vector<int64_t>& values, int64_t minimum) {
  return std::all_of(values.begin(), values.end(), [minimum](int64_t v) { return v >= minimum; });
}

// Spatial rank implied by one attribute list (`per_dim` values per spatial dimension),
// merged into `rank` (0 = not known yet). False on disagreement.
bool merge_rank(const char* name, const std::vector<int64_t>& values, size_t per_dim, size_t& rank,
                std::string& error) {
  if (values.empty()) return true;
  if (values.size() % per_dim != 0) {
    error = std::string("attribute '") + name + "' must have " + (per_dim == 2 ? "an even number of" : "one per axis") +
            " values, got " + std::to_string(values.size());
    return false;
  }
  const size_t implied = values.size() / per_dim;
  if (rank != 0 && implied != rank) {
    error = std::string("attribute '") + name + "' has " + std::to_string(values.size()) +
            " values, inconsistent with the other attributes' " + std::to_string(rank) + " spatial dimensions";
    return false;
  }
  rank = implied;
  return true;
}

size_t value_or(const std::vector<int64_t>& values, size_t i, size_t fallback) {
  return values.empty() ? fallback : static_cast<size_t>(values[i]);
}

}  // namespace

bool parse_auto_pad(const std::string& text, AutoPad& value) {
  if (text == "NOTSET") {
    value = AutoPad::kNotSet;
  } else if (text == "SAME_UPPER") {
    value = AutoPad::kSameUpper;
  } else if (text == "SAME_LOWER") {
    value = AutoPad::kSameLower;
  } else if (text == "VALID") {
    value = AutoPad::kValid;
  } else {
    return false;
  }
  return true;
}

bool check_conv_attributes(const ConvAttributes& a, bool transpose, std::string& error) {
  if (a.group < 1) {
    error = "attribute 'group' must be >= 1, got " + std::to_string(a.group);
    return false;
  }
  struct Rule {
    const char* name;
    const std::vector<int64_t>* values;
    int64_t minimum;
  };
  const Rule rules[] = {{"dilations", &a.dilations, 1},         {"kernel_shape", &a.kernel_shape, 1},
                        {"pads", &a.pads, 0},                   {"strides", &a.strides, 1},
                        {"output_padding", &a.output_padding, 0}, {"output_shape", &a.output_shape, 1}};
  // Sizes beyond 2^31 cannot describe a real tensor and would overflow the index arithmetic.
  constexpr int64_t kLimit = int64_t{1} << 31;
  if (a.group >= kLimit) {
    error = "attribute 'group' must be < 2^31, got " + std::to_string(a.group);
    return false;
  }
  for (const Rule& rule : rules) {
    if (std::any_of(rule.values->begin(), rule.values->end(), [](int64_t v) { return v >= kLimit; })) {
      error = std::string("attribute '") + rule.name + "' values must be < 2^31, got " + list_to_string(*rule.values);
      return false;
    }
    if (!all_at_least(*rule.values, rule.minimum)) {
      error = std::string("attribute '") + rule.name + "' values must be >= " + std::to_string(rule.minimum) +
              ", got " + list_to_string(*rule.values);
      return false;
    }
  }
  if (!transpose && (!a.output_padding.empty() || !a.output_shape.empty())) {
    error = "attributes 'output_padding' and 'output_shape' belong to ConvTranspose, not Conv";
    return false;
  }
  size_t rank = 0;
  if (!merge_rank("dilations", a.dilations, 1, rank, error) ||
      !merge_rank("kernel_shape", a.kernel_shape, 1, rank, error) || !merge_rank("pads", a.pads, 2, rank, error) ||
      !merge_rank("strides", a.strides, 1, rank, error) ||
      !merge_rank("output_padding", a.output_padding, 1, rank, error)) {
    return false;
  }
  if (rank > kMaxSpatial) {
    error = "only 1 to 3 spatial dimensions are supported, the attributes have " + std::to_string(rank);
    return false;
  }
  return true;
}

bool make_conv_plan(const Shape& x, const Shape& w, const Shape* b, const ConvAttributes& a, bool transpose,
                    ConvPlan& plan, std::string& error) {
  plan = ConvPlan();
  plan.transpose = transpose;
  if (x.size() < 3 || x.size() > 2 + kMaxSpatial || w.size() != x.size()) {
    error = "X and W must both have rank 3 to 5 (1 to 3 spatial dimensions), got " + shape_to_string(x) + " and " +
            shape_to_string(w);
    return false;
  }
  size_t count = 0;
  if (!element_count(x, count) || !element_count(w, count)) {
    error = "invalid input shape " + shape_to_string(x) + " or " + shape_to_string(w);
    return false;
  }
  const size_t rank = x.size() - 2;
  const size_t shift = kMaxSpatial - rank;  // right-align into 3 spatial dimensions
  const struct {
    const char* name;
    const std::vector<int64_t>& values;
    size_t expected;
  } lengths[] = {{"dilations", a.dilations, rank},           {"kernel_shape", a.kernel_shape, rank},
                 {"pads", a.pads, 2 * rank},                 {"strides", a.strides, rank},
                 {"output_padding", a.output_padding, rank}};
  for (const auto& item : lengths) {
    if (!item.values.empty() && item.values.size() != item.expected) {
      error = std::string("attribute '") + item.name + "' must have " + std::to_string(item.expected) +
              " values for " + std::to_string(rank) + " spatial dimensions, got " + std::to_string(item.values.size());
      return false;
    }
  }
  std::vector<int64_t> wanted = a.output_shape;
  if (wanted.size() == rank + 2) wanted.erase(wanted.begin(), wanted.begin() + 2);
  if (!a.output_shape.empty() && wanted.size() != rank) {
    error = "attribute 'output_shape' must have " + std::to_string(rank) + " values, got " +
            list_to_string(a.output_shape);
    return false;
  }
  const size_t group = static_cast<size_t>(a.group);
  plan.group = group;
  plan.batch = static_cast<size_t>(x[0]);
  plan.in_channels = static_cast<size_t>(x[1]);
  if (transpose) {
    if (static_cast<size_t>(w[0]) != plan.in_channels || plan.in_channels % group != 0) {
      error = "W " + shape_to_string(w) + " does not match X's " + std::to_string(plan.in_channels) + " channels in " +
              std::to_string(group) + " groups";
      return false;
    }
    plan.out_channels = static_cast<size_t>(w[1]) * group;
  } else {
    if (static_cast<size_t>(w[1]) * group != plan.in_channels || static_cast<size_t>(w[0]) % group != 0) {
      error = "W " + shape_to_string(w) + " does not match X's " + std::to_string(plan.in_channels) + " channels in " +
              std::to_string(group) + " groups";
      return false;
    }
    plan.out_channels = static_cast<size_t>(w[0]);
  }
  if (b != nullptr && !(b->size() == 1 && static_cast<size_t>((*b)[0]) == plan.out_channels)) {
    error = "B must have shape (" + std::to_string(plan.out_channels) + "), got " + shape_to_string(*b);
    return false;
  }
  plan.out_shape = {x[0], static_cast<int64_t>(plan.out_channels)};
  for (size_t i = 0; i < rank; ++i) {
    const size_t d = shift + i;
    const size_t size = static_cast<size_t>(x[2 + i]), kernel = static_cast<size_t>(w[2 + i]);
    if (size == 0 || kernel == 0) {
      error = "spatial dimensions of X and W must be positive, got " + shape_to_string(x) + " and " +
              shape_to_string(w);
      return false;
    }
    if (!a.kernel_shape.empty() && static_cast<size_t>(a.kernel_shape[i]) != kernel) {
      error = "attribute 'kernel_shape' " + list_to_string(a.kernel_shape) + " differs from W's kernel in " +
              shape_to_string(w);
      return false;
    }
    const size_t stride = value_or(a.strides, i, 1), dilation = value_or(a.dilations, i, 1);
    const size_t extent = (kernel - 1) * dilation + 1;
    size_t head = value_or(a.pads, i, 0), tail = value_or(a.pads, rank + i, 0);
    if (a.auto_pad == AutoPad::kValid) head = tail = 0;
    int64_t out = 0;
    if (!transpose) {
      if (a.auto_pad == AutoPad::kSameUpper || a.auto_pad == AutoPad::kSameLower) {
        const size_t target = (size + stride - 1) / stride;
        const size_t needed = (target - 1) * stride + extent;
        const size_t total = needed > size ? needed - size : 0;
        head = a.auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
        tail = total - head;
      }
      if (size + head + tail < extent) {
        error = "spatial dimension " + std::to_string(i) + " of X " + shape_to_string(x) + " (padded " +
                std::to_string(size + head + tail) + ") is smaller than the dilated kernel (" +
                std::to_string(extent) + ")";
        return false;
      }
      out = static_cast<int64_t>((size + head + tail - extent) / stride + 1);
      // Some product meets padding when the first window starts before the input or
      // the last one ends after it.
      const size_t last_end = (static_cast<size_t>(out) - 1) * stride + extent;  // in padded coordinates
      if (head > 0 || last_end > head + size) plan.uses_padding = true;
    } else {
      const size_t adjust = value_or(a.output_padding, i, 0);
      const size_t full = (size - 1) * stride + adjust + extent;
      if (!wanted.empty() || a.auto_pad == AutoPad::kSameUpper || a.auto_pad == AutoPad::kSameLower) {
        // The requested size (SAME: input * stride, at most the full output); surplus
        // padding split with the larger half first unless SAME_UPPER.
        const size_t target = !wanted.empty() ? static_cast<size_t>(wanted[i]) : std::min(size * stride, full);
        const size_t total = full > target ? full - target : 0;
        head = a.auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
        tail = total - head;
        out = static_cast<int64_t>(target);
      } else {
        out = static_cast<int64_t>(full) - static_cast<int64_t>(head) - static_cast<int64_t>(tail);
      }
      if (out < 1) {
        error = "output spatial dimension " + std::to_string(i) + " would be " + std::to_string(out) +
                ": pads exceed the output";
        return false;
      }
      // The output must be one this input size produces (onnxruntime's check).
      if ((static_cast<size_t>(out) + head + tail - extent) / stride + 1 != size) {
        error = "output size " + std::to_string(out) + " of spatial dimension " + std::to_string(i) +
                " (output_padding " + std::to_string(adjust) + ") is inconsistent with input size " +
                std::to_string(size) + " and stride " + std::to_string(stride);
        return false;
      }
    }
    plan.in[d] = size;
    plan.out[d] = static_cast<size_t>(out);
    plan.kernel[d] = kernel;
    plan.stride[d] = stride;
    plan.dilation[d] = dilation;
    plan.pad_begin[d] = head;
    plan.out_shape.push_back(out);
  }
  plan.in_pixels = plan.in[0] * plan.in[1] * plan.in[2];
  plan.out_pixels = plan.out[0] * plan.out[1] * plan.out[2];
  plan.kernel_size = plan.kernel[0] * plan.kernel[1] * plan.kernel[2];
  if (!element_count(plan.out_shape, count)) {
    error = "output shape " + shape_to_string(plan.out_shape) + " is too large";
    return false;
  }
  return true;
}

}  // namespace lmul
