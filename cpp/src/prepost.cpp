#include "dexrt/prepost.h"

#include <cstring>
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

const char* const kNotFiniteMessage =
    "the results are not finite: the image's values overflow float32 arithmetic; scale the image into a narrower "
    "range";

bool all_finite(const float* values, int64_t n) {
  // NaN and the infinities are the values whose exponent bits are all set. An integer OR reduction vectorises,
  // where a float reduction or isfinite would not.
  uint32_t special = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof bits);
    special |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
  }
  return special == 0;
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

}  // namespace

template <typename T>
void preprocess_image(const T* image, const PadGeometry& g, Window window, const ImageWindow& own, float* net_plane) {
  const Affine f = to_network(window);
  const auto rows = mirror_map(g.padded_height, g.top, g.height);
  const auto cols = mirror_map(g.padded_width, g.left, g.width);
  // The identity image window is left out rather than applied: the fixed-window pipeline stays exactly as it was.
  const bool identity = own.identity();
  for (int64_t y = 0; y < g.padded_height; ++y) {
    const T* src_row = image + rows[static_cast<size_t>(y)] * g.width;
    float* dst_row = net_plane + y * g.padded_width;
    // Interior columns map one to one; only the margins need the mirror map.
    if (identity) {
      for (int64_t x = 0; x < g.width; ++x) dst_row[g.left + x] = f(static_cast<float>(src_row[x]));
    } else {
      for (int64_t x = 0; x < g.width; ++x) dst_row[g.left + x] = f(own.normalise(static_cast<float>(src_row[x])));
    }
    // The margins copy their mirror pixel's network value (the same function of the same pixel).
    for (int64_t x = 0; x < g.left; ++x) dst_row[x] = dst_row[g.left + cols[static_cast<size_t>(x)]];
    for (int64_t x = g.left + g.width; x < g.padded_width; ++x) {
      dst_row[x] = dst_row[g.left + cols[static_cast<size_t>(x)]];
    }
  }
}

template <typename T>
void postprocess_image(const float* net_output, const PadGeometry& g, const std::vector<Window>& windows,
                       const ImageWindow& own, const std::vector<char>& offsets, T* out, int64_t channel_stride) {
  const int64_t padded_plane = g.padded_height * g.padded_width;
  const bool identity = own.identity();
  for (size_t c = 0; c < windows.size(); ++c) {
    const Affine f = from_network(windows[c]);
    const Affine back = own.to_image(c < offsets.size() && offsets[c] != 0);
    const float* src = net_output + static_cast<int64_t>(c) * padded_plane + g.top * g.padded_width + g.left;
    T* dst = out + static_cast<int64_t>(c) * channel_stride;
    for (int64_t y = 0; y < g.height; ++y) {
      const float* src_row = src + y * g.padded_width;
      T* dst_row = dst + y * g.width;
      if (identity) {
        for (int64_t x = 0; x < g.width; ++x) dst_row[x] = store_as<T>(f(src_row[x]));
      } else {
        for (int64_t x = 0; x < g.width; ++x) dst_row[x] = store_as<T>(back(f(src_row[x])));
      }
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

void preprocess_batch(const ImageBatch& batch, const PadGeometry& g, const Contract& contract, float* net_input) {
  require_host(batch);
  const int64_t padded_plane = g.padded_height * g.padded_width;
  for (int64_t b = 0; b < batch.n; ++b) {
    const HostImage& slot = batch.images[b];
    float* plane = net_input + b * padded_plane;
    if (batch.type == PixelType::UInt16) {
      preprocess_image(static_cast<const uint16_t*>(slot.input), g, contract.input, slot.window, plane);
    } else {
      preprocess_image(static_cast<const float*>(slot.input), g, contract.input, slot.window, plane);
    }
  }
}

void postprocess_batch(const float* net_output, const ImageBatch& batch, const PadGeometry& g,
                       const Contract& contract) {
  require_host(batch);
  const int64_t image_block = static_cast<int64_t>(contract.outputs.size()) * g.padded_height * g.padded_width;
  for (int64_t b = 0; b < batch.n; ++b) {
    const HostImage& slot = batch.images[b];
    const float* src = net_output + b * image_block;
    if (batch.type == PixelType::UInt16) {
      postprocess_image(src, g, contract.outputs, slot.window, contract.offsets, static_cast<uint16_t*>(slot.output),
                        slot.channel_stride);
    } else {
      postprocess_image(src, g, contract.outputs, slot.window, contract.offsets, static_cast<float*>(slot.output),
                        slot.channel_stride);
    }
  }
}

template void preprocess_image<uint16_t>(const uint16_t*, const PadGeometry&, Window, const ImageWindow&, float*);
template void preprocess_image<float>(const float*, const PadGeometry&, Window, const ImageWindow&, float*);
template void postprocess_image<uint16_t>(const float*, const PadGeometry&, const std::vector<Window>&,
                                          const ImageWindow&, const std::vector<char>&, uint16_t*, int64_t);
template void postprocess_image<float>(const float*, const PadGeometry&, const std::vector<Window>&,
                                       const ImageWindow&, const std::vector<char>&, float*, int64_t);

}  // namespace dexrt
