#include "dexrt/resample.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "dexrt/error.h"
#include "dexrt/parallel.h"

namespace dexrt {

namespace {

// Builds taps from a rule that names up to N (source index, weight) pairs per output index. Indices outside the
// source are clamped onto its edge, and the window is placed so that it never reads outside the source.
template <typename Rule>
Taps build_taps(int64_t from, int64_t to, int64_t count, Rule rule) {
  if (from <= 0 || to <= 0) throw Error(ErrorKind::Input, "cannot resample an empty image");
  Taps t;
  t.from = from;
  t.to = to;
  t.count = std::min<int64_t>(count, from);
  t.first.resize(static_cast<size_t>(to));
  t.weights.assign(static_cast<size_t>(to * t.count), 0.0f);
  std::vector<int64_t> index(static_cast<size_t>(count));
  std::vector<double> weight(static_cast<size_t>(count));
  for (int64_t i = 0; i < to; ++i) {
    const size_t used = rule(i, index, weight);
    int64_t lowest = from;
    for (size_t k = 0; k < used; ++k) {
      index[k] = std::clamp<int64_t>(index[k], 0, from - 1);
      lowest = std::min(lowest, index[k]);
    }
    const int64_t first = std::clamp<int64_t>(lowest, 0, from - t.count);
    t.first[static_cast<size_t>(i)] = first;
    float* w = t.weights.data() + i * t.count;
    for (size_t k = 0; k < used; ++k) w[index[k] - first] += static_cast<float>(weight[k]);
  }
  return t;
}

}  // namespace

Taps area_taps(int64_t from, int64_t to) {
  if (to > from) throw Error(ErrorKind::Engine, "area averaging only shrinks");
  const double scale = static_cast<double>(from) / static_cast<double>(to);
  // A footprint of `scale` source pixels touches at most ceil(scale) + 1 of them.
  const auto count = static_cast<int64_t>(std::ceil(scale)) + 1;
  return build_taps(from, to, count, [&](int64_t i, auto& index, auto& weight) {
    const double x0 = static_cast<double>(i) * scale, x1 = static_cast<double>(i + 1) * scale;
    const auto first = static_cast<int64_t>(std::floor(x0));
    const auto last = std::min<int64_t>(from - 1, static_cast<int64_t>(std::ceil(x1)) - 1);
    size_t used = 0;
    for (int64_t j = first; j <= last && used < index.size(); ++j) {
      const double cover = std::min(x1, static_cast<double>(j + 1)) - std::max(x0, static_cast<double>(j));
      if (cover <= 0.0) continue;
      index[used] = j;
      weight[used++] = cover / scale;
    }
    return used;
  });
}

Taps linear_taps(int64_t from, int64_t to) {
  const double scale = static_cast<double>(from) / static_cast<double>(to);
  return build_taps(from, to, 2, [&](int64_t i, auto& index, auto& weight) {
    const double x = (static_cast<double>(i) + 0.5) * scale - 0.5;
    const double x0 = std::floor(x), t = x - x0;
    index[0] = static_cast<int64_t>(x0);
    index[1] = index[0] + 1;
    weight[0] = 1.0 - t;
    weight[1] = t;
    return size_t{2};
  });
}

Taps cubic_taps(int64_t from, int64_t to) {
  const double scale = static_cast<double>(from) / static_cast<double>(to);
  constexpr double a = -0.5;  // Keys: the cubic that reproduces quadratics (bicubic in most image libraries)
  auto keys = [](double d) {
    d = std::abs(d);
    if (d <= 1.0) return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0;
    if (d < 2.0) return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a;
    return 0.0;
  };
  return build_taps(from, to, 4, [&](int64_t i, auto& index, auto& weight) {
    const double x = (static_cast<double>(i) + 0.5) * scale - 0.5;
    const double x0 = std::floor(x), t = x - x0;
    for (int k = 0; k < 4; ++k) {
      index[static_cast<size_t>(k)] = static_cast<int64_t>(x0) + k - 1;
      weight[static_cast<size_t>(k)] = keys(t - (k - 1));
    }
    return size_t{4};
  });
}

Taps resize_taps(int64_t from, int64_t to) { return to < from ? area_taps(from, to) : linear_taps(from, to); }

template <typename T>
void resize_image(const T* image, int64_t height, int64_t width, float* out, int64_t out_height, int64_t out_width,
                  int threads) {
  const Taps rows = resize_taps(height, out_height), cols = resize_taps(width, out_width);
  std::vector<float> tall(static_cast<size_t>(out_height * width));  // (h, W): rows resized
  parallel_for(out_height, threads, 8, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      float* __restrict acc = tall.data() + y * width;
      std::fill(acc, acc + width, 0.0f);
      const float* w = rows.at(y);
      for (int64_t k = 0; k < rows.count; ++k) {
        const T* __restrict src = image + (rows.first[static_cast<size_t>(y)] + k) * width;
        const float wk = w[k];
        for (int64_t x = 0; x < width; ++x) acc[x] += wk * static_cast<float>(src[x]);
      }
    }
  });
  widen_rows(tall.data(), out_height, cols, out, threads);
}

