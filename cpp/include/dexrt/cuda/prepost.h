// The value contract and padding of dexrt/prepost.h on a CUDA device. All pointers are device memory and
// all work is queued on `stream` (nothing here synchronizes).
//
// Bit for bit equal to the CPU functions for the same values: the window is the same Affine (a rounded
// multiply, then a rounded add: __fmul_rn/__fadd_rn, which the compiler never fuses), uint16 results are
// rounded half to even (rintf) with the same NaN and clipping rules. Float16 network tensors are the
// float32 network values rounded to nearest even (__float2half_rn), and widened exactly on the way out,
// so a float16 pipeline equals the CPU pipeline fed with the same float16 network values.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "dexrt/prepost.h"

namespace dexrt::cuda {

enum class DType { UInt16, Float32, Float16 };

const char* dtype_name(DType t);

// The largest number of output channels the postprocess kernel takes (their windows travel as a kernel
// argument).
constexpr int kMaxChannels = 16;

// (N, H, W) images, uint16 or float32 -> (N, 1, Hp, Wp) network input, float32 or float16, mirror-padded.
void preprocess(const void* images, DType image_type, int64_t n, const PadGeometry& g, Window window,
                void* net_input, DType net_type, cudaStream_t stream);

// (N, C, Hp, Wp) network output, float32 or float16 -> (C, N, H, W) images, uint16 or float32, cropped,
// one window per channel.
void postprocess(const void* net_output, DType net_type, int64_t n, int64_t channels, const PadGeometry& g,
                 const std::vector<Window>& windows, void* images, DType image_type, cudaStream_t stream);

size_t dtype_size(DType t);

}  // namespace dexrt::cuda
