// The value contract between stored images and the network, and the padding to the size multiple.
//
// A window (lo, hi) maps stored values linearly onto the network's range: lo -> -1, hi -> +1.
// Input: x_net = (x - lo) * 2 / (hi - lo) - 1. Output: x = (y_net + 1) * (hi - lo) / 2 + lo; uint16 outputs are
// rounded half to even and clipped to [0, 65535], float32 outputs are neither rounded nor clipped.
//
// Each image also carries its own window (ImageWindow), applied outside the network's: a normalised engine maps
// every image by its robust range (robust_range.h), x_n = (x - lo) / span, before the network window, and maps
// its outputs back into the image's grey values after it, y = span * y_n (+ lo for a part that carries the
// input's offset; bone does not: parts.h). For any other engine the image window is the identity and the
// pipeline is exactly the fixed-window one.
//
// Images whose height or width is not a multiple of the network's size multiple are mirror-padded
// ("reflect", edge not repeated) on all sides, the image centred, and the outputs cropped back.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

namespace dexrt {

struct Window {
  float lo = 0.0f;
  float hi = 65535.0f;
};

// The affine map of a window, computed once per batch: x_net = x * scale + offset on the way in, and
// x = y_net * scale + offset on the way out. Applied as a rounded multiply, then a rounded add, never fused
// into one FMA: the CUDA kernels (dexrt/cuda/prepost.h) do the same and match this bit for bit.
struct Affine {
  float scale = 1.0f, offset = 0.0f;
  float operator()(float v) const { return v * scale + offset; }
};
Affine to_network(Window w);    // stored value -> network value
Affine from_network(Window w);  // network value -> stored value

// One image's own window, as float32 numbers. In: x_n = (x - lo) * inv_span (a rounded subtract, then a rounded
// multiply). Out: y = y_n * span + offset, offset = lo or 0 per part (a rounded multiply, then a rounded add).
// These are the float32 operations the Python normalisation used to make, so outputs are bit for bit today's.
struct ImageWindow {
  float lo = 0.0f, span = 1.0f, inv_span = 1.0f;
  bool identity() const { return lo == 0.0f && span == 1.0f && inv_span == 1.0f; }
  float normalise(float v) const { return (v - lo) * inv_span; }
  Affine to_image(bool carries_offset) const { return {span, carries_offset ? lo : 0.0f}; }
};

// A value as a stored pixel: uint16 rounded half to even and clipped to [0, 65535] (NaN -> 0); float32 as is.
template <typename T>
inline T store_as(float v) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    // Selects, not branches, so that loops of stores vectorise: NaN and anything not above 0 -> 0, then the clip.
    v = v > 0.0f ? v : 0.0f;
    v = v < 65535.0f ? v : 65535.0f;
    // Round half to even: adding and removing 1.5 * 2^23 rounds v to an integer in the default rounding
    // mode (exact for 0 <= v < 2^22; float arithmetic is not reassociated without -ffast-math). Same result
    // as rintf on the GPU, without a libm call. Through int32, which converts packed.
    constexpr float kMagic = 12582912.0f;
    return static_cast<uint16_t>(static_cast<int32_t>((v + kMagic) - kMagic));
  } else {
    return v;
  }
}

// Whether n float32 values are all finite; a float32 output that is not is an InputError with this message.
bool all_finite(const float* values, int64_t n);
extern const char* const kNotFiniteMessage;

// Where an (H, W) image sits inside the padded (Hp, Wp) network input.
struct PadGeometry {
  int64_t height = 0, width = 0;                // image
  int64_t padded_height = 0, padded_width = 0;  // network input, multiples of the size multiple
  int64_t top = 0, left = 0;                    // offset of the image inside the padded frame
};

PadGeometry plan_padding(int64_t height, int64_t width, int64_t size_multiple);

// Index of the source pixel that mirrors padded position `i` (may be outside [0, n)) into [0, n).
int64_t reflect_index(int64_t i, int64_t n);

// One (H, W) T image -> one (Hp, Wp) f32 plane in network range, mirror-padded.
template <typename T>
void preprocess_image(const T* image, const PadGeometry& g, Window window, const ImageWindow& own, float* net_plane);

// One image's (C, Hp, Wp) f32 network output -> C cropped (H, W) T planes, one network window per channel, then
// the image's own window (channel c adds the image's lo when offsets[c] is set); channel c is written at
// out + c * channel_stride.
template <typename T>
void postprocess_image(const float* net_output, const PadGeometry& g, const std::vector<Window>& windows,
                       const ImageWindow& own, const std::vector<char>& offsets, T* out, int64_t channel_stride);

}  // namespace dexrt
