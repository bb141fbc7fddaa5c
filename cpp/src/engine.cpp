#include "dexrt/engine.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <type_traits>
#include <vector>

#include "dexrt/error.h"
#include "dexrt/parts.h"
#include "dexrt/robust_range.h"

namespace dexrt {

namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// The error of image b of n, its index named when there is more than one.
std::exception_ptr for_image(const std::exception& e, ErrorKind kind, int64_t b, int64_t n) {
  const std::string where = n > 1 ? "image " + std::to_string(b) + ": " : "";
  return std::make_exception_ptr(Error(kind, where + e.what()));
}

ErrorKind kind_of(const std::exception& e) {
  const auto* error = dynamic_cast<const Error*>(&e);
  return error ? error->kind() : ErrorKind::Engine;
}

}  // namespace

std::vector<float> Backend::device_samples(const ImageBatch& /*batch*/, const SampleGrid& /*grid*/) {
  throw Error(ErrorKind::Input, "this backend takes images in host memory only (got a device array); copy them "
                                "to the host first");
}

Engine::Engine(std::unique_ptr<Backend> backend, Contract contract, double model_spacing_mm, int threads)
    : backend_(std::move(backend)), contract_(std::move(contract)), model_spacing_mm_(model_spacing_mm),
      threads_(threads) {
  if (!backend_) throw Error(ErrorKind::Engine, "no backend");
  if (contract_.size_multiple <= 0) throw Error(ErrorKind::Engine, "size multiple must be positive");
  auto check = [](Window w, const std::string& what) {
    if (!(w.hi > w.lo)) {
      throw Error(ErrorKind::Engine, what + " window must have hi > lo, got (" + std::to_string(w.lo) + ", " +
                                         std::to_string(w.hi) + ")");
    }
  };
  check(contract_.input, "input");
  for (const Window& w : contract_.outputs) check(w, "output");
  if (static_cast<int64_t>(contract_.outputs.size()) != backend_->output_channels()) {
    throw Error(ErrorKind::Engine, "the engine declares " + std::to_string(contract_.outputs.size()) +
                                       " output windows but the network has " +
                                       std::to_string(backend_->output_channels()) + " output channels");
  }
  if (!contract_.channels.empty() && contract_.channels.size() != contract_.outputs.size()) {
    throw Error(ErrorKind::Engine, "the engine names " + std::to_string(contract_.channels.size()) +
                                       " output channels but declares " + std::to_string(contract_.outputs.size()) +
                                       " output windows");
  }
  if (contract_.normalised && contract_.channels.empty()) {
    throw Error(ErrorKind::Engine, "a normalised engine must name its output channels (which part is bone)");
  }
  if (model_spacing_mm_ < 0.0) throw Error(ErrorKind::Engine, "the model's pixel spacing must not be negative");
  contract_.offsets = channel_offsets(contract_.channels, contract_.normalised);
  full_.threads = threads_;
}

template <typename T>
ImageWindow Engine::window_of(const T* image, int64_t height, int64_t width) const {
  return contract_.normalised ? image_window(robust_range(image, height, width)) : ImageWindow{};
}

