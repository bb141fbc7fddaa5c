// dexrt._core: the compiled runtime. Each area registers its own bindings.
#include <pybind11/pybind11.h>

#include "register.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "dexrt's compiled runtime (private: use the `dexrt` package)";
  m.attr("__version__") = DEXRT_VERSION;
  dexrt::register_errors(m);
  dexrt::register_engine(m);
  dexrt::register_contract(m);
  dexrt::register_drr(m);
  dexrt::register_cuda(m);
}
