// The small interface every inference backend implements (OpenVINO on the CPU; TensorRT on NVIDIA GPUs).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dexrt/prepost.h"
#include "dexrt/robust_range.h"

namespace dexrt {

// The value contract around the network: stored values <-> network range, and the padding multiple.
struct Contract {
  Window input;
  std::vector<Window> outputs;  // one per output channel
  int64_t size_multiple = 1;
  // Each image mapped by its own robust range (robust_range.h) before the network window, and its outputs back.
  bool normalised = false;
  std::vector<std::string> channels;  // output names, one per output channel (may be empty: unnamed)
  std::vector<char> offsets;          // per output channel: adds the image's lo on the way out (parts.h)
};

enum class PixelType { UInt16, Float32 };

// One image of a batch: where to read its (H, W) pixels (host memory) and where to write its C output planes.
// Images of a batch need not be adjacent in memory, so a batch is gathered from separate requests without copying.
struct HostImage {
  const void* input = nullptr;  // (H, W); unused when the batch's images are on the device
  void* output = nullptr;       // channel 0's (H, W) plane; channel c at output + c * channel_stride elements
  int64_t channel_stride = 0;   // in elements
  ImageWindow window;           // the image's own window (identity unless the contract is normalised)
};

// A batch of n same-sized stored images of one pixel type.
struct ImageBatch {
  PixelType type = PixelType::UInt16;
  int64_t n = 0, height = 0, width = 0;
  const HostImage* images = nullptr;  // n entries
  // Inputs already in CUDA device memory, (N, H, W) C-contiguous (e.g. from __cuda_array_interface__); null
  // when they are in host memory. Outputs always go to the host images' output planes.
  const void* device_data = nullptr;
  uintptr_t stream = 0;  // with device_data: the producer's cudaStream_t to order after; 0 when none is needed
};

// Wall time of each stage of one batch, in microseconds, with the same meaning on every backend:
// pre: stored images -> network input in the backend's memory (value window, mirror padding, any upload);
// infer: the network alone; post: network output -> the callers' output planes (crop, window, any download).
struct StageTimes {
  double pre_us = 0, infer_us = 0, post_us = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;    // "openvino", "tensorrt"
  virtual std::string device() const = 0;  // the device it resolved to, e.g. "CPU"
  virtual int64_t output_channels() const = 0;

  // The whole pipeline for one batch: pre-processing, the network at (N, 1, Hp, Wp) of `g`, post-processing
  // into each image's output planes. The network's output must be (N, C, Hp, Wp); any other shape is an
  // EngineError before a byte of it is read. Thread-safe: concurrent calls run on separate requests/contexts.
  virtual StageTimes run(const ImageBatch& batch, const PadGeometry& g, const Contract& contract) = 0;

  // The pixels of a device batch at the rows and columns of `grid` (robust_range.h): (N, rows, cols) f32 in host
  // memory, for the per-image windows of images that never come to the host. Backends without a device pipeline
  // refuse device batches anyway.
  virtual std::vector<float> device_samples(const ImageBatch& batch, const SampleGrid& grid);
};

// The CPU pre/post of a batch in host memory, for backends that run the network on host buffers.
// preprocess_batch writes the (N, 1, Hp, Wp) f32 network input; postprocess_batch reads the (N, C, Hp, Wp) f32
// network output into each image's output planes. Both refuse a batch whose images are on the device.
void preprocess_batch(const ImageBatch& batch, const PadGeometry& g, const Contract& contract, float* net_input);
void postprocess_batch(const float* net_output, const ImageBatch& batch, const PadGeometry& g,
                       const Contract& contract);

// The network input shape of a batch: (N, 1, H, W), H and W already padded.
struct BatchShape {
  int64_t n = 0, height = 0, width = 0;
};

}  // namespace dexrt
