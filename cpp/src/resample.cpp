#include "dexrt/resample.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "dexrt/error.h"
#include "dexrt/parallel.h"
#include "dexrt/simd.h"

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

namespace {

template <typename T>
inline void accumulate(float* __restrict acc, const T* __restrict src, float weight, int64_t n) {
  for (int64_t x = 0; x < n; ++x) acc[x] += weight * static_cast<float>(src[x]);
}

DEXRT_VECTOR_CLONES void accumulate_row(float* acc, const uint16_t* src, float weight, int64_t n) {
  accumulate(acc, src, weight, n);
}
DEXRT_VECTOR_CLONES void accumulate_row(float* acc, const float* src, float weight, int64_t n) {
  accumulate(acc, src, weight, n);
}

}  // namespace

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
        if (w[k] != 0.0f) accumulate_row(acc, image + (rows.first[static_cast<size_t>(y)] + k) * width, w[k], width);
      }
    }
  });
  widen_rows(tall.data(), out_height, cols, out, threads);
}

namespace {

// One row widened by two-tap (linear) or four-tap (cubic) taps, the usual cases: index and weight streams, whose
// gathers vectorise (AVX2 has them).
DEXRT_VECTOR_CLONES void widen_row_2(const float* __restrict src, const int32_t* __restrict first,
                                     const float* __restrict w, float* __restrict dst, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = w[2 * x] * src[first[x]] + w[2 * x + 1] * src[first[x] + 1];
}

DEXRT_VECTOR_CLONES void widen_row_4(const float* __restrict src, const int32_t* __restrict first,
                                     const float* __restrict w, float* __restrict dst, int64_t n) {
  for (int64_t x = 0; x < n; ++x) {
    const float* s = src + first[x];
    const float* k = w + 4 * x;
    dst[x] = k[0] * s[0] + k[1] * s[1] + k[2] * s[2] + k[3] * s[3];
  }
}

}  // namespace

void widen_rows(const float* map, int64_t rows, const Taps& cols, float* out, int threads) {
  if (cols.count == 2 || cols.count == 4) {
    std::vector<int32_t> first(static_cast<size_t>(cols.to));
    for (int64_t x = 0; x < cols.to; ++x) {
      first[static_cast<size_t>(x)] = static_cast<int32_t>(cols.first[static_cast<size_t>(x)]);
    }
    parallel_for(rows, threads, 16, [&](int64_t begin, int64_t end) {
      for (int64_t y = begin; y < end; ++y) {
        const float* src = map + y * cols.from;
        float* dst = out + y * cols.to;
        if (cols.count == 2) {
          widen_row_2(src, first.data(), cols.weights.data(), dst, cols.to);
        } else {
          widen_row_4(src, first.data(), cols.weights.data(), dst, cols.to);
        }
      }
    });
    return;
  }
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

DEXRT_VECTOR_CLONES void combine_rows(const float* wide, int64_t width, const Taps& taps, int64_t y, float* dst) {
  // One pass for the usual two and four taps; the sum is always from the first tap on, as in the loop below.
  const float* w = taps.at(y);
  const float* __restrict s0 = wide + taps.first[static_cast<size_t>(y)] * width;
  float* __restrict out = dst;
  if (taps.count == 2) {
    const float* __restrict s1 = s0 + width;
    for (int64_t x = 0; x < width; ++x) out[x] = w[0] * s0[x] + w[1] * s1[x];
    return;
  }
  if (taps.count == 4) {
    const float* __restrict s1 = s0 + width;
    const float* __restrict s2 = s1 + width;
    const float* __restrict s3 = s2 + width;
    for (int64_t x = 0; x < width; ++x) out[x] = w[0] * s0[x] + w[1] * s1[x] + w[2] * s2[x] + w[3] * s3[x];
    return;
  }
  for (int64_t x = 0; x < width; ++x) out[x] = w[0] * s0[x];
  for (int64_t k = 1; k < taps.count; ++k) {
    const float* __restrict src = s0 + k * width;
    const float wk = w[k];
    for (int64_t x = 0; x < width; ++x) out[x] += wk * src[x];
  }
}

void box_mean(const float* map, int64_t height, int64_t width, int64_t radius, float* out) {
  // Running sums in double, so they do not drift over a line: along each row a scalar, down the columns one
  // accumulator per column (a row of doubles, the width of the working image), which vectorises.
  std::vector<float> rows(static_cast<size_t>(height * width));
  for (int64_t y = 0; y < height; ++y) {
    const float* in = map + y * width;
    float* sums = rows.data() + y * width;
    double sum = 0.0;
    for (int64_t x = 0; x < std::min(radius, width); ++x) sum += in[x];
    for (int64_t x = 0; x < width; ++x) {
      if (x + radius < width) sum += in[x + radius];
      if (x - radius - 1 >= 0) sum -= in[x - radius - 1];
      sums[x] = static_cast<float>(sum);
    }
  }
  std::vector<double> column(static_cast<size_t>(width), 0.0);
  for (int64_t y = 0; y < std::min(radius, height); ++y) {
    for (int64_t x = 0; x < width; ++x) column[static_cast<size_t>(x)] += rows[static_cast<size_t>(y * width + x)];
  }
  std::vector<float> count_x(static_cast<size_t>(width));  // pixels of each cut window along a row
  for (int64_t x = 0; x < width; ++x) {
    count_x[static_cast<size_t>(x)] =
        static_cast<float>(std::min(width - 1, x + radius) - std::max<int64_t>(0, x - radius) + 1);
  }
  for (int64_t y = 0; y < height; ++y) {
    if (y + radius < height) {
      const float* add = rows.data() + (y + radius) * width;
      for (int64_t x = 0; x < width; ++x) column[static_cast<size_t>(x)] += add[x];
    }
    if (y - radius - 1 >= 0) {
      const float* sub = rows.data() + (y - radius - 1) * width;
      for (int64_t x = 0; x < width; ++x) column[static_cast<size_t>(x)] -= sub[x];
    }
    const auto count_y = static_cast<float>(std::min(height - 1, y + radius) - std::max<int64_t>(0, y - radius) + 1);
    float* dst = out + y * width;
    for (int64_t x = 0; x < width; ++x) {
      dst[x] = static_cast<float>(column[static_cast<size_t>(x)]) / (count_y * count_x[static_cast<size_t>(x)]);
    }
  }
}

template void resize_image<uint16_t>(const uint16_t*, int64_t, int64_t, float*, int64_t, int64_t, int);
template void resize_image<float>(const float*, int64_t, int64_t, float*, int64_t, int64_t, int);

}  // namespace dexrt
