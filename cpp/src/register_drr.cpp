// Bindings for the DRR projector (dexrt::drr). numpy in, numpy out; the GIL is released while rays are traced.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "dexrt/drr.h"
#include "dexrt/error.h"
#include "register.h"

namespace py = pybind11;

namespace dexrt {

namespace {

using drr::ConeBeam;
using drr::Vec3;

void require_input(bool ok, const std::string& message) {
  if (!ok) throw Error(ErrorKind::Input, message);
}

bool is_c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

py::array_t<double> vec(const Vec3& v) {
  py::array_t<double> a(3);
  for (py::ssize_t i = 0; i < 3; ++i) a.mutable_at(i) = v[static_cast<size_t>(i)];
  return a;
}

py::dict frame(const ConeBeam& view) {
  const drr::Frame f = drr::make_frame(view);
  py::dict d;
  d["source"] = vec(f.source);
  d["origin"] = vec(f.origin);
  d["col_step"] = vec(f.col_step);
  d["row_step"] = vec(f.row_step);
  d["beam"] = vec(f.beam);
  return d;
}

// volume (n0, n1, n2) or (n0, n1, n2, C) float32 C-contiguous; affine (3, 4) or (4, 4) float64.
py::array_t<float> project(const py::array& volume, const py::array& affine, const std::vector<ConeBeam>& views,
                           int threads) {
  require_input(py::isinstance<py::array_t<float>>(volume) && is_c_contiguous(volume),
                "volume must be a C-contiguous float32 array");
  require_input(volume.ndim() == 3 || volume.ndim() == 4,
                "volume must be (n0, n1, n2) or (n0, n1, n2, channels), got " + std::to_string(volume.ndim()) + "-D");
  auto aff = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(affine);
  require_input(aff && aff.ndim() == 2 && (aff.shape(0) == 3 || aff.shape(0) == 4) && aff.shape(1) == 4,
                "affine must be a (3, 4) or (4, 4) array");
  require_input(!views.empty(), "at least one view is needed");

  drr::Volume v;
  v.data = static_cast<const float*>(volume.data());
  for (int a = 0; a < 3; ++a) v.shape[static_cast<size_t>(a)] = volume.shape(a);
  v.channels = volume.ndim() == 4 ? volume.shape(3) : 1;
  for (py::ssize_t r = 0; r < 3; ++r)
    for (py::ssize_t c = 0; c < 4; ++c) v.affine[static_cast<size_t>(r)][static_cast<size_t>(c)] = aff.at(r, c);

  const auto n = static_cast<py::ssize_t>(views.size());
  py::array_t<float> out({n, static_cast<py::ssize_t>(v.channels), static_cast<py::ssize_t>(views[0].rows),
                          static_cast<py::ssize_t>(views[0].cols)});  // (N, C, H, W) value x mm
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    drr::project(v, views, dst, threads);
  }
  return out;
}

// line (C, ...) float32; mu (C, E); weights (S, E) -> (S, ...) float64.
py::array_t<double> polyenergetic(const py::array& line, const py::array& mu, const py::array& weights, int threads) {
  require_input(py::isinstance<py::array_t<float>>(line) && is_c_contiguous(line) && line.ndim() >= 1,
                "line integrals must be a C-contiguous float32 array (channels, ...)");
  auto m = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(mu);
  auto w = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(weights);
  require_input(m && m.ndim() == 2 && m.shape(0) == line.shape(0),
                "mu must be (channels, energies) with one row per line-integral channel");
  require_input(w && w.ndim() == 2 && w.shape(1) == m.shape(1), "weights must be (sums, energies)");
  const int64_t channels = line.shape(0);
  const int64_t pixels = channels > 0 ? line.size() / channels : 0;
  std::vector<py::ssize_t> shape{w.shape(0)};
  for (py::ssize_t i = 1; i < line.ndim(); ++i) shape.push_back(line.shape(i));
  py::array_t<double> out(shape);
  const float* src = static_cast<const float*>(line.data());
  double* dst = out.mutable_data();
  const double* mp = m.data();
  const double* wp = w.data();
  const int64_t energies = m.shape(1), sums = w.shape(0);
  {
    py::gil_scoped_release release;
    drr::polyenergetic(src, channels, pixels, mp, energies, wp, sums, dst, threads);
  }
  return out;
}

Vec3 to_vec3(const std::vector<double>& v) {
  if (v.size() != 3) throw py::value_error("iso_mm must have 3 values, got " + std::to_string(v.size()));
  return {v[0], v[1], v[2]};
}

}  // namespace

void register_drr(py::module_& m) {
  py::class_<ConeBeam>(m, "ConeBeam", "One kV imager view: cone-beam geometry in millimetres and degrees.")
      .def(py::init([](double sid_mm, double sdd_mm, int64_t rows, int64_t cols, double pixel_row_mm,
                       double pixel_col_mm, double gantry_deg, double couch_deg, double tilt_deg,
                       const std::vector<double>& iso_mm) {
             ConeBeam g;
             g.sid_mm = sid_mm;
             g.sdd_mm = sdd_mm;
             g.rows = rows;
             g.cols = cols;
             g.pixel_row_mm = pixel_row_mm;
             g.pixel_col_mm = pixel_col_mm;
             g.gantry_deg = gantry_deg;
             g.couch_deg = couch_deg;
             g.tilt_deg = tilt_deg;
             g.iso_mm = to_vec3(iso_mm);
             drr::make_frame(g);  // validates now, so a bad geometry fails where it is built
             return g;
           }),
           py::kw_only(), py::arg("sid_mm"), py::arg("sdd_mm"), py::arg("rows"), py::arg("cols"),
           py::arg("pixel_row_mm"), py::arg("pixel_col_mm"), py::arg("gantry_deg") = 0.0, py::arg("couch_deg") = 0.0,
           py::arg("tilt_deg") = 0.0, py::arg("iso_mm") = std::vector<double>{0.0, 0.0, 0.0})
      .def_readonly("sid_mm", &ConeBeam::sid_mm)
      .def_readonly("sdd_mm", &ConeBeam::sdd_mm)
      .def_readonly("rows", &ConeBeam::rows)
      .def_readonly("cols", &ConeBeam::cols)
      .def_readonly("pixel_row_mm", &ConeBeam::pixel_row_mm)
      .def_readonly("pixel_col_mm", &ConeBeam::pixel_col_mm)
      .def_readonly("gantry_deg", &ConeBeam::gantry_deg)
      .def_readonly("couch_deg", &ConeBeam::couch_deg)
      .def_readonly("tilt_deg", &ConeBeam::tilt_deg)
      .def_property_readonly("iso_mm", [](const ConeBeam& g) { return vec(g.iso_mm); })
      .def("frame", &frame, "Source, pixel (0, 0) centre, column/row steps and beam direction, world mm.");

  m.def("drr_project", &project, py::arg("volume"), py::arg("affine"), py::arg("views"), py::arg("threads") = 0,
        "Siddon line integrals (value x mm) of each channel: -> (n_views, channels, rows, cols) float32.");
  m.def("drr_polyenergetic", &polyenergetic, py::arg("line"), py::arg("mu"), py::arg("weights"),
        py::arg("threads") = 0,
        "out[s, ...] = sum_e weights[s, e] * exp(-sum_c mu[c, e] * line[c, ...]) -> (sums, ...) float64.");
}

}  // namespace dexrt
