// Runs a model converted by lmul-onnx from C++, with onnxruntime's C++ API and the lmul
// custom-op library, and prints its outputs.
//
//   run_model MODEL.onnx LIBRARY.so [INPUT.npy ...] [--save DIR]
//
// LIBRARY.so is what `lmul-onnx library-path` prints. The inputs are .npy files (float32,
// float16, int64 or int32, C order), one per model input, in the model's input order;
// --save writes output i to DIR/output_<i>.npy. Build (onnxruntime >= 1.21):
//
//   g++ -std=c++17 -O2 run_model.cc -I<ort>/include -L<ort>/lib -Wl,-rpath,<ort>/lib -lonnxruntime -o run_model
//
// The steps that matter for a deployment are in main(): register the library on the
// session options, create the session, run.
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// A tensor read from or written to a .npy file (format version 1.0/2.0, little-endian).
struct Npy {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

struct TypeName {
  ONNXTensorElementDataType type;
  const char* descr;
  size_t size;
};

constexpr TypeName kTypes[] = {
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "<f4", 4},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "<f2", 2},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "<i8", 8},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "<i4", 4},
};

const TypeName& type_of(ONNXTensorElementDataType type) {
  for (const TypeName& t : kTypes) {
    if (t.type == type) return t;
  }
  throw std::runtime_error("unsupported element type " + std::to_string(type) + " (float32, float16, int64, int32)");
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

std::string header_value(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
  size_t begin = header.find(':', at) + 1;
  while (header[begin] == ' ') ++begin;
  const char close = header[begin] == '(' ? ')' : header[begin] == '\'' ? '\'' : ',';
  const size_t end = header.find(close, begin + 1);
  return header.substr(begin, end - begin + (close == ',' ? 0 : 1));
}

Npy read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_length = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_length = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_length = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_length, '\0');
  in.read(&header[0], header_length);
  if (header_value(header, "fortran_order") != "False") throw std::runtime_error(path + ": Fortran order");
  Npy npy;
  const std::string descr = header_value(header, "descr");
  for (const TypeName& t : kTypes) {
    if (descr == std::string("'") + t.descr + "'") npy.type = t.type;
  }
  if (npy.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) throw std::runtime_error(path + ": dtype " + descr);
  std::string dims = header_value(header, "shape");
  for (char& c : dims) c = (c == '(' || c == ')' || c == ',') ? ' ' : c;
  std::istringstream stream(dims);
  for (int64_t d; stream >> d;) npy.shape.push_back(d);
  npy.data.resize(static_cast<size_t>(element_count(npy.shape)) * type_of(npy.type).size);
  in.read(npy.data.data(), static_cast<std::streamsize>(npy.data.size()));
  if (!in) throw std::runtime_error(path + ": truncated");
  return npy;
}

void write_npy(const std::string& path, const Npy& npy) {
  std::string shape = "(";
  for (int64_t d : npy.shape) shape += std::to_string(d) + ",";
  shape += ")";
  std::string header = std::string("{'descr': '") + type_of(npy.type).descr +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  const uint16_t length = static_cast<uint16_t>(header.size());
  const char prefix[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<char>(length & 0xFF),
                           static_cast<char>(length >> 8)};
  out.write(prefix, 10);
  out << header;
  out.write(npy.data.data(), static_cast<std::streamsize>(npy.data.size()));
  if (!out) throw std::runtime_error(path + ": cannot write");
}

void print_output(const std::string& name, const Npy& npy) {
  std::cout << name << " " << type_of(npy.type).descr << " [";
  for (size_t i = 0; i < npy.shape.size(); ++i) std::cout << (i ? "," : "") << npy.shape[i];
  std::cout << "]";
  const int64_t shown = std::min<int64_t>(element_count(npy.shape), 6);
  for (int64_t i = 0; i < shown; ++i) {
    if (npy.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      float v;
      std::memcpy(&v, npy.data.data() + i * 4, 4);
      std::printf(" %.9g", v);
      std::fflush(stdout);
    } else if (npy.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      int64_t v;
      std::memcpy(&v, npy.data.data() + i * 8, 8);
      std::cout << " " << v;
    }
  }
  std::cout << (element_count(npy.shape) > shown ? " ..." : "") << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.onnx LIBRARY.so [INPUT.npy ...] [--save DIR]\n";
    return 2;
  }
  std::vector<std::string> input_files;
  std::string save_dir;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--save" && i + 1 < argc) {
      save_dir = argv[++i];
    } else {
      input_files.emplace_back(argv[i]);
    }
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "lmul-onnx-example");
    Ort::SessionOptions options;
    options.RegisterCustomOpsLibrary(argv[2]);  // the lmul ops: this is all a host needs to add
    Ort::Session session(env, argv[1], options);

    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<Ort::AllocatedStringPtr> names;
    std::vector<const char*> input_names, output_names;
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      names.push_back(session.GetInputNameAllocated(i, allocator));
      input_names.push_back(names.back().get());
    }
    for (size_t i = 0; i < session.GetOutputCount(); ++i) {
      names.push_back(session.GetOutputNameAllocated(i, allocator));
      output_names.push_back(names.back().get());
    }
    if (input_files.size() != input_names.size()) {
      std::cerr << "the model has " << input_names.size() << " inputs, " << input_files.size() << " files given\n";
      return 2;
    }

    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Npy> inputs;
    std::vector<Ort::Value> values;
    for (const std::string& file : input_files) inputs.push_back(read_npy(file));
    for (Npy& npy : inputs) {
      values.push_back(Ort::Value::CreateTensor(memory, npy.data.data(), npy.data.size(), npy.shape.data(),
                                                npy.shape.size(), npy.type));
    }
    std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, input_names.data(), values.data(),
                                                  values.size(), output_names.data(), output_names.size());

    for (size_t i = 0; i < outputs.size(); ++i) {
      const Ort::TensorTypeAndShapeInfo info = outputs[i].GetTensorTypeAndShapeInfo();
      Npy npy;
      npy.type = info.GetElementType();
      npy.shape = info.GetShape();
      const auto* raw = static_cast<const char*>(outputs[i].GetTensorRawData());
      npy.data.assign(raw, raw + info.GetElementCount() * type_of(npy.type).size);
      print_output(output_names[i], npy);
      if (!save_dir.empty()) write_npy(save_dir + "/output_" + std::to_string(i) + ".npy", npy);
    }
  } catch (const std::exception& error) {  // Ort::Exception included
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
