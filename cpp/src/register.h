// One registration function per binding area, called from module.cpp.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>

namespace dexrt {

void register_errors(pybind11::module_& m);
// The Python exception (an instance of the dexrt._errors class for its kind) for a C++ exception.
pybind11::object python_exception(std::exception_ptr error);
void register_engine(pybind11::module_& m);
void register_drr(pybind11::module_& m);
void register_cuda(pybind11::module_& m);  // also the CPU pre/post as _core.prepost

}  // namespace dexrt
