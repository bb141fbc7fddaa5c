#include "dexrt/prepost.h"

#include <type_traits>

#include "dexrt/backend.h"
#include "dexrt/error.h"

namespace dexrt {

Affine to_network(Window w) {
  const float scale = 2.0f / (w.hi - w.lo);
  return {scale, -1.0f - w.lo * scale};
}

Affine from_network(Window w) {
  const float scale = (w.hi - w.lo) * 0.5f;
  return {scale, w.lo + scale};
}

PadGeometry plan_padding(int64_t height, int64_t width, int64_t size_multiple) {
  if (height <= 0 || width <= 0) {
    throw Error(ErrorKind::Input, "image size must be positive, got " + std::to_string(height) + "x" +
                                      std::to_string(width));
  }
  if (size_multiple <= 0) throw Error(ErrorKind::Engine, "size multiple must be positive");
  PadGeometry g;
  g.height = height;
  g.width = width;
  g.padded_height = (height + size_multiple - 1) / size_multiple * size_multiple;
  g.padded_width = (width + size_multiple - 1) / size_multiple * size_multiple;
  g.top = (g.padded_height - height) / 2;
  g.left = (g.padded_width - width) / 2;
  return g;
}

int64_t reflect_index(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  int64_t k = i % period;
  if (k < 0) k += period;
  return k < n ? k : period - k;
}

namespace {

// Source row/column of every padded row/column.
std::vector<int64_t> mirror_map(int64_t padded, int64_t offset, int64_t n) {
  std::vector<int64_t> map(static_cast<size_t>(padded));
  for (int64_t i = 0; i < padded; ++i) map[static_cast<size_t>(i)] = reflect_index(i - offset, n);
  return map;
}

template <typename T>
T store(float v) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    // NaN and anything below 0 -> 0; rounding half to even (the default FP environment).
    if (!(v > 0.0f)) return 0;
    if (v >= 65535.0f) return 65535;
    // Round half to even: adding and removing 1.5 * 2^23 rounds v to an integer in the default rounding
    // mode (exact for 0 <= v < 2^22; float arithmetic is not reassociated without -ffast-math). Same result
    // as rintf on the GPU, without a libm call, so the loop vectorises.
    constexpr float kMagic = 12582912.0f;
    return static_cast<uint16_t>((v + kMagic) - kMagic);
  } else {
    return v;
  }
}

}  // namespace

template <typename T>
void preprocess_image(const T* image, const PadGeometry& g, Window window, float* net_plane) {
  const Affine f = to_network(window);
  const auto rows = mirror_map(g.padded_height, g.top, g.height);
  const auto cols = mirror_map(g.padded_width, g.left, g.width);
  for (int64_t y = 0; y < g.padded_height; ++y) {
    const T* src_row = image + rows[static_cast<size_t>(y)] * g.width;
    float* dst_row = net_plane + y * g.padded_width;
    // Interior columns map one to one; only the margins need the mirror map.
    for (int64_t x = 0; x < g.left; ++x) dst_row[x] = f(static_cast<float>(src_row[cols[static_cast<size_t>(x)]]));
    for (int64_t x = 0; x < g.width; ++x) dst_row[g.left + x] = f(static_cast<float>(src_row[x]));
    for (int64_t x = g.left + g.width; x < g.padded_width; ++x) {
      dst_row[x] = f(static_cast<float>(src_row[cols[static_cast<size_t>(x)]]));
    }
  }
}

template <typename T>
void postprocess_image(const float* net_output, const PadGeometry& g, const std::vector<Window>& windows, T* out,
                       int64_t channel_stride) {
  const int64_t padded_plane = g.padded_height * g.padded_width;
  for (size_t c = 0; c < windows.size(); ++c) {
    const Affine f = from_network(windows[c]);
    const float* src = net_output + static_cast<int64_t>(c) * padded_plane + g.top * g.padded_width + g.left;
    T* dst = out + static_cast<int64_t>(c) * channel_stride;
    for (int64_t y = 0; y < g.height; ++y) {
      const float* src_row = src + y * g.padded_width;
      T* dst_row = dst + y * g.width;
      for (int64_t x = 0; x < g.width; ++x) dst_row[x] = store<T>(f(src_row[x]));
    }
  }
}

namespace {

void require_host(const ImageBatch& batch) {
  if (batch.device_data != nullptr) {
    throw Error(ErrorKind::Input, "this backend takes images in host memory only (got a device array); copy them "
                                  "to the host first");
  }
}

}  // namespace

void preprocess_batch(const ImageBatch& batch, const PadGeometry& g, Window input, float* net_input) {
  require_host(batch);
  const int64_t padded_plane = g.padded_height * g.padded_width;
  for (int64_t b = 0; b < batch.n; ++b) {
    const void* image = batch.images[b].input;
    float* plane = net_input + b * padded_plane;
    if (batch.type == PixelType::UInt16) {
      preprocess_image(static_cast<const uint16_t*>(image), g, input, plane);
    } else {
      preprocess_image(static_cast<const float*>(image), g, input, plane);
    }
  }
}

void postprocess_batch(const float* net_output, const ImageBatch& batch, const PadGeometry& g,
                       const std::vector<Window>& outputs) {
  require_host(batch);
  const int64_t image_block = static_cast<int64_t>(outputs.size()) * g.padded_height * g.padded_width;
  for (int64_t b = 0; b < batch.n; ++b) {
    const HostImage& slot = batch.images[b];
    const float* src = net_output + b * image_block;
    if (batch.type == PixelType::UInt16) {
      postprocess_image(src, g, outputs, static_cast<uint16_t*>(slot.output), slot.channel_stride);
    } else {
      postprocess_image(src, g, outputs, static_cast<float*>(slot.output), slot.channel_stride);
    }
  }
}

template void preprocess_image<uint16_t>(const uint16_t*, const PadGeometry&, Window, float*);
template void preprocess_image<float>(const float*, const PadGeometry&, Window, float*);
template void postprocess_image<uint16_t>(const float*, const PadGeometry&, const std::vector<Window>&, uint16_t*,
                                          int64_t);
template void postprocess_image<float>(const float*, const PadGeometry&, const std::vector<Window>&, float*, int64_t);

}  // namespace dexrt
