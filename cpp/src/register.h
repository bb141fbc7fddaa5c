// One registration function per binding area, called from module.cpp.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "dexrt/prepost.h"

namespace dexrt {

void register_errors(pybind11::module_& m);
// The Python exception (an instance of the dexrt._errors class for its kind) for a C++ exception.
pybind11::object python_exception(std::exception_ptr error);
void register_engine(pybind11::module_& m);
void register_contract(pybind11::module_& m);  // robust range, working size, resampling
void register_drr(pybind11::module_& m);
void register_cuda(pybind11::module_& m);  // also the CPU pre/post as _core.prepost

// Helpers shared by the binding areas.
using WindowPair = std::pair<float, float>;  // (lo, hi) as Python passes it

inline std::vector<Window> to_windows(const std::vector<WindowPair>& pairs) {
  std::vector<Window> windows;
  for (const auto& w : pairs) windows.push_back(Window{w.first, w.second});
  return windows;
}

inline std::string dtype_name(const pybind11::array& a) { return pybind11::str(a.dtype()).cast<std::string>(); }

}  // namespace dexrt
