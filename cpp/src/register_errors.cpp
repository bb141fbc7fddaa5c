// dexrt::Error -> the Python hierarchy defined in dexrt/_errors.py (one base: dexrt.DexrtError).
#include <exception>

#include "dexrt/error.h"
#include "register.h"

namespace py = pybind11;

namespace dexrt {

namespace {

py::object error_type(ErrorKind kind) {
  return py::module_::import("dexrt._errors").attr(kind == ErrorKind::Input ? "InputError" : "EngineError");
}

}  // namespace

void register_errors(py::module_& /*m*/) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::set_error(error_type(e.kind()), e.what());
    }
  });
}

py::object python_exception(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return error_type(e.kind())(e.what());
  } catch (const std::exception& e) {
    return error_type(ErrorKind::Engine)(e.what());
  } catch (...) {
    return error_type(ErrorKind::Engine)("unknown C++ exception");
  }
}

}  // namespace dexrt
