// Engine: the value contract and padding around a backend. (N, H, W) images in, (C, N, H, W) images out
// (one contiguous block per output kind), same dtype and size.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dexrt/backend.h"
#include "dexrt/prepost.h"

namespace dexrt {

struct Contract {
  Window input;
  std::vector<Window> outputs;  // one per output channel
  int64_t size_multiple = 1;
};

class Engine {
 public:
  Engine(std::unique_ptr<Backend> backend, Contract contract);

  const Backend& backend() const { return *backend_; }
  const Contract& contract() const { return contract_; }

  // images: (N, H, W) contiguous; out: (C, N, H, W) contiguous. Thread-safe.
  template <typename T>
  void infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const;

  // Images already in device memory (batch.on_device): only backends with a device pipeline take them.
  // out: (C, N, H, W) host memory of the batch's pixel type. Thread-safe.
  void infer_device(const ImageBatch& batch, void* out) const;

 private:
  std::unique_ptr<Backend> backend_;
  Contract contract_;
};

}  // namespace dexrt
