// Engine: the value contract and padding around a backend. (N, H, W) images in, (C, N, H, W) images out
// (one contiguous block per output kind), same dtype and size.
#pragma once

#include <cstdint>
#include <memory>

#include "dexrt/backend.h"

namespace dexrt {

class Engine {
 public:
  Engine(std::unique_ptr<Backend> backend, Contract contract);

  const Backend& backend() const { return *backend_; }
  const Contract& contract() const { return contract_; }
  int64_t output_channels() const { return backend_->output_channels(); }

  // A batch of same-sized images, each read from and written to its own place (see ImageBatch). Thread-safe.
  StageTimes run(const ImageBatch& batch) const;

  // images: (N, H, W) contiguous host memory; out: (C, N, H, W) contiguous. Thread-safe.
  template <typename T>
  StageTimes infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const;

  // Images already in CUDA device memory (batch.device_data, batch.images unused), for a backend with a device
  // pipeline; out: (C, N, H, W) host memory of the batch's pixel type. Thread-safe.
  StageTimes infer_device(const ImageBatch& batch, void* out) const;

 private:
  std::unique_ptr<Backend> backend_;
  Contract contract_;
};

}  // namespace dexrt
