// The small interface every inference backend implements (OpenVINO on the CPU; TensorRT on NVIDIA GPUs).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace dexrt {

struct BatchShape {
  int64_t n = 0, height = 0, width = 0;  // network input (N, 1, H, W); H and W already padded
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
};

}  // namespace dexrt
