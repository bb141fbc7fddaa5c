// The full-resolution path: a frame at its own size and pixel spacing in, every output at that size out.
//
//   1. prepare: the frame area-averaged down to the model's pixel spacing (the working size, resample.h), and the
//      working image's window (robust_range.h) for a normalised engine;
//   2. the network on the working image, per-image windows and all (Engine::run);
//   3. finish: each output brought back to the frame's size. The default is He et al.'s fast guided filter, guided
//      by the frame itself: at the working size each output p is fitted locally (a (2r + 1)^2 window, box filters,
//      O(N)) as a * I + b of the working image I; a and b are brought up linearly and applied to the frame's own
//      pixels, so an output gains the frame's edges (rib cortices) where it follows the frame. Unlike He et al.,
//      b is p - a * I, not its box average: the output at the working size is then the network's own, where the
//      averaged b blurred it and scored below plain bicubic upsampling on 1024^2 views (docs/runtime.md). The
//      alternative is plain bicubic upsampling of each output.
//      For an engine whose parts add up to its input (parts.h) the soft image is not brought up at all: it is
//      the frame minus its bone image, plus the network's correction brought up smoothly; bone's slope is clipped
//      to [0, 1] per grey value (a detail's bone part is between none and all of it).
// All of it float32 on rows, threaded (parallel.h); no full-size temporary but the outputs themselves.
#pragma once

#include <cstdint>
#include <vector>

#include "dexrt/backend.h"
#include "dexrt/prepost.h"

namespace dexrt {

// Below this relative change of either side the frame runs at its own size: 1 % is within the spread of the
// training data, and an exact identity keeps pixel values bit for bit.
constexpr double kResampleTolerance = 0.01;
// The largest working side: a 43 cm detector at the default model's 1.477 mm is 291 pixels; 4096 leaves room
// for fine-spacing models while keeping one U-Net pass within a few GB.
constexpr int64_t kMaxWorkingSide = 4096;

enum class Upsampling { Guided, Bicubic };

struct FullResolutionOptions {
  Upsampling upsampling = Upsampling::Guided;
  int64_t radius = 2;       // guided filter window radius, in working-size pixels
  float epsilon = 1e-4f;    // its regularisation, in squared units of the frame's normalised range
  bool correction = true;   // add the network's soft correction (parts.h) brought up to the frame's size
  int threads = 0;          // 0: one per hardware thread
};

struct Size2 {
  int64_t height = 0, width = 0;
  bool operator==(const Size2& o) const { return height == o.height && width == o.width; }
  bool operator!=(const Size2& o) const { return !(*this == o); }
};

// The working size of an (H, W) frame of (row, column) pixel spacing for a model trained at `model_mm`: the
// frame's own size when within kResampleTolerance. InputError for spacings that are not positive and finite, or a
// working side above kMaxWorkingSide.
Size2 working_size(int64_t height, int64_t width, double row_mm, double col_mm, double model_mm);

// One frame between prepare and finish.
struct WorkImage {
  Size2 size;                 // the frame's own
  Size2 work;                 // the network's
  std::vector<float> pixels;  // (h, w) working image; empty when the frame runs at its own size
  ImageWindow window;         // the network's per-image window (identity unless the engine is normalised)
  ImageWindow guide;          // the working image's robust range: the guided filter's units
  bool resampled() const { return !pixels.empty(); }
};

// (H, W) frame -> its WorkImage for a working size; `normalised` computes the network window.
template <typename T>
WorkImage prepare_frame(const T* frame, Size2 size, Size2 work, bool normalised, const FullResolutionOptions& o);

// The network's (C, h, w) float32 outputs of a resampled frame, in its grey values -> (C, H, W) T outputs at
// out + c * channel_stride. InputError when a float32 output is not finite.
template <typename T>
void finish_frame(const T* frame, const WorkImage& work, const float* net, const Contract& contract, T* out,
                  int64_t channel_stride, const FullResolutionOptions& o);

}  // namespace dexrt
