#include "dexrt/prepost.h"

#include <cmath>
#include <limits>
#include <type_traits>

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
    return static_cast<uint16_t>(std::nearbyint(v));
  } else {
    return v;
  }
}

}  // namespace

template <typename T>
void preprocess(const T* images, int64_t n, const PadGeometry& g, Window window, float* net_input) {
  const Affine f = to_network(window);
  const auto rows = mirror_map(g.padded_height, g.top, g.height);
  const auto cols = mirror_map(g.padded_width, g.left, g.width);
  const int64_t plane = g.height * g.width;
  for (int64_t b = 0; b < n; ++b) {
    const T* src = images + b * plane;
    float* dst = net_input + b * g.padded_height * g.padded_width;
    for (int64_t y = 0; y < g.padded_height; ++y) {
      const T* src_row = src + rows[static_cast<size_t>(y)] * g.width;
      float* dst_row = dst + y * g.padded_width;
      // Interior columns map one to one; only the margins need the mirror map.
      for (int64_t x = 0; x < g.left; ++x) dst_row[x] = f(static_cast<float>(src_row[cols[x]]));
      for (int64_t x = 0; x < g.width; ++x) dst_row[g.left + x] = f(static_cast<float>(src_row[x]));
      for (int64_t x = g.left + g.width; x < g.padded_width; ++x) {
        dst_row[x] = f(static_cast<float>(src_row[cols[static_cast<size_t>(x)]]));
      }
    }
  }
}

template <typename T>
void postprocess(const float* net_output, int64_t n, int64_t channels, const PadGeometry& g,
                 const std::vector<Window>& windows, T* images) {
  if (static_cast<int64_t>(windows.size()) != channels) {
    throw Error(ErrorKind::Engine, "the engine has " + std::to_string(windows.size()) +
                                       " output windows for a network with " + std::to_string(channels) +
                                       " output channels");
  }
  const int64_t padded_plane = g.padded_height * g.padded_width;
  const int64_t plane = g.height * g.width;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t c = 0; c < channels; ++c) {
      const Affine f = from_network(windows[static_cast<size_t>(c)]);
      const float* src = net_output + (b * channels + c) * padded_plane + g.top * g.padded_width + g.left;
      T* dst = images + (c * n + b) * plane;  // channel-major: (C, N, H, W)
      for (int64_t y = 0; y < g.height; ++y) {
        const float* src_row = src + y * g.padded_width;
        T* dst_row = dst + y * g.width;
        for (int64_t x = 0; x < g.width; ++x) dst_row[x] = store<T>(f(src_row[x]));
      }
    }
  }
}

template void preprocess<uint16_t>(const uint16_t*, int64_t, const PadGeometry&, Window, float*);
template void preprocess<float>(const float*, int64_t, const PadGeometry&, Window, float*);
template void postprocess<uint16_t>(const float*, int64_t, int64_t, const PadGeometry&, const std::vector<Window>&,
                                    uint16_t*);
template void postprocess<float>(const float*, int64_t, int64_t, const PadGeometry&, const std::vector<Window>&,
                                 float*);

}  // namespace dexrt
