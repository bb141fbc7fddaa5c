// The value contract and padding of dexrt/prepost.h on a CUDA device. All pointers are device memory and
// all work is queued on `stream` (nothing here synchronizes).
//
// Bit for bit equal to the CPU functions for the same values: the window is the same Affine (a rounded
// multiply, then a rounded add: __fmul_rn/__fadd_rn, which the compiler never fuses), uint16 results are
// rounded half to even (rintf) with the same NaN and clipping rules. Float16 network tensors are the
// float32 network values rounded to nearest even (__float2half_rn), and widened exactly on the way out,
// so a float16 pipeline equals the CPU pipeline fed with the same float16 network values. Per-image windows
// (ImageWindow, one per image in device memory) are applied with the same rounded operations as on the CPU:
// (x - lo) * inv_span before the network window, y * span + (lo or 0) after it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "dexrt/prepost.h"
#include "dexrt/robust_range.h"

namespace dexrt::cuda {

enum class DType { UInt16, Float32, Float16 };

const char* dtype_name(DType t);

// The largest number of output channels the postprocess kernel takes (their windows travel as a kernel
// argument).
constexpr int kMaxChannels = 16;

// (N, H, W) images, uint16 or float32 -> (N, 1, Hp, Wp) network input, float32 or float16, mirror-padded.
// `own`: n image windows in device memory, or null for the identity.
void preprocess(const void* images, DType image_type, int64_t n, const PadGeometry& g, Window window,
                const ImageWindow* own, void* net_input, DType net_type, cudaStream_t stream);

// (N, C, Hp, Wp) network output, float32 or float16 -> (C, N, H, W) images, uint16 or float32, cropped,
// one window per channel, then each image's own window (`own`: n in device memory, or null for the identity);
// channel c adds the image's lo when offsets[c] is set (parts.h).
void postprocess(const void* net_output, DType net_type, int64_t n, int64_t channels, const PadGeometry& g,
                 const std::vector<Window>& windows, const ImageWindow* own, const std::vector<char>& offsets,
                 void* images, DType image_type, cudaStream_t stream);

// The pixels of (N, H, W) device images at the grid's rows and columns -> (N, rows, cols) float32 in device
// memory (exact for uint16 and float32): what the robust range of images that stay on the device is taken of.
void gather_samples(const void* images, DType image_type, int64_t n, int64_t height, int64_t width,
                    const SampleGrid& grid, float* samples, cudaStream_t stream);

size_t dtype_size(DType t);

}  // namespace dexrt::cuda
