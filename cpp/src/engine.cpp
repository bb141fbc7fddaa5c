#include "dexrt/engine.h"

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
void Engine::infer(const T* images, int64_t n, int64_t height, int64_t width, T* out) const {
  if (n <= 0) throw Error(ErrorKind::Input, "the batch is empty");
  const PadGeometry g = plan_padding(height, width, contract_.size_multiple);
  const ImageBatch batch{images, std::is_same_v<T, uint16_t> ? PixelType::UInt16 : PixelType::Float32, n, height,
                         width};
  if (backend_->run_images(batch, g, contract_.input, contract_.outputs, out)) return;  // e.g. CUDA pre/post
  const int64_t channels = backend_->output_channels();
  backend_->run(
      BatchShape{n, g.padded_height, g.padded_width},
      [&](float* net_input) { preprocess(images, n, g, contract_.input, net_input); },  // (N,1,Hp,Wp) f32
      [&](const float* net_output) {  // (N,C,Hp,Wp) f32
        postprocess(net_output, n, channels, g, contract_.outputs, out);
      });
}

void Engine::infer_device(const ImageBatch& batch, void* out) const {
  if (batch.n <= 0) throw Error(ErrorKind::Input, "the batch is empty");
  const PadGeometry g = plan_padding(batch.height, batch.width, contract_.size_multiple);
  if (!backend_->run_images(batch, g, contract_.input, contract_.outputs, out)) {
    throw Error(ErrorKind::Input, "the " + backend_->name() + " backend takes images in host memory only (got a "
                                                              "device array); copy them to the host first");
  }
}

template void Engine::infer<uint16_t>(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) const;
template void Engine::infer<float>(const float*, int64_t, int64_t, int64_t, float*) const;

}  // namespace dexrt
