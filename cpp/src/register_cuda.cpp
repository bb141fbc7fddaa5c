// _core.cuda: what this build and this machine offer on NVIDIA GPUs, and the CUDA pre/post kernels bound for
// tests. _core.tensorrt: whether the TensorRT backend is built, and the TensorRT it loaded.
// _core.prepost: the CPU pre/post, the reference the kernels are compared with bit for bit.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dexrt/error.h"
#include "dexrt/prepost.h"
#include "dexrt/robust_range.h"
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

// Per-image windows as Python passes them: (lo, span, inv_span) each, or None for the identity of all n.
using OwnWindows = std::optional<std::vector<std::tuple<float, float, float>>>;

std::vector<ImageWindow> image_windows(const OwnWindows& given, int64_t n) {
  std::vector<ImageWindow> windows(static_cast<size_t>(n));
  if (!given) return windows;
  if (static_cast<int64_t>(given->size()) != n) {
    throw py::value_error(std::to_string(given->size()) + " image windows for " + std::to_string(n) + " images");
  }
  for (int64_t b = 0; b < n; ++b) {
    const auto& [lo, span, inv_span] = (*given)[static_cast<size_t>(b)];
    windows[static_cast<size_t>(b)] = ImageWindow{lo, span, inv_span};
  }
  return windows;
}

template <typename T>
void cpu_preprocess_typed(const py::array& images, const PadGeometry& g, Window w,
                          const std::vector<ImageWindow>& own, float* net) {
  const auto src = py::array_t<T, py::array::c_style>::ensure(images);
  const int64_t plane = g.height * g.width, padded_plane = g.padded_height * g.padded_width;
  for (int64_t b = 0; b < src.shape(0); ++b) {
    preprocess_image(src.data() + b * plane, g, w, own[static_cast<size_t>(b)], net + b * padded_plane);
  }
}

py::array cpu_preprocess(const py::array& images, WindowPair window, int64_t size_multiple,
                         const OwnWindows& image_window_list) {
  require_ndim(images, 3, "images");
  const int64_t n = images.shape(0);
  const PadGeometry g = plan_padding(images.shape(1), images.shape(2), size_multiple);
  py::array_t<float> net({n, int64_t{1}, g.padded_height, g.padded_width});  // (N, 1, Hp, Wp)
  const Window w{window.first, window.second};
  const std::vector<ImageWindow> own = image_windows(image_window_list, n);
  if (py::isinstance<py::array_t<uint16_t>>(images)) {
    cpu_preprocess_typed<uint16_t>(images, g, w, own, net.mutable_data());
  } else if (py::isinstance<py::array_t<float>>(images)) {
    cpu_preprocess_typed<float>(images, g, w, own, net.mutable_data());
  } else {
    throw Error(ErrorKind::Input, "images must be uint16 or float32, got " + dtype_name(images));
  }
  return net;
}

template <typename T>
py::array cpu_postprocess_typed(const float* net, int64_t n, int64_t channels, const PadGeometry& g,
                                const std::vector<Window>& windows, const std::vector<ImageWindow>& own,
                                const std::vector<char>& offsets) {
  py::array_t<T> out({channels, n, g.height, g.width});  // (C, N, H, W)
  const int64_t plane = g.height * g.width, padded_plane = g.padded_height * g.padded_width;
  for (int64_t b = 0; b < n; ++b) {
    postprocess_image(net + b * channels * padded_plane, g, windows, own[static_cast<size_t>(b)], offsets,
                      out.mutable_data() + b * plane, n * plane);
  }
  return out;
}

std::vector<char> offset_flags(const std::vector<bool>& offsets, int64_t channels) {
  if (!offsets.empty() && static_cast<int64_t>(offsets.size()) != channels) {
    throw py::value_error(std::to_string(offsets.size()) + " offset flags for " + std::to_string(channels) +
                          " channels");
  }
  return std::vector<char>(offsets.begin(), offsets.end());
}

