#include "dexrt/robust_range.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <sstream>
#include <string>

#include "dexrt/error.h"

namespace dexrt {

SampleGrid sample_grid(int64_t height, int64_t width) {
  if (height <= 0 || width <= 0) throw Error(ErrorKind::Input, "the image is empty");
  // Python's round(n * (1 - 0.8) / 2): the same double operations, rounded half to even (nearbyint's default).
  auto margin = [](int64_t n) {
    return static_cast<int64_t>(std::nearbyint(static_cast<double>(n) * (1.0 - kRangeCentralFraction) / 2.0));
  };
  SampleGrid g;
  g.top = margin(height);
  g.left = margin(width);
  const int64_t core_h = height - 2 * g.top, core_w = width - 2 * g.left;
  const double ratio = static_cast<double>(core_h * core_w) / static_cast<double>(kRangeMaxSamples);
  g.step = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(ratio))));
  g.rows = (core_h + g.step - 1) / g.step;
  g.cols = (core_w + g.step - 1) / g.step;
  return g;
}

namespace {

// numpy.percentile(sample, p), method "linear": the virtual index (n - 1) * q, its floor's neighbours, and
// numpy's _lerp, which interpolates from the nearer end.
double percentile(std::vector<double>& sample, double p) {
  const auto n = static_cast<int64_t>(sample.size());
  const double q = p / 100.0;
  const double virtual_index = static_cast<double>(n - 1) * q;
  if (virtual_index >= static_cast<double>(n - 1)) return *std::max_element(sample.begin(), sample.end());
  const double below = std::floor(virtual_index);
  const auto k = static_cast<int64_t>(below);
  std::nth_element(sample.begin(), sample.begin() + k, sample.end());
  const double a = sample[static_cast<size_t>(k)];
  const double b = *std::min_element(sample.begin() + k + 1, sample.end());
  const double gamma = virtual_index - below;
  const double diff = b - a;
  return gamma >= 0.5 ? b - diff * (1.0 - gamma) : a + diff * gamma;
}

std::string number(double v) {
  std::ostringstream s;
  s.precision(7);
  s << v;
  return s.str();
}

}  // namespace

Range percentile_range(std::vector<double>& sample) {
  if (sample.empty()) throw Error(ErrorKind::Input, "the image is empty");
  for (double v : sample) {
    if (!std::isfinite(v)) throw Error(ErrorKind::Input, "the image contains NaN or infinite values");
  }
  Range r;
  r.lo = percentile(sample, kRangeLowPercentile);
  r.hi = percentile(sample, kRangeHighPercentile);
  if (!(r.hi > r.lo)) r.hi = r.lo + std::max(1.0, std::abs(r.lo)) * 1e-3;
  return r;
}

template <typename T>
Range robust_range(const T* image, int64_t height, int64_t width) {
  const SampleGrid g = sample_grid(height, width);
  std::vector<double> sample;
  sample.reserve(static_cast<size_t>(g.size()));
  for (int64_t r = 0; r < g.rows; ++r) {
    const T* row = image + (g.top + r * g.step) * width + g.left;
    for (int64_t c = 0; c < g.cols; ++c) sample.push_back(static_cast<double>(row[c * g.step]));
  }
  return percentile_range(sample);
}

ImageWindow image_window(const Range& range) {
  const double span = range.hi - range.lo;
  ImageWindow w;
  w.lo = static_cast<float>(range.lo);
  w.span = static_cast<float>(span);
  w.inv_span = static_cast<float>(1.0 / span);
  // An output is at most about span * 1.25 + |lo| (the network window's reach): it must stay a finite float32.
  const double reach = std::abs(range.lo) + 2.0 * std::abs(span);
  if (!std::isfinite(span) || !(reach < static_cast<double>(FLT_MAX)) || !(w.inv_span >= FLT_MIN)) {
    throw Error(ErrorKind::Input, "the image's value range (" + number(range.lo) + " to " + number(range.hi) +
                                      ") is too wide to map in float32 without overflow; scale the image into "
                                      "a narrower range");
  }
  return w;
}

template Range robust_range<uint16_t>(const uint16_t*, int64_t, int64_t);
template Range robust_range<float>(const float*, int64_t, int64_t);
template Range robust_range<double>(const double*, int64_t, int64_t);

}  // namespace dexrt
