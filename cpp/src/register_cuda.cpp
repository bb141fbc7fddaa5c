// _core.cuda: what this build and this machine offer on NVIDIA GPUs, and the CUDA pre/post kernels bound for
// tests. _core.tensorrt: whether the TensorRT backend is built, and the TensorRT it loaded.
// _core.prepost: the CPU pre/post, the reference the kernels are compared with bit for bit.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "dexrt/error.h"
#include "dexrt/prepost.h"
#include "register.h"
#ifdef DEXRT_WITH_CUDA
#include "dexrt/cuda/prepost.h"
#include "dexrt/cuda/runtime.h"
#endif
#ifdef DEXRT_WITH_TENSORRT
#include "dexrt/tensorrt_backend.h"
#endif

namespace py = pybind11;

namespace dexrt {

namespace {

void require_ndim(const py::array& a, int ndim, const char* what) {
  if (a.ndim() != ndim) {
    throw Error(ErrorKind::Input, std::string(what) + " must be " + std::to_string(ndim) + "-D, got " +
                                      std::to_string(a.ndim()) + "-D");
  }
}

// The padding the network output was made with: its (Hp, Wp) must be what (height, width) pads to.
PadGeometry output_geometry(const py::array& net, int64_t height, int64_t width, int64_t size_multiple) {
  const PadGeometry g = plan_padding(height, width, size_multiple);
  if (net.shape(2) != g.padded_height || net.shape(3) != g.padded_width) {
    throw Error(ErrorKind::Input, "a " + std::to_string(height) + "x" + std::to_string(width) + " image pads to " +
                                      std::to_string(g.padded_height) + "x" + std::to_string(g.padded_width) +
                                      ", the network output is " + std::to_string(net.shape(2)) + "x" +
                                      std::to_string(net.shape(3)));
  }
  return g;
}

template <typename T>
void cpu_preprocess_typed(const py::array& images, const PadGeometry& g, Window w, float* net) {
  const auto src = py::array_t<T, py::array::c_style>::ensure(images);
  const int64_t plane = g.height * g.width, padded_plane = g.padded_height * g.padded_width;
  for (int64_t b = 0; b < src.shape(0); ++b) preprocess_image(src.data() + b * plane, g, w, net + b * padded_plane);
}

py::array cpu_preprocess(const py::array& images, WindowPair window, int64_t size_multiple) {
  require_ndim(images, 3, "images");
  const int64_t n = images.shape(0);
  const PadGeometry g = plan_padding(images.shape(1), images.shape(2), size_multiple);
  py::array_t<float> net({n, int64_t{1}, g.padded_height, g.padded_width});  // (N, 1, Hp, Wp)
  const Window w{window.first, window.second};
  if (py::isinstance<py::array_t<uint16_t>>(images)) {
    cpu_preprocess_typed<uint16_t>(images, g, w, net.mutable_data());
  } else if (py::isinstance<py::array_t<float>>(images)) {
    cpu_preprocess_typed<float>(images, g, w, net.mutable_data());
  } else {
    throw Error(ErrorKind::Input, "images must be uint16 or float32, got " + dtype_name(images));
  }
  return net;
}

template <typename T>
py::array cpu_postprocess_typed(const float* net, int64_t n, int64_t channels, const PadGeometry& g,
                                const std::vector<Window>& windows) {
  py::array_t<T> out({channels, n, g.height, g.width});  // (C, N, H, W)
  const int64_t plane = g.height * g.width, padded_plane = g.padded_height * g.padded_width;
  for (int64_t b = 0; b < n; ++b) {
    postprocess_image(net + b * channels * padded_plane, g, windows, out.mutable_data() + b * plane, n * plane);
  }
  return out;
}

py::array cpu_postprocess(const py::array_t<float, py::array::c_style | py::array::forcecast>& net, int64_t height,
                          int64_t width, const std::vector<WindowPair>& windows, int64_t size_multiple,
                          const std::string& dtype) {
  require_ndim(net, 4, "the network output");
  const PadGeometry g = output_geometry(net, height, width, size_multiple);
  const int64_t n = net.shape(0), c = net.shape(1);
  if (static_cast<int64_t>(windows.size()) != c) {
    throw py::value_error(std::to_string(windows.size()) + " windows for " + std::to_string(c) + " channels");
  }
  if (dtype == "uint16") return cpu_postprocess_typed<uint16_t>(net.data(), n, c, g, to_windows(windows));
  if (dtype == "float32") return cpu_postprocess_typed<float>(net.data(), n, c, g, to_windows(windows));
  throw py::value_error("dtype must be 'uint16' or 'float32', got '" + dtype + "'");
}

#ifdef DEXRT_WITH_CUDA

cuda::DType dtype_of(const py::array& a) {
  const std::string t = dtype_name(a);
  if (t == "uint16") return cuda::DType::UInt16;
  if (t == "float32") return cuda::DType::Float32;
  if (t == "float16") return cuda::DType::Float16;
  throw Error(ErrorKind::Input, "unsupported dtype " + t);
}

cuda::DType dtype_named(const std::string& name) {
  if (name == "uint16") return cuda::DType::UInt16;
  if (name == "float32") return cuda::DType::Float32;
  if (name == "float16") return cuda::DType::Float16;
  throw py::value_error("unknown dtype '" + name + "'");
}

// Host arrays in, host arrays out: each call uploads, runs one kernel on its own stream and downloads.
py::array gpu_preprocess(const py::array& images, WindowPair window, int64_t size_multiple,
                         const std::string& net_dtype) {
  require_ndim(images, 3, "images");
  const py::array src = py::array::ensure(images, py::array::c_style);
  const cuda::DType in_type = dtype_of(src), net_type = dtype_named(net_dtype);
  const int64_t n = src.shape(0);
  const PadGeometry g = plan_padding(src.shape(1), src.shape(2), size_multiple);
  py::array net(py::dtype(net_dtype), std::vector<py::ssize_t>{n, 1, g.padded_height, g.padded_width});
  const void* host_in = src.data();
  void* host_out = net.mutable_data();
  const auto in_bytes = static_cast<size_t>(src.nbytes()), out_bytes = static_cast<size_t>(net.nbytes());
  py::gil_scoped_release release;
  cuda::Stream stream;
  cuda::DeviceBuffer d_in(in_bytes), d_out(out_bytes);
  cuda::check(cudaMemcpyAsync(d_in.get(), host_in, in_bytes, cudaMemcpyHostToDevice, stream.get()), "upload");
  cuda::preprocess(d_in.get(), in_type, n, g, Window{window.first, window.second}, d_out.get(), net_type, stream.get());
  cuda::check(cudaMemcpyAsync(host_out, d_out.get(), out_bytes, cudaMemcpyDeviceToHost, stream.get()), "download");
  stream.synchronize();
  return net;
}

py::array gpu_postprocess(const py::array& net_output, int64_t height, int64_t width,
                          const std::vector<WindowPair>& windows, int64_t size_multiple, const std::string& dtype) {
  require_ndim(net_output, 4, "the network output");
  const py::array net = py::array::ensure(net_output, py::array::c_style);
  const PadGeometry g = output_geometry(net, height, width, size_multiple);
  const cuda::DType net_type = dtype_of(net), out_type = dtype_named(dtype);
  const int64_t n = net.shape(0), c = net.shape(1);
  py::array out(py::dtype(dtype), std::vector<py::ssize_t>{c, n, height, width});  // (C, N, H, W)
  const void* host_in = net.data();
  void* host_out = out.mutable_data();
  const auto in_bytes = static_cast<size_t>(net.nbytes()), out_bytes = static_cast<size_t>(out.nbytes());
  const std::vector<Window> w = to_windows(windows);
  py::gil_scoped_release release;
  cuda::Stream stream;
  cuda::DeviceBuffer d_in(in_bytes), d_out(out_bytes);
  cuda::check(cudaMemcpyAsync(d_in.get(), host_in, in_bytes, cudaMemcpyHostToDevice, stream.get()), "upload");
  cuda::postprocess(d_in.get(), net_type, n, c, g, w, d_out.get(), out_type, stream.get());
  cuda::check(cudaMemcpyAsync(host_out, d_out.get(), out_bytes, cudaMemcpyDeviceToHost, stream.get()), "download");
  stream.synchronize();
  return out;
}

py::dict status() {
  const cuda::RuntimeStatus s = cuda::runtime_status();
  py::dict d;
  d["compiled"] = true;
  d["runtime_version"] = s.runtime_version;
  d["driver_version"] = s.driver_version;
  d["device_count"] = s.device_count;
  d["error"] = s.error.empty() ? py::object(py::none()) : py::object(py::str(s.error));
  return d;
}

py::list devices() {
  py::list list;
  const cuda::RuntimeStatus s = cuda::runtime_status();
  for (int i = 0; i < s.device_count; ++i) {
    const cuda::DeviceInfo info = cuda::device_info(i);
    py::dict d;
    d["index"] = info.index;
    d["name"] = info.name;
    d["compute_capability"] = std::to_string(info.major) + "." + std::to_string(info.minor);
    d["total_memory"] = info.total_memory;
    d["multiprocessors"] = info.multiprocessors;
    list.append(d);
  }
  return list;
}

#endif  // DEXRT_WITH_CUDA

}  // namespace

void register_cuda(py::module_& m) {
  py::module_ pp = m.def_submodule("prepost", "The CPU pre/post (value contract and mirror padding).");
  pp.def("preprocess", &cpu_preprocess, py::arg("images"), py::arg("window"), py::arg("size_multiple"),
         "(N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32 network input.");
  pp.def("postprocess", &cpu_postprocess, py::arg("net"), py::arg("height"), py::arg("width"), py::arg("windows"),
         py::arg("size_multiple"), py::arg("dtype"), "(N, C, Hp, Wp) float32 -> (C, N, H, W) uint16/float32.");

  py::module_ cu = m.def_submodule("cuda", "CUDA support in this build, and the CUDA pre/post kernels.");
#ifdef DEXRT_WITH_CUDA
  cu.attr("compiled") = true;
  cu.attr("max_channels") = cuda::kMaxChannels;
  cu.def("status", &status, "CUDA runtime/driver versions and device count; `error` says why no device is usable.");
  cu.def("devices", &devices, "The usable CUDA devices: index, name, compute_capability, memory.");
  cu.def("preprocess", &gpu_preprocess, py::arg("images"), py::arg("window"), py::arg("size_multiple"),
         py::arg("net_dtype") = "float32",
         "(N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32/float16, on the GPU (host arrays in and out).");
  cu.def("postprocess", &gpu_postprocess, py::arg("net"), py::arg("height"), py::arg("width"), py::arg("windows"),
         py::arg("size_multiple"), py::arg("dtype"),
         "(N, C, Hp, Wp) float32/float16 -> (C, N, H, W) uint16/float32, on the GPU (host arrays in and out).");
#else
  cu.attr("compiled") = false;
  cu.def("status", [] {
    py::dict d;
    d["compiled"] = false;
    d["runtime_version"] = 0;
    d["driver_version"] = 0;
    d["device_count"] = 0;
    d["error"] =
        "this build of dexrt has no CUDA support (built without the CUDA toolkit, or with DEXRT_WITH_CUDA=OFF)";
    return d;
  });
  cu.def("devices", [] { return py::list(); });
#endif

  py::module_ trt = m.def_submodule("tensorrt", "The TensorRT backend in this build.");
#ifdef DEXRT_WITH_TENSORRT
  trt.attr("compiled") = true;
  trt.def("library_version", &tensorrt_library_version, "The loaded libnvinfer's version, 'major.minor.patch'.");
  // TensorRT's warnings and errors -> logging.getLogger("dexrt.tensorrt"), from whichever thread logs them.
  set_tensorrt_log_sink([](int severity, const char* message) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      const int level = severity <= 1 ? 40 : 30;  // kINTERNAL_ERROR, kERROR -> ERROR; kWARNING -> WARNING
      py::module_::import("logging").attr("getLogger")("dexrt.tensorrt").attr("log")(level, message);
    } catch (const py::error_already_set&) {
      // Logging must never fail a TensorRT call.
    }
  });
#else
  trt.attr("compiled") = false;
  trt.def("library_version", []() -> py::object { return py::none(); });
#endif
}

}  // namespace dexrt
