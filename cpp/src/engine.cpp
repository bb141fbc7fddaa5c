#include "dexrt/engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <type_traits>

#include "dexrt/error.h"

namespace dexrt {

Engine::Engine(std::unique_ptr<Backend> backend, Contract contract)
    : backend_(std::move(backend)), contract_(std::move(contract)) {
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
}

template <typename T>
StageTimes Engine::run(const ImageSlot<T>* slots, int64_t n, int64_t height, int64_t width) const {
  using Clock = std::chrono::steady_clock;
  auto micros = [](Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  if (n <= 0) throw Error(ErrorKind::Input, "the batch is empty");
  const PadGeometry g = plan_padding(height, width, contract_.size_multiple);
  const int64_t padded_plane = g.padded_height * g.padded_width;
  const int64_t channels = backend_->output_channels();
  StageTimes times;
  // A backend with its own pre/post (the CUDA kernels) runs the whole pipeline; its stages are one time.
  const auto started = Clock::now();
  const int64_t plane = height * width;
  const ImageBatch batch{std::is_same_v<T, uint16_t> ? PixelType::UInt16 : PixelType::Float32, n, height, width};
  const bool ran = backend_->run_images(
      batch, g, contract_.input, contract_.outputs,
      [&](int64_t first, int64_t count, void* dst) {  // (count, H, W)
        for (int64_t b = 0; b < count; ++b) {
          std::memcpy(static_cast<T*>(dst) + b * plane, slots[first + b].input, sizeof(T) * plane);
        }
      },
      [&](int64_t first, int64_t count, const void* src) {  // (C, count, H, W)
        for (int64_t c = 0; c < channels; ++c) {
          for (int64_t b = 0; b < count; ++b) {
            const ImageSlot<T>& slot = slots[first + b];
            std::memcpy(slot.output + c * slot.channel_stride, static_cast<const T*>(src) + (c * count + b) * plane,
                        sizeof(T) * plane);
          }
        }
      });
  if (ran) {
    times.infer_us = micros(Clock::now() - started);
    return times;
  }
  Clock::time_point filled;
  backend_->run(
      BatchShape{n, g.padded_height, g.padded_width},
      [&](float* net_input) {  // (N, 1, Hp, Wp) f32
        const auto t0 = Clock::now();
        for (int64_t b = 0; b < n; ++b) preprocess_image(slots[b].input, g, contract_.input, net_input + b * padded_plane);
        filled = Clock::now();
        times.pre_us = micros(filled - t0);
      },
      [&](const float* net_output) {  // (N, C, Hp, Wp) f32
        const auto t0 = Clock::now();
        times.infer_us = micros(t0 - filled);
        for (int64_t b = 0; b < n; ++b) {
          postprocess_image(net_output + b * channels * padded_plane, g, contract_.outputs, slots[b].output,
                            slots[b].channel_stride);
        }
        times.post_us = micros(Clock::now() - t0);
      });
  return times;
}

template <typename T>
StageTimes Engine::infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const {
  const int64_t plane = height * width;
  std::vector<ImageSlot<T>> slots(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t b = 0; b < n; ++b) slots[static_cast<size_t>(b)] = {images + b * plane, out + b * plane, n * plane};
  return run(slots.data(), n, height, width);
}

StageTimes Engine::infer_device(const ImageBatch& batch, void* out) const {
  if (batch.n <= 0) throw Error(ErrorKind::Input, "the batch is empty");
  const PadGeometry g = plan_padding(batch.height, batch.width, contract_.size_multiple);
  const size_t pixel = batch.type == PixelType::UInt16 ? sizeof(uint16_t) : sizeof(float);
  const auto plane_bytes = static_cast<size_t>(batch.height * batch.width) * pixel;
  const int64_t channels = backend_->output_channels();
  const auto started = std::chrono::steady_clock::now();
  const bool ran = backend_->run_images(
      batch, g, contract_.input, contract_.outputs,
      [](int64_t, int64_t, void*) { throw Error(ErrorKind::Engine, "device images have nothing to gather"); },
      [&](int64_t first, int64_t count, const void* src) {  // (C, count, H, W) -> rows of (C, N, H, W)
        for (int64_t c = 0; c < channels; ++c) {
          std::memcpy(static_cast<unsigned char*>(out) + static_cast<size_t>(c * batch.n + first) * plane_bytes,
                      static_cast<const unsigned char*>(src) + static_cast<size_t>(c * count) * plane_bytes,
                      static_cast<size_t>(count) * plane_bytes);
        }
      });
  if (!ran) {
    throw Error(ErrorKind::Input, "the " + backend_->name() +
                                      " backend takes images in host memory only (got a device array); copy them "
                                      "to the host first");
  }
  StageTimes times;
  times.infer_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started).count();
  return times;
}

template StageTimes Engine::run<uint16_t>(const ImageSlot<uint16_t>*, int64_t, int64_t, int64_t) const;
template StageTimes Engine::run<float>(const ImageSlot<float>*, int64_t, int64_t, int64_t) const;
template StageTimes Engine::infer<uint16_t>(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) const;
template StageTimes Engine::infer<float>(const float*, int64_t, int64_t, int64_t, float*) const;

}  // namespace dexrt
