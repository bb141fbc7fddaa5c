// The one error type inside the C++ runtime. The Python boundary maps each kind onto the
// dexrt.DexrtError hierarchy (InputError, EngineError, BundleError).
#pragma once

#include <stdexcept>
#include <string>

namespace dexrt {

enum class ErrorKind {
  Input,   // the caller's images: dtype, rank, size, values
  Engine,  // the backend: compiling, running, resources
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace dexrt
