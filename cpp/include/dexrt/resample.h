// Separable resampling between an image's own size and the network's working size, pixel-centre aligned
// (output pixel i of n covers source coordinates [i, i + 1) * from / to), in float32.
//
// Shrinking averages the area under each output pixel (each source pixel weighted by how much of it the output
// pixel covers); enlarging interpolates linearly or with Keys' cubic (a = -0.5), the edge pixel repeated.
// Every weight set sums to 1 (up to rounding), so a flat image stays flat.
#pragma once

#include <cstdint>
#include <vector>

namespace dexrt {

// For each output index i: `count` weights for source indices first[i], first[i] + 1, ... (zero-padded).
struct Taps {
  int64_t from = 0, to = 0, count = 0;
  std::vector<int64_t> first;  // (to,)
  std::vector<float> weights;  // (to, count)
  const float* at(int64_t i) const { return weights.data() + i * count; }
};

Taps area_taps(int64_t from, int64_t to);    // to <= from
Taps linear_taps(int64_t from, int64_t to);  // any sizes; 2 taps
Taps cubic_taps(int64_t from, int64_t to);   // any sizes; 4 taps
// Area averaging when shrinking, linear interpolation otherwise.
Taps resize_taps(int64_t from, int64_t to);

// (H, W) T image -> (h, w) float32, by resize_taps on each axis. Rows first: the (h, W) pass reads the image's
// rows contiguously (and vectorises); the columns pass then works on h rows only.
template <typename T>
void resize_image(const T* image, int64_t height, int64_t width, float* out, int64_t out_height, int64_t out_width,
                  int threads);

// (rows, w) map -> (rows, W) by `cols` (w -> W): the horizontal half of bringing a working-size map to full size.
void widen_rows(const float* map, int64_t rows, const Taps& cols, float* out, int threads);

// Row y of a (rows, W) widened map brought to full height by `taps` (rows -> H) into dst (W,).
void combine_rows(const float* wide, int64_t width, const Taps& taps, int64_t y, float* dst);

// The mean over the (2r + 1)^2 window around each pixel of an (h, w) map, the window cut at the edges (each
// pixel's mean is over the pixels that exist): He et al.'s box filter, by running sums, O(N) whatever r.
void box_mean(const float* map, int64_t height, int64_t width, int64_t radius, float* out);

}  // namespace dexrt
