// The onnxruntime C API version this library asks for: onnxruntime 1.21's, whatever headers
// it is built against, so that a build against newer headers still runs on every
// onnxruntime >= 1.21 (pyproject's floor). Only functions of API <= 21 may be used.
#pragma once

#include <cstdint>

namespace lmul {
constexpr uint32_t kOrtApiVersion = 21;
}  // namespace lmul
