// The robust range of an image: the window a normalised engine maps it by (a manifest's input "normalisation",
// dexrt.runtime.contract.NORMALISATION, which is built from the constants below).
//
// lo and hi are the 1st and 99th percentiles of the central 80 % of the image (collimation edges and corner
// markers mostly lie outside it; the percentiles ignore the rest), taken over a regular subsample of at most
// 65536 pixels. The percentiles are numpy's default ("linear", Hyndman & Fan's 7th) to the last bit, in double,
// so the windows and every output are the same as when Python computed them. A flat image gets
// hi = lo + max(1, |lo|) * 1e-3.
#pragma once

#include <cstdint>
#include <vector>

#include "dexrt/prepost.h"

namespace dexrt {

constexpr double kRangeLowPercentile = 1.0;
constexpr double kRangeHighPercentile = 99.0;
constexpr double kRangeCentralFraction = 0.8;
constexpr int64_t kRangeMaxSamples = int64_t{1} << 16;

// The sampled pixels of an (H, W) image: rows top, top + step, ... (`rows` of them), columns likewise.
struct SampleGrid {
  int64_t top = 0, left = 0, step = 1, rows = 0, cols = 0;
  int64_t size() const { return rows * cols; }
};
SampleGrid sample_grid(int64_t height, int64_t width);

struct Range {
  double lo = 0.0, hi = 1.0;
};

// The percentiles of a sample (reordered in place); refuses NaN and infinities with an InputError.
Range percentile_range(std::vector<double>& sample);

// The robust range of one (H, W) image; T is uint16_t, float or double.
template <typename T>
Range robust_range(const T* image, int64_t height, int64_t width);

// The float32 numbers of the image window of a range (span = hi - lo in double, then each number rounded once),
// or an InputError when they are not finite in float32: outputs of such an image could not be represented.
ImageWindow image_window(const Range& range);

}  // namespace dexrt