void widen_rows(const float* map, int64_t rows, const Taps& cols, float* out, int threads) {
  parallel_for(rows, threads, 16, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const float* src = map + y * cols.from;
      float* dst = out + y * cols.to;
      for (int64_t x = 0; x < cols.to; ++x) {
        const float* w = cols.at(x);
        const float* s = src + cols.first[static_cast<size_t>(x)];
        float v = 0.0f;
        for (int64_t k = 0; k < cols.count; ++k) v += w[k] * s[k];
        dst[x] = v;
      }
    }
  });
}

void combine_rows(const float* wide, int64_t width, const Taps& taps, int64_t y, float* dst) {
  const float* w = taps.at(y);
  const float* __restrict first = wide + taps.first[static_cast<size_t>(y)] * width;
  float* __restrict out = dst;
  const float w0 = w[0];
  for (int64_t x = 0; x < width; ++x) out[x] = w0 * first[x];
  for (int64_t k = 1; k < taps.count; ++k) {
    const float* __restrict src = first + k * width;
    const float wk = w[k];
    for (int64_t x = 0; x < width; ++x) out[x] += wk * src[x];
  }
}

namespace {

// Running sums of a line of n values with stride `stride`: out[i] = the sum over [i - r, i + r] cut to the line.
// The running sum is a double scalar: float32 would drift by n roundings along the line.
void line_sums(const float* in, int64_t n, int64_t stride, int64_t r, float* out) {
  double sum = 0.0;
  for (int64_t i = 0; i < std::min(r, n); ++i) sum += in[i * stride];
  for (int64_t i = 0; i < n; ++i) {
    if (i + r < n) sum += in[(i + r) * stride];
    if (i - r - 1 >= 0) sum -= in[(i - r - 1) * stride];
    out[i * stride] = static_cast<float>(sum);
  }
}

}  // namespace

void box_mean(const float* map, int64_t height, int64_t width, int64_t radius, float* out) {
  std::vector<float> rows(static_cast<size_t>(height * width));
  for (int64_t y = 0; y < height; ++y) line_sums(map + y * width, width, 1, radius, rows.data() + y * width);
  for (int64_t x = 0; x < width; ++x) line_sums(rows.data() + x, height, width, radius, out + x);
  // The number of pixels in each cut window is a product of a row count and a column count.
  for (int64_t y = 0; y < height; ++y) {
    const int64_t ny = std::min(height - 1, y + radius) - std::max<int64_t>(0, y - radius) + 1;
    for (int64_t x = 0; x < width; ++x) {
      const int64_t nx = std::min(width - 1, x + radius) - std::max<int64_t>(0, x - radius) + 1;
      out[y * width + x] /= static_cast<float>(ny * nx);
    }
  }
}

template void resize_image<uint16_t>(const uint16_t*, int64_t, int64_t, float*, int64_t, int64_t, int);
template void resize_image<float>(const float*, int64_t, int64_t, float*, int64_t, int64_t, int);

}  // namespace dexrt
