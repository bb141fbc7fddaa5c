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

// One image of a batch: where to read it and where to write its output planes. The images of a batch need
// not be adjacent in memory, so a batch can be gathered from separate requests without copying.
template <typename T>
struct ImageSlot {
  const T* input = nullptr;    // (H, W)
  T* output = nullptr;         // channel 0's (H, W) plane; channel c at output + c * channel_stride
  int64_t channel_stride = 0;  // in elements
};

// Wall time of each stage of one batch, in microseconds.
struct StageTimes {
  double pre_us = 0, infer_us = 0, post_us = 0;
};

class Engine {
 public:
  Engine(std::unique_ptr<Backend> backend, Contract contract);

  const Backend& backend() const { return *backend_; }
  const Contract& contract() const { return contract_; }
  int64_t output_channels() const { return backend_->output_channels(); }

  // images: (N, H, W) contiguous; out: (C, N, H, W) contiguous. Thread-safe.
  template <typename T>
  StageTimes infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const;

  // A batch of n same-sized images, each read from and written to its own slot. Thread-safe.
  template <typename T>
  StageTimes run(const ImageSlot<T>* slots, int64_t n, int64_t height, int64_t width) const;

  // Images already in CUDA device memory (batch.device_data), for backends with a device pipeline; out:
  // (C, N, H, W) host memory of the batch's pixel type. Thread-safe.
  StageTimes infer_device(const ImageBatch& batch, void* out) const;

 private:
  std::unique_ptr<Backend> backend_;
  Contract contract_;
};

}  // namespace dexrt
