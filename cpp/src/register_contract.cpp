// The value contract's numbers that Python reads from their one home here: the robust range (robust_range.h),
// the working size at a model's pixel spacing and its limits (fullres.h), and the resampling (resample.h).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>

#include "dexrt/error.h"
#include "dexrt/fullres.h"
#include "dexrt/resample.h"
#include "dexrt/robust_range.h"
#include "register.h"

namespace py = pybind11;

namespace dexrt {

namespace {

void require_image(const py::array& image) {
  if (image.ndim() != 2 || image.shape(0) <= 0 || image.shape(1) <= 0) {
    throw Error(ErrorKind::Input, "expected one non-empty (H, W) image, got " + std::to_string(image.ndim()) + "-D");
  }
}

template <typename T>
Range range_of(const py::array& image) {
  const auto a = py::array_t<T, py::array::c_style>::ensure(image);
  const T* data = a.data();
  const int64_t h = a.shape(0), w = a.shape(1);
  py::gil_scoped_release release;
  return robust_range(data, h, w);
}

py::tuple range(const py::array& image) {
  require_image(image);
  Range r;
  if (py::isinstance<py::array_t<uint16_t>>(image)) {
    r = range_of<uint16_t>(image);
  } else if (py::isinstance<py::array_t<float>>(image)) {
    r = range_of<float>(image);
  } else {
    r = range_of<double>(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(image));
  }
  return py::make_tuple(r.lo, r.hi);
}

template <typename T>
py::array resize_typed(const py::array& image, int64_t height, int64_t width) {
  const auto a = py::array_t<T, py::array::c_style>::ensure(image);
  py::array_t<float> out({height, width});
  const T* src = a.data();
  float* dst = out.mutable_data();
  const int64_t h = a.shape(0), w = a.shape(1);
  py::gil_scoped_release release;
  resize_image(src, h, w, dst, height, width, 0);
  return out;
}

py::array resize(const py::array& image, int64_t height, int64_t width) {
  require_image(image);
  if (height <= 0 || width <= 0) throw py::value_error("the size must be positive");
  if (py::isinstance<py::array_t<uint16_t>>(image)) return resize_typed<uint16_t>(image, height, width);
  return resize_typed<float>(py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(image), height,
                             width);
}

}  // namespace

void register_contract(py::module_& m) {
  py::dict normalisation;
  normalisation["method"] = "robust-percentile";
  normalisation["percentiles"] = py::make_tuple(kRangeLowPercentile, kRangeHighPercentile);
  normalisation["central_fraction"] = kRangeCentralFraction;
  normalisation["max_samples"] = kRangeMaxSamples;
  m.attr("normalisation") = normalisation;
  m.attr("max_working_side") = kMaxWorkingSide;
  m.attr("resample_tolerance") = kResampleTolerance;
  m.def("robust_range", &range, py::arg("image"),
        "(lo, hi) of one (H, W) image: the 1st and 99th percentiles of its central 80 % (sampled), as a normalised "
        "engine maps it. uint16, float32 or any real dtype (as float64).");
  m.def(
      "working_size",
      [](int64_t height, int64_t width, WindowPair spacing_mm, double model_spacing_mm) {
        const Size2 s = working_size(height, width, spacing_mm.first, spacing_mm.second, model_spacing_mm);
        return py::make_tuple(s.height, s.width);
      },
      py::arg("height"), py::arg("width"), py::arg("spacing_mm"), py::arg("model_spacing_mm"),
      "(h, w) an (H, W) image of (row, col) spacing runs at for a model of model_spacing_mm: (H, W) when within "
      "the resampling tolerance.");
  m.def("resize", &resize, py::arg("image"), py::arg("height"), py::arg("width"),
        "(H, W) -> (height, width) float32: area averaging where it shrinks, linear interpolation where it grows "
        "(the full-resolution path's resampling).");
}

}  // namespace dexrt
