// The value contract between stored images and the network, and the padding to the size multiple.
//
// A window (lo, hi) maps stored values linearly onto the network's range: lo -> -1, hi -> +1.
// Input: x_net = (x - lo) * 2 / (hi - lo) - 1. Output: x = (y_net + 1) * (hi - lo) / 2 + lo; uint16 outputs are
// rounded half to even and clipped to [0, 65535], float32 outputs are neither rounded nor clipped.
//
// Images whose height or width is not a multiple of the network's size multiple are mirror-padded
// ("reflect", edge not repeated) on all sides, the image centred, and the outputs cropped back.
#pragma once

#include <cstdint>
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
void preprocess_image(const T* image, const PadGeometry& g, Window window, float* net_plane);

// One image's (C, Hp, Wp) f32 network output -> C cropped (H, W) T planes, one window per channel; channel c
// is written at out + c * channel_stride.
template <typename T>
void postprocess_image(const float* net_output, const PadGeometry& g, const std::vector<Window>& windows, T* out,
                       int64_t channel_stride);

}  // namespace dexrt
