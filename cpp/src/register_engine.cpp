// Bindings for dexrt::Engine. The GIL is released while an engine builds and while it infers.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dexrt/engine.h"
#include "dexrt/error.h"
#include "dexrt/openvino_backend.h"
#ifdef DEXRT_WITH_TENSORRT
#include "dexrt/tensorrt_backend.h"
#endif
#include "register.h"

namespace py = pybind11;

namespace dexrt {

namespace {

using WindowPair = std::pair<float, float>;

std::unique_ptr<Engine> make_engine(const std::string& backend, const std::string& device, const py::bytes& model,
                                    const py::bytes& weights, WindowPair input_window,
                                    const std::vector<WindowPair>& output_windows, int64_t size_multiple,
                                    const std::string& performance_hint, int num_threads, int cuda_device,
                                    int contexts, bool cuda_graphs) {
  Contract contract;
  contract.input = Window{input_window.first, input_window.second};
  for (const auto& w : output_windows) contract.outputs.push_back(Window{w.first, w.second});
  contract.size_multiple = size_multiple;
#ifdef DEXRT_WITH_TENSORRT
  if (backend == "tensorrt") {  // `model` is the serialized plan; `weights` is unused
    TensorRtOptions options{cuda_device, contexts, cuda_graphs};
    std::string plan = model;
    py::gil_scoped_release release;
    return std::make_unique<Engine>(std::make_unique<TensorRtBackend>(plan, options), std::move(contract));
  }
  const char* const available = "openvino, tensorrt";
#else
  static_cast<void>(cuda_device);  // only the TensorRT backend uses these
  static_cast<void>(contexts);
  static_cast<void>(cuda_graphs);
  const char* const available = "openvino";
#endif
  if (backend != "openvino") {
    throw py::value_error("unknown backend '" + backend + "' (this build has: " + available + ")");
  }
  OpenVinoOptions options;
  options.device = device;
  options.performance_hint = performance_hint;
  options.num_threads = num_threads;
  std::string xml = model;  // copies out of the Python objects while the GIL is held
  std::string bin = weights;
  py::gil_scoped_release release;
  return std::make_unique<Engine>(std::make_unique<OpenVinoBackend>(xml, bin, std::move(options)),
                                  std::move(contract));
}

template <typename T>
py::array infer_typed(const Engine& engine, const py::array& images) {
  // A C-contiguous array is used in place; any other layout is copied once into a contiguous buffer.
  auto contiguous = py::array_t<T, py::array::c_style>::ensure(images);
  const int64_t n = images.shape(0), h = images.shape(1), w = images.shape(2);
  const int64_t c = engine.backend().output_channels();
  py::array_t<T> out({c, n, h, w});  // (C, N, H, W), the input's dtype
  const T* src = contiguous.data();
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    engine.infer(src, n, h, w, dst);
  }
  return out;
}

// Images already on the GPU, described by __cuda_array_interface__ (pointer, C-contiguous (N, H, W), stream).
py::array infer_device(const Engine& engine, uintptr_t pointer, int64_t n, int64_t height, int64_t width,
                       const std::string& dtype, uintptr_t stream) {
  if (dtype != "uint16" && dtype != "float32") {
    throw Error(ErrorKind::Input, "images must be uint16 or float32, got " + dtype);
  }
  const bool u16 = dtype == "uint16";
  const int64_t c = engine.backend().output_channels();
  py::array out = u16 ? py::array(py::array_t<uint16_t>({c, n, height, width}))
                      : py::array(py::array_t<float>({c, n, height, width}));  // (C, N, H, W) on the host
  const ImageBatch batch{reinterpret_cast<const void*>(pointer), u16 ? PixelType::UInt16 : PixelType::Float32,
                         n, height, width, true, stream};
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    engine.infer_device(batch, dst);
  }
  return out;
}

py::array infer(const Engine& engine, const py::array& images) {
  if (images.ndim() != 3) {
    throw Error(ErrorKind::Input, "images must be a 3-D array (N, H, W), got " + std::to_string(images.ndim()) +
                                      "-D");
  }
  if (py::isinstance<py::array_t<uint16_t>>(images)) return infer_typed<uint16_t>(engine, images);
  if (py::isinstance<py::array_t<float>>(images)) return infer_typed<float>(engine, images);
  throw Error(ErrorKind::Input, "images must be uint16 or float32 (native byte order), got " +
                                    py::str(images.dtype()).cast<std::string>());
}

}  // namespace

void register_engine(py::module_& m) {
  py::class_<Engine>(m, "Engine", "A network behind the value contract: (N, H, W) images -> (C, N, H, W) images.")
      .def(py::init(&make_engine), py::kw_only(), py::arg("backend"), py::arg("device"), py::arg("model"),
           py::arg("weights"), py::arg("input_window"), py::arg("output_windows"), py::arg("size_multiple"),
           py::arg("performance_hint") = "LATENCY", py::arg("num_threads") = 0, py::arg("cuda_device") = 0,
           py::arg("contexts") = 2, py::arg("cuda_graphs") = false)
      .def_property_readonly("backend", [](const Engine& e) { return e.backend().name(); })
      .def_property_readonly("device", [](const Engine& e) { return e.backend().device(); })
      .def_property_readonly("output_channels", [](const Engine& e) { return e.backend().output_channels(); })
      .def_property_readonly("size_multiple", [](const Engine& e) { return e.contract().size_multiple; })
      .def("infer", &infer, py::arg("images"),
           "(N, H, W) uint16 or float32 -> (C, N, H, W) of the same dtype. Releases the GIL.")
      .def("infer_device", &infer_device, py::arg("pointer"), py::arg("n"), py::arg("height"), py::arg("width"),
           py::arg("dtype"), py::arg("stream") = 0,
           "(N, H, W) images in CUDA device memory -> (C, N, H, W) host array. GPU backends only.");

  m.def(
      "pad_geometry",
      [](int64_t height, int64_t width, int64_t size_multiple) {
        const PadGeometry g = plan_padding(height, width, size_multiple);
        return py::make_tuple(g.padded_height, g.padded_width, g.top, g.left);
      },
      py::arg("height"), py::arg("width"), py::arg("size_multiple"),
      "(padded_height, padded_width, top, left) of an image inside the network input.");
}

}  // namespace dexrt
