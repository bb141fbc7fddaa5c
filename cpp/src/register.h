// One registration function per binding area, called from module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace dexrt {

void register_errors(pybind11::module_& m);
void register_engine(pybind11::module_& m);
void register_cuda(pybind11::module_& m);  // also the CPU pre/post as _core.prepost

}  // namespace dexrt
