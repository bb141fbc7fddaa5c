#include "dexrt/engine.h"

#include <algorithm>
#include <chrono>
#include <string>

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

template StageTimes Engine::run<uint16_t>(const ImageSlot<uint16_t>*, int64_t, int64_t, int64_t) const;
template StageTimes Engine::run<float>(const ImageSlot<float>*, int64_t, int64_t, int64_t) const;
template StageTimes Engine::infer<uint16_t>(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) const;
template StageTimes Engine::infer<float>(const float*, int64_t, int64_t, int64_t, float*) const;

}  // namespace dexrt
