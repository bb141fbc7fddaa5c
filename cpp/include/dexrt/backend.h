// The small interface every inference backend implements (OpenVINO on the CPU; TensorRT on NVIDIA GPUs).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dexrt/prepost.h"

namespace dexrt {

struct BatchShape {
  int64_t n = 0, height = 0, width = 0;  // network input (N, 1, H, W); H and W already padded
};

enum class PixelType { UInt16, Float32 };

// A batch of n same-sized stored images for a backend that runs the pre/post itself (run_images).
struct ImageBatch {
  PixelType type = PixelType::UInt16;
  int64_t n = 0, height = 0, width = 0;
  // Images already in CUDA device memory, (N, H, W) C-contiguous (e.g. from __cuda_array_interface__);
  // null when they are in host memory and come through `gather`.
  const void* device_data = nullptr;
  uintptr_t stream = 0;  // with device_data: the producer's cudaStream_t to order after; 0 when none is needed
};

// Host-side movers for run_images, called with images [first, first + count) of the batch:
// gather writes their (count, H, W) pixels into `dst`; scatter reads their (C, count, H, W) results from `src`.
using Gather = std::function<void(int64_t first, int64_t count, void* dst)>;
using Scatter = std::function<void(int64_t first, int64_t count, const void* src)>;

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;    // "openvino", "tensorrt"
  virtual std::string device() const = 0;  // the device it resolved to, e.g. "CPU"
  virtual int64_t output_channels() const = 0;

  // Runs one batch. The backend owns the buffers: `fill` writes the (N, 1, H, W) f32 input in place and
  // `drain` reads the (N, C, H, W) f32 output in place, so no extra host copy is made.
  // Thread-safe: concurrent calls run on separate requests/contexts.
  virtual void run(const BatchShape& shape, const std::function<void(float*)>& fill,
                   const std::function<void(const float*)>& drain) = 0;

  // The whole pipeline, pre/post included, on the backend's own device. The host buffers handed to gather
  // and scatter belong to the backend (pinned memory for a GPU). Returns false when the backend has no such
  // path; the Engine then runs the CPU pre/post around run(). Thread-safe like run().
  virtual bool run_images(const ImageBatch& /*batch*/, const PadGeometry& /*g*/, Window /*input*/,
                          const std::vector<Window>& /*outputs*/, const Gather& /*gather*/,
                          const Scatter& /*scatter*/) {
    return false;
  }
};

}  // namespace dexrt
