#include "dexrt/engine.h"

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

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

StageTimes Engine::run(const ImageBatch& batch) const {
  if (batch.n <= 0) throw Error(ErrorKind::Input, "the batch is empty");
  if (batch.images == nullptr) throw Error(ErrorKind::Input, "the batch has no output planes");
  return backend_->run(batch, plan_padding(batch.height, batch.width, contract_.size_multiple), contract_);
}

template <typename T>
StageTimes Engine::infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const {
  const int64_t plane = height * width;
  std::vector<HostImage> slots(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t b = 0; b < n; ++b) slots[static_cast<size_t>(b)] = {images + b * plane, out + b * plane, n * plane};
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
                                     batch.n * plane};
  }
  ImageBatch with_outputs = batch;
  with_outputs.images = slots.data();
  return run(with_outputs);
}

template StageTimes Engine::infer<uint16_t>(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) const;
template StageTimes Engine::infer<float>(const float*, int64_t, int64_t, int64_t, float*) const;

}  // namespace dexrt
