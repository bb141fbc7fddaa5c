// TensorRT backend: the NVIDIA GPU path. Runs a serialized TensorRT plan (built by `dexrt build-engine
// --device gpu`, see python/dexrt/build/tensorrt.py) with the pre/post on the GPU (dexrt/cuda/prepost.h).
//
// The plan holds one optimization profile per execution context (all over the same shapes): contexts that
// run at once must each use their own profile. Each context has its own stream, its I/O bindings sized for
// the profile's largest shape (so their addresses never change, which keeps captured CUDA graphs valid),
// pinned host staging, and optionally one CUDA graph per input shape. Calls take a free context or wait
// for one, so up to `contexts` batches are in flight at once.
#pragma once

#include <NvInferRuntime.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dexrt/backend.h"
#include "dexrt/cuda/prepost.h"

namespace dexrt {

struct TensorRtOptions {
  int device = 0;            // CUDA device index
  int contexts = 2;          // execution contexts (at most the plan's number of profiles)
  bool cuda_graphs = false;  // capture the network once per (context, input shape) and replay it
};

// The version of the libnvinfer loaded at run time, "major.minor.patch".
std::string tensorrt_library_version();

// Where TensorRT's warnings and errors go (the Python bindings send them to `logging`); by default, nowhere.
// severity: 0 internal error, 1 error, 2 warning, 3 info, 4 verbose (nvinfer1::ILogger::Severity).
void set_tensorrt_log_sink(std::function<void(int severity, const char* message)> sink);

class TensorRtBackend final : public Backend {
 public:
  TensorRtBackend(const std::string& plan, TensorRtOptions options);
  ~TensorRtBackend() override;
  TensorRtBackend(const TensorRtBackend&) = delete;
  TensorRtBackend& operator=(const TensorRtBackend&) = delete;

  std::string name() const override { return "tensorrt"; }
  std::string device() const override { return device_name_; }
  int64_t output_channels() const override { return output_channels_; }
  int contexts() const { return static_cast<int>(slots_.size()); }

  // The GPU pipeline: images (gathered into pinned memory, or already on the device) -> preprocess kernel ->
  // network -> postprocess kernel -> pinned memory -> each image's output planes. Batches larger than the
  // plan's largest batch run in chunks. Stage times come from CUDA events on the context's stream (pre
  // includes the gather and upload, post the download and scatter).
  StageTimes run(const ImageBatch& batch, const PadGeometry& g, const Contract& contract) override;

  // The sampled pixels of a device batch, gathered on the GPU: only they come to the host.
  std::vector<float> device_samples(const ImageBatch& batch, const SampleGrid& grid) override;

 private:
  class Logger;
  struct Slot;
  class Lease;

  void check_shape(const BatchShape& shape, int profile) const;
  void enqueue(Slot& slot, const BatchShape& shape);  // the network on the slot's stream

  TensorRtOptions options_;
  std::string device_name_;
  std::unique_ptr<Logger> logger_;                   // outlives everything TensorRT made with it
  std::unique_ptr<nvinfer1::IRuntime> runtime_;      // declared before engine_, so it outlives it
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::string input_name_, output_name_;
  cuda::DType input_type_ = cuda::DType::Float16, output_type_ = cuda::DType::Float16;
  int64_t output_channels_ = 0;

  std::mutex mutex_;
  std::condition_variable slot_freed_;
  std::vector<std::unique_ptr<Slot>> slots_;  // declared after engine_: contexts are destroyed first
  std::vector<Slot*> idle_;
};

}  // namespace dexrt
