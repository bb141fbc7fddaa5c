// dexrt::Error -> the Python hierarchy defined in dexrt/_errors.py (one base: dexrt.DexrtError).
#include <exception>

#include "dexrt/error.h"
#include "register.h"

namespace py = pybind11;

namespace dexrt {

void register_errors(py::module_& /*m*/) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      const char* name = e.kind() == ErrorKind::Input ? "InputError" : "EngineError";
      py::set_error(py::module_::import("dexrt._errors").attr(name), e.what());
    }
  });
}

}  // namespace dexrt