py::array cpu_postprocess(const py::array_t<float, py::array::c_style | py::array::forcecast>& net, int64_t height,
                          int64_t width, const std::vector<WindowPair>& windows, int64_t size_multiple,
                          const std::string& dtype, const OwnWindows& image_window_list,
                          const std::vector<bool>& offsets) {
  require_ndim(net, 4, "the network output");
  const PadGeometry g = output_geometry(net, height, width, size_multiple);
  const int64_t n = net.shape(0), c = net.shape(1);
  if (static_cast<int64_t>(windows.size()) != c) {
    throw py::value_error(std::to_string(windows.size()) + " windows for " + std::to_string(c) + " channels");
  }
  const std::vector<ImageWindow> own = image_windows(image_window_list, n);
  const std::vector<char> flags = offset_flags(offsets, c);
  if (dtype == "uint16") return cpu_postprocess_typed<uint16_t>(net.data(), n, c, g, to_windows(windows), own, flags);
  if (dtype == "float32") return cpu_postprocess_typed<float>(net.data(), n, c, g, to_windows(windows), own, flags);
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
// n image windows uploaded to the device on `stream`, or none (the identity) when not given.
struct DeviceWindows {
  cuda::DeviceBuffer buffer;
  const ImageWindow* get() const { return static_cast<const ImageWindow*>(buffer.get()); }
};

std::unique_ptr<DeviceWindows> upload_windows(const OwnWindows& given, int64_t n, cudaStream_t stream) {
  if (!given) return nullptr;
  const std::vector<ImageWindow> own = image_windows(given, n);
  auto d = std::make_unique<DeviceWindows>();
  d->buffer.reserve(own.size() * sizeof(ImageWindow));
  cuda::check(cudaMemcpyAsync(d->buffer.get(), own.data(), own.size() * sizeof(ImageWindow), cudaMemcpyHostToDevice,
                              stream),
              "upload (windows)");
  cuda::check(cudaStreamSynchronize(stream), "upload (windows)");  // `own` is pageable and goes out of scope
  return d;
}

py::array gpu_preprocess(const py::array& images, WindowPair window, int64_t size_multiple,
                         const std::string& net_dtype, const OwnWindows& image_window_list) {
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
  const auto own = upload_windows(image_window_list, n, stream.get());
  cuda::preprocess(d_in.get(), in_type, n, g, Window{window.first, window.second}, own ? own->get() : nullptr,
                   d_out.get(), net_type, stream.get());
  cuda::check(cudaMemcpyAsync(host_out, d_out.get(), out_bytes, cudaMemcpyDeviceToHost, stream.get()), "download");
  stream.synchronize();
  return net;
}

py::array gpu_postprocess(const py::array& net_output, int64_t height, int64_t width,
                          const std::vector<WindowPair>& windows, int64_t size_multiple, const std::string& dtype,
                          const OwnWindows& image_window_list, const std::vector<bool>& offsets) {
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
  const std::vector<char> flags = offset_flags(offsets, c);
  py::gil_scoped_release release;
  cuda::Stream stream;
  cuda::DeviceBuffer d_in(in_bytes), d_out(out_bytes);
  cuda::check(cudaMemcpyAsync(d_in.get(), host_in, in_bytes, cudaMemcpyHostToDevice, stream.get()), "upload");
  const auto own = upload_windows(image_window_list, n, stream.get());
  cuda::postprocess(d_in.get(), net_type, n, c, g, w, own ? own->get() : nullptr, flags, d_out.get(), out_type,
                    stream.get());
  cuda::check(cudaMemcpyAsync(host_out, d_out.get(), out_bytes, cudaMemcpyDeviceToHost, stream.get()), "download");
  stream.synchronize();
  return out;
}

// (N, H, W) host images -> their robust ranges, sampled on the GPU (the path of images that stay there).
py::list gpu_robust_ranges(const py::array& images) {
  require_ndim(images, 3, "images");
  const py::array src = py::array::ensure(images, py::array::c_style);
  const cuda::DType type = dtype_of(src);
  const int64_t n = src.shape(0), h = src.shape(1), w = src.shape(2);
  const SampleGrid grid = sample_grid(h, w);
  std::vector<float> samples(static_cast<size_t>(n * grid.size()));
  const void* host_in = src.data();
  const auto in_bytes = static_cast<size_t>(src.nbytes());
  {
    py::gil_scoped_release release;
    cuda::Stream stream;
    cuda::DeviceBuffer d_in(in_bytes), d_samples(samples.size() * sizeof(float));
    cuda::check(cudaMemcpyAsync(d_in.get(), host_in, in_bytes, cudaMemcpyHostToDevice, stream.get()), "upload");
    cuda::gather_samples(d_in.get(), type, n, h, w, grid, static_cast<float*>(d_samples.get()), stream.get());
    cuda::check(cudaMemcpyAsync(samples.data(), d_samples.get(), samples.size() * sizeof(float),
                                cudaMemcpyDeviceToHost, stream.get()),
                "download");
    stream.synchronize();
  }
  py::list ranges;
  for (int64_t b = 0; b < n; ++b) {
    std::vector<double> sample(samples.begin() + b * grid.size(), samples.begin() + (b + 1) * grid.size());
    const Range r = percentile_range(sample);
    ranges.append(py::make_tuple(r.lo, r.hi));
  }
  return ranges;
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
         py::arg("image_windows") = py::none(),
         "(N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32 network input. image_windows: per image "
         "(lo, span, inv_span), applied before the window (default: none).");
  pp.def("postprocess", &cpu_postprocess, py::arg("net"), py::arg("height"), py::arg("width"), py::arg("windows"),
         py::arg("size_multiple"), py::arg("dtype"), py::arg("image_windows") = py::none(),
         py::arg("offsets") = std::vector<bool>{},
         "(N, C, Hp, Wp) float32 -> (C, N, H, W) uint16/float32; image_windows applied after the windows, channel c "
         "adding the image's lo where offsets[c].");
  pp.def(
      "image_window",
      [](double lo, double hi) {
        const ImageWindow w = image_window(Range{lo, hi});
        return py::make_tuple(w.lo, w.span, w.inv_span);
      },
      py::arg("lo"), py::arg("hi"), "(lo, span, inv_span) as float32 numbers of a robust range (lo, hi).");

  py::module_ cu = m.def_submodule("cuda", "CUDA support in this build, and the CUDA pre/post kernels.");
#ifdef DEXRT_WITH_CUDA
  cu.attr("compiled") = true;
  cu.attr("max_channels") = cuda::kMaxChannels;
  cu.def("robust_ranges", &gpu_robust_ranges, py::arg("images"),
         "(N, H, W) uint16/float32 -> [(lo, hi)] per image, the pixels sampled on the GPU (as for device images).");
  cu.def("status", &status, "CUDA runtime/driver versions and device count; `error` says why no device is usable.");
  cu.def("devices", &devices, "The usable CUDA devices: index, name, compute_capability, memory.");
  cu.def("preprocess", &gpu_preprocess, py::arg("images"), py::arg("window"), py::arg("size_multiple"),
         py::arg("net_dtype") = "float32", py::arg("image_windows") = py::none(),
         "(N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32/float16, on the GPU (host arrays in and out).");
  cu.def("postprocess", &gpu_postprocess, py::arg("net"), py::arg("height"), py::arg("width"), py::arg("windows"),
         py::arg("size_multiple"), py::arg("dtype"), py::arg("image_windows") = py::none(),
         py::arg("offsets") = std::vector<bool>{},
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
