// Engine: the value contract and padding around a backend. (N, H, W) images in, (C, N, H, W) images out
// (one contiguous block per output kind), same dtype and size. The one executor of the contract: per-image
// windows (robust_range.h), the maps (prepost.h), the network, the inverse maps, and at full resolution the
// resampling around them (fullres.h).
#pragma once

#include <cstdint>
#include <exception>
#include <memory>
#include <vector>

#include "dexrt/backend.h"
#include "dexrt/fullres.h"

namespace dexrt {

class Engine {
 public:
  // `model_spacing_mm`: the pixel spacing the model was trained at (0: not recorded). `threads`: for the work
  // outside the network (0: one per hardware thread).
  Engine(std::unique_ptr<Backend> backend, Contract contract, double model_spacing_mm = 0.0, int threads = 0);

  const Backend& backend() const { return *backend_; }
  const Contract& contract() const { return contract_; }
  int64_t output_channels() const { return backend_->output_channels(); }
  double model_spacing_mm() const { return model_spacing_mm_; }
  int threads() const { return threads_; }

  // The per-image window of one (H, W) image: its robust range for a normalised engine, else the identity.
  template <typename T>
  ImageWindow window_of(const T* image, int64_t height, int64_t width) const;

  // A batch of same-sized images, each read from and written to its own place (see ImageBatch). The images'
  // windows are computed here unless `windows_given` (then each slot's window is used as it is). A float32
  // output that is not finite is an InputError: thrown, or, with `errors` (one per image), recorded for its image
  // alone. Thread-safe.
  StageTimes run(const ImageBatch& batch, bool windows_given = false,
                 std::vector<std::exception_ptr>* errors = nullptr) const;

  // images: (N, H, W) contiguous host memory; out: (C, N, H, W) contiguous. Thread-safe.
  template <typename T>
  StageTimes infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const;

  // Images already in CUDA device memory (batch.device_data, batch.images unused), for a backend with a device
  // pipeline; out: (C, N, H, W) host memory of the batch's pixel type. Thread-safe.
  StageTimes infer_device(const ImageBatch& batch, void* out) const;

  // -- full resolution (fullres.h) ------------------------------------------------------------------------------
  // The working size of an (H, W) frame of (row, col) spacing; model_mm 0 means the engine's own.
  Size2 working_size(Size2 size, double row_mm, double col_mm, double model_mm = 0.0) const;

  template <typename T>
  WorkImage prepare(const T* frame, Size2 size, Size2 work) const;
  // A batch of prepared frames of one working size through the network: (C, h, w) float32 outputs, in each
  // frame's grey values, at net_outputs[b]. Per-frame failures go to `errors` when given.
  StageTimes run_prepared(const std::vector<const WorkImage*>& frames, const std::vector<float*>& net_outputs,
                          std::vector<std::exception_ptr>* errors = nullptr) const;
  template <typename T>
  void finish(const T* frame, const WorkImage& work, const float* net, T* out, int64_t channel_stride) const;

  // (N, H, W) frames at `work` size through the whole path -> (C, N, H, W) at their own size. Thread-safe.
  template <typename T>
  StageTimes infer_full(const T* frames, int64_t n, Size2 size, Size2 work, T* out) const;

  const FullResolutionOptions& full_resolution() const { return full_; }
  void set_full_resolution(const FullResolutionOptions& o) { full_ = o; }  // before any use (not thread-safe)

 private:
  std::unique_ptr<Backend> backend_;
  Contract contract_;
  double model_spacing_mm_ = 0.0;
  int threads_ = 0;
  FullResolutionOptions full_;
};

}  // namespace dexrt
