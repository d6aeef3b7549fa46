// Strict node-attribute reading for the onnxruntime binding (docs/SPEC.md section 3, last
// paragraph): an attribute of the wrong type is an error when the session is created,
// never silently read as absent. Any op of the domain reads its attributes with these.
//
// What the C API (version <= 21, the one this library requests) allows: a node's
// attributes can only be read by name and by type (KernelInfoGetAttribute_int64 / _float /
// _string / _tensor, KernelInfoGetAttributeArray_int64 / _float); there is no call that
// lists them. So a reader probes every readable type to tell "absent" from "present with
// another type", and an attribute the op does not define, or one of a type no call reads
// (a list of strings, a graph, a sparse tensor), cannot be seen here; nor can the version
// of the domain the model imports (onnxruntime accepts any version of a custom domain and
// matches kernels against the op schema's version, 1, whatever GetStartVersion/
// GetEndVersion say). lmul_onnx checks those in Python (lmul_onnx.ops.check_model) before
// it creates a session.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace lmul_ort {

// An error in a node's inputs or attributes, reported as ORT_INVALID_ARGUMENT.
struct NodeError : std::exception {
  explicit NodeError(std::string message) : text(std::move(message)) {}
  const char* what() const noexcept override { return text.c_str(); }
  std::string text;
};

// The type of a node attribute, as far as the C API can read it.
// kOther: an empty list, or a type no call reads (onnxruntime's list readers return an empty
// list for an attribute of any non-list type, so only a non-empty list is known to be one).
enum class AttributeKind { kAbsent, kInt, kFloat, kString, kInts, kFloats, kTensor, kOther };

inline const char* describe(AttributeKind kind) {
  switch (kind) {
    case AttributeKind::kInt:
      return "an int";
    case AttributeKind::kFloat:
      return "a float";
    case AttributeKind::kString:
      return "a string";
    case AttributeKind::kInts:
      return "a list of ints";
    case AttributeKind::kFloats:
      return "a list of floats";
    case AttributeKind::kTensor:
      return "a tensor";
    case AttributeKind::kOther:
      return "an empty list or another type (strings, graph, sparse tensor)";
    default:
      return "absent";
  }
}

// True when a C API call succeeded (here: the attribute exists with that type).
inline bool succeeded(OrtStatus* status) {
  if (!status) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

// Which readable type attribute `name` has (kAbsent: absent, or of an unreadable type).
inline AttributeKind attribute_kind(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  int64_t as_int = 0;
  if (succeeded(api.KernelInfoGetAttribute_int64(info, name, &as_int))) return AttributeKind::kInt;
  float as_float = 0.0f;
  if (succeeded(api.KernelInfoGetAttribute_float(info, name, &as_float))) return AttributeKind::kFloat;
  size_t size = 0;
  if (succeeded(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return AttributeKind::kString;
  OrtAllocator* allocator = nullptr;
  if (succeeded(api.GetAllocatorWithDefaultOptions(&allocator))) {
    OrtValue* tensor = nullptr;
    if (succeeded(api.KernelInfoGetAttribute_tensor(info, name, allocator, &tensor))) {
      api.ReleaseValue(tensor);
      return AttributeKind::kTensor;
    }
  }
  size_t ints = 0, floats = 0;
  const bool listed = succeeded(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &ints)) |
                      succeeded(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &floats));
  if (ints > 0) return AttributeKind::kInts;
  if (floats > 0) return AttributeKind::kFloats;
  return listed ? AttributeKind::kOther : AttributeKind::kAbsent;
}

// Absent -> false; another type -> NodeError naming the attribute and both types.
inline bool absent_or_throw(const OrtKernelInfo* info, const char* name, AttributeKind wanted) {
  const AttributeKind kind = attribute_kind(info, name);
  if (kind == AttributeKind::kAbsent) return false;
  throw NodeError(std::string("attribute '") + name + "' must be " + describe(wanted) + ", got " + describe(kind));
}

// Optional attributes of one type: true and `value` set when present with that type, false
// when absent, NodeError when present with another type.
inline bool read_int(const OrtKernelInfo* info, const char* name, int64_t& value) {
  if (succeeded(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value))) return true;
  return absent_or_throw(info, name, AttributeKind::kInt);
}

inline bool read_float(const OrtKernelInfo* info, const char* name, float& value) {
  if (succeeded(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &value))) return true;
  return absent_or_throw(info, name, AttributeKind::kFloat);
}

inline bool read_string(const OrtKernelInfo* info, const char* name, std::string& value) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  if (succeeded(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) {
    std::string text(size, '\0');  // size counts the terminating NUL
    if (!succeeded(api.KernelInfoGetAttribute_string(info, name, &text[0], &size))) {
      throw NodeError(std::string("attribute '") + name + "' could not be read");
    }
    text.resize(size > 0 ? size - 1 : 0);
    value = std::move(text);
    return true;
  }
  return absent_or_throw(info, name, AttributeKind::kString);
}

// The list readers: KernelInfoGetAttributeArray_int64 / _float as `getter`.
template <class T, class Getter>
bool read_list(const OrtKernelInfo* info, const char* name, std::vector<T>& values, Getter getter,
               AttributeKind kind) {
  size_t size = 0;
  // onnxruntime answers an empty list for an attribute of another type: only a non-empty
  // list, or one attribute_kind cannot place otherwise, is read as this list type.
  if (succeeded(getter(info, name, nullptr, &size)) &&
      (size > 0 || attribute_kind(info, name) == AttributeKind::kOther)) {
    std::vector<T> read(size);
    if (size > 0 && !succeeded(getter(info, name, read.data(), &size))) {
      throw NodeError(std::string("attribute '") + name + "' could not be read");
    }
    values = std::move(read);
    return true;
  }
  return absent_or_throw(info, name, kind);
}

inline bool read_ints(const OrtKernelInfo* info, const char* name, std::vector<int64_t>& values) {
  return read_list(info, name, values, Ort::GetApi().KernelInfoGetAttributeArray_int64, AttributeKind::kInts);
}

inline bool read_floats(const OrtKernelInfo* info, const char* name, std::vector<float>& values) {
  return read_list(info, name, values, Ort::GetApi().KernelInfoGetAttributeArray_float, AttributeKind::kFloats);
}

// An optional 0/1 int attribute (Gemm's transA/transB); absent = 0.
inline bool read_flag(const OrtKernelInfo* info, const char* name) {
  int64_t value = 0;
  if (!read_int(info, name, value)) return false;
  if (value != 0 && value != 1) {
    throw NodeError(std::string("attribute '") + name + "' must be 0 or 1, got " + std::to_string(value));
  }
  return value == 1;
}

}  // namespace lmul_ort
