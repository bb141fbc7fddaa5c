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

// A batch of stored images, in host memory or (for a GPU backend) already in device memory.
struct ImageBatch {
  const void* data = nullptr;  // (N, H, W) C-contiguous
  PixelType type = PixelType::UInt16;
  int64_t n = 0, height = 0, width = 0;
  bool on_device = false;  // a CUDA device pointer (e.g. from __cuda_array_interface__)
  uintptr_t stream = 0;    // on_device only: the producer's cudaStream_t to order after; 0 when none is needed
};

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

  // The whole pipeline, pre/post included, on the backend's own device: `out` receives the (C, N, H, W)
  // images in host memory, of the batch's pixel type. Returns false when the backend has no such path; the
  // Engine then runs the CPU pre/post around run(). Thread-safe like run().
  virtual bool run_images(const ImageBatch& /*batch*/, const PadGeometry& /*g*/, Window /*input*/,
                          const std::vector<Window>& /*outputs*/, void* /*out*/) {
    return false;
  }
};

}  // namespace dexrt