StageTimes Engine::run(const ImageBatch& batch, bool windows_given, std::vector<std::exception_ptr>* errors) const {
  if (batch.n <= 0) throw Error(ErrorKind::Input, "the batch is empty");
  if (batch.images == nullptr) throw Error(ErrorKind::Input, "the batch has no output planes");
  std::vector<HostImage> slots(batch.images, batch.images + batch.n);
  if (!windows_given) {
    const int64_t h = batch.height, w = batch.width;
    for (int64_t b = 0; b < batch.n; ++b) slots[static_cast<size_t>(b)].window = ImageWindow{};
    if (contract_.normalised && batch.device_data != nullptr) {
      // The images stay on the device: only the sampled pixels come over for the percentiles.
      const SampleGrid grid = sample_grid(h, w);
      const std::vector<float> samples = backend_->device_samples(batch, grid);  // (N, rows, cols)
      for (int64_t b = 0; b < batch.n; ++b) {
        std::vector<double> sample(samples.begin() + b * grid.size(), samples.begin() + (b + 1) * grid.size());
        try {
          slots[static_cast<size_t>(b)].window = image_window(percentile_range(sample));
        } catch (const std::exception& e) {
          std::rethrow_exception(for_image(e, kind_of(e), b, batch.n));
        }
      }
    } else if (contract_.normalised) {
      for (int64_t b = 0; b < batch.n; ++b) {
        HostImage& slot = slots[static_cast<size_t>(b)];
        try {
          slot.window = batch.type == PixelType::UInt16 ? window_of(static_cast<const uint16_t*>(slot.input), h, w)
                                                        : window_of(static_cast<const float*>(slot.input), h, w);
        } catch (const std::exception& e) {
          std::rethrow_exception(for_image(e, kind_of(e), b, batch.n));
        }
      }
    }
  }
  ImageBatch windowed = batch;
  windowed.images = slots.data();
  const StageTimes times =
      backend_->run(windowed, plan_padding(batch.height, batch.width, contract_.size_multiple), contract_);
  if (batch.type == PixelType::Float32) {
    const int64_t plane = batch.height * batch.width;
    for (int64_t b = 0; b < batch.n; ++b) {
      const HostImage& slot = slots[static_cast<size_t>(b)];
      bool finite = true;
      for (int64_t c = 0; c < output_channels() && finite; ++c) {
        finite = all_finite(static_cast<const float*>(slot.output) + c * slot.channel_stride, plane);
      }
      if (finite) continue;
      const Error e(ErrorKind::Input, kNotFiniteMessage);
      if (errors == nullptr) std::rethrow_exception(for_image(e, ErrorKind::Input, b, batch.n));
      (*errors)[static_cast<size_t>(b)] = std::make_exception_ptr(e);
    }
  }
  return times;
}

template <typename T>
StageTimes Engine::infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const {
  const int64_t plane = height * width;
  std::vector<HostImage> slots(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t b = 0; b < n; ++b) slots[static_cast<size_t>(b)] = {images + b * plane, out + b * plane, n * plane, ImageWindow{}};
  const ImageBatch batch{std::is_same_v<T, uint16_t> ? PixelType::UInt16 : PixelType::Float32, n, height, width,
                         slots.data()};
  return run(batch);
}

StageTimes Engine::infer_device(const ImageBatch& batch, void* out) const {
  if (batch.device_data == nullptr) throw Error(ErrorKind::Input, "no device images");
  const size_t pixel = batch.type == PixelType::UInt16 ? sizeof(uint16_t) : sizeof(float);
  const int64_t plane = batch.height * batch.width;
  std::vector<HostImage> slots(static_cast<size_t>(std::max<int64_t>(batch.n, 0)));
  for (int64_t b = 0; b < batch.n; ++b) {  // (C, N, H, W): image b's channel c at (c * N + b) * plane
    slots[static_cast<size_t>(b)] = {nullptr, static_cast<unsigned char*>(out) + static_cast<size_t>(b * plane) * pixel,
                                     batch.n * plane, ImageWindow{}};
  }
  ImageBatch with_outputs = batch;
  with_outputs.images = slots.data();
  return run(with_outputs);
}

Size2 Engine::working_size(Size2 size, double row_mm, double col_mm, double model_mm) const {
  const double model = model_mm > 0.0 ? model_mm : model_spacing_mm_;
  if (!(model > 0.0)) {
    throw Error(ErrorKind::Engine, "the engine records no training pixel spacing (pixel_spacing_mm): give the "
                                   "model's spacing to run an image of a given spacing at it");
  }
  return dexrt::working_size(size.height, size.width, row_mm, col_mm, model);
}

template <typename T>
WorkImage Engine::prepare(const T* frame, Size2 size, Size2 work) const {
  return prepare_frame(frame, size, work, contract_.normalised, full_);
}

StageTimes Engine::run_prepared(const std::vector<const WorkImage*>& frames, const std::vector<float*>& net_outputs,
                                std::vector<std::exception_ptr>* errors) const {
  if (frames.empty()) throw Error(ErrorKind::Input, "the batch is empty");
  const Size2 work = frames.front()->work;
  std::vector<HostImage> slots;
  slots.reserve(frames.size());
  for (size_t b = 0; b < frames.size(); ++b) {
    const WorkImage& f = *frames[b];
    if (f.work != work || !f.resampled()) throw Error(ErrorKind::Engine, "prepared frames of different working sizes");
    slots.push_back(HostImage{f.pixels.data(), net_outputs[b], work.height * work.width, f.window});
  }
  const ImageBatch batch{PixelType::Float32, static_cast<int64_t>(frames.size()), work.height, work.width,
                         slots.data()};
  return run(batch, true, errors);
}

template <typename T>
void Engine::finish(const T* frame, const WorkImage& work, const float* net, T* out, int64_t channel_stride) const {
  finish_frame(frame, work, net, contract_, out, channel_stride, full_);
}

template <typename T>
StageTimes Engine::infer_full(const T* frames, int64_t n, Size2 size, Size2 work, T* out) const {
  if (work == size) return infer(frames, n, size.height, size.width, out);
  const int64_t plane = size.height * size.width, net_plane = work.height * work.width;
  const int64_t channels = output_channels();
  const auto started = Clock::now();
  std::vector<WorkImage> prepared;
  prepared.reserve(static_cast<size_t>(n));
  for (int64_t b = 0; b < n; ++b) {
    try {
      prepared.push_back(prepare(frames + b * plane, size, work));
    } catch (const std::exception& e) {
      std::rethrow_exception(for_image(e, kind_of(e), b, n));
    }
  }
  std::vector<float> net(static_cast<size_t>(n * channels * net_plane));  // (N, C, h, w)
  std::vector<const WorkImage*> frame_list;
  std::vector<float*> outputs;
  for (int64_t b = 0; b < n; ++b) {
    frame_list.push_back(&prepared[static_cast<size_t>(b)]);
    outputs.push_back(net.data() + b * channels * net_plane);
  }
  const auto prepared_at = Clock::now();
  StageTimes times = run_prepared(frame_list, outputs);
  const auto inferred_at = Clock::now();
  for (int64_t b = 0; b < n; ++b) {
    try {
      finish(frames + b * plane, prepared[static_cast<size_t>(b)], outputs[static_cast<size_t>(b)], out + b * plane,
             n * plane);
    } catch (const std::exception& e) {
      std::rethrow_exception(for_image(e, kind_of(e), b, n));
    }
  }
  times.pre_us += micros(prepared_at - started);
  times.post_us += micros(Clock::now() - inferred_at);
  return times;
}

template ImageWindow Engine::window_of<uint16_t>(const uint16_t*, int64_t, int64_t) const;
template ImageWindow Engine::window_of<float>(const float*, int64_t, int64_t) const;
template StageTimes Engine::infer<uint16_t>(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) const;
template StageTimes Engine::infer<float>(const float*, int64_t, int64_t, int64_t, float*) const;
template WorkImage Engine::prepare<uint16_t>(const uint16_t*, Size2, Size2) const;
template WorkImage Engine::prepare<float>(const float*, Size2, Size2) const;
template void Engine::finish<uint16_t>(const uint16_t*, const WorkImage&, const float*, uint16_t*, int64_t) const;
template void Engine::finish<float>(const float*, const WorkImage&, const float*, float*, int64_t) const;
template StageTimes Engine::infer_full<uint16_t>(const uint16_t*, int64_t, Size2, Size2, uint16_t*) const;
template StageTimes Engine::infer_full<float>(const float*, int64_t, Size2, Size2, float*) const;

}  // namespace dexrt
