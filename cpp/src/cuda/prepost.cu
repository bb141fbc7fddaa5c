// CUDA pre/post kernels. See dexrt/cuda/prepost.h for the bit-exactness contract with the CPU path.
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "dexrt/cuda/prepost.h"
#include "dexrt/cuda/runtime.h"
#include "dexrt/error.h"

namespace dexrt::cuda {

namespace {

constexpr int kBlockX = 32, kBlockY = 8;
constexpr unsigned kMaxGridZ = 65535;  // CUDA's limit on gridDim.z; larger batches loop inside the kernel

struct Affines {
  float scale[kMaxChannels];
  float offset[kMaxChannels];
  bool carries[kMaxChannels];  // adds the image's lo on the way out (parts.h)
};

__device__ __forceinline__ float apply(float v, float scale, float offset) {
  // Two rounded operations, as on the CPU: the _rn intrinsics are never contracted into an FMA.
  return __fadd_rn(__fmul_rn(v, scale), offset);
}

// The CPU's reflect_index, in 32-bit: image sides are at most 16384.
__device__ __forceinline__ int reflect(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * (n - 1);
  int k = i % period;
  if (k < 0) k += period;
  return k < n ? k : period - k;
}

__device__ __forceinline__ float load(uint16_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__half v) { return __half2float(v); }  // exact

template <typename T>
__device__ __forceinline__ T store(float v);
template <>
__device__ __forceinline__ float store<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half store<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ uint16_t store<uint16_t>(float v) {
  if (!(v > 0.0f)) return 0;  // NaN and negatives
  if (v >= 65535.0f) return 65535;
  return static_cast<uint16_t>(rintf(v));  // half to even
}

// The CPU's ImageWindow::identity(): such a window is left out there, and so here.
__device__ __forceinline__ bool is_identity(const ImageWindow& w) {
  return w.lo == 0.0f && w.span == 1.0f && w.inv_span == 1.0f;
}

// One thread per padded pixel; z walks the batch.
template <typename In, typename Net>
__global__ void preprocess_kernel(const In* __restrict__ images, int n, int height, int width, int padded_height,
                                  int padded_width, int top, int left, float scale, float offset,
                                  const ImageWindow* __restrict__ own, Net* __restrict__ net) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= padded_width || y >= padded_height) return;
  const int sy = reflect(y - top, height), sx = reflect(x - left, width);
  for (int b = blockIdx.z; b < n; b += gridDim.z) {
    float v = load(images[(static_cast<int64_t>(b) * height + sy) * width + sx]);
    if (own != nullptr && !is_identity(own[b])) v = __fmul_rn(__fsub_rn(v, own[b].lo), own[b].inv_span);
    net[(static_cast<int64_t>(b) * padded_height + y) * padded_width + x] = store<Net>(apply(v, scale, offset));
  }
}

// One thread per sampled pixel; z walks the batch.
template <typename In>
__global__ void gather_kernel(const In* __restrict__ images, int n, int height, int width, int top, int left,
                              int step, int rows, int cols, float* __restrict__ samples) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int r = blockIdx.y * blockDim.y + threadIdx.y;
  if (c >= cols || r >= rows) return;
  for (int b = blockIdx.z; b < n; b += gridDim.z) {
    const int64_t at = (static_cast<int64_t>(b) * height + top + static_cast<int64_t>(r) * step) * width + left +
                       static_cast<int64_t>(c) * step;
    samples[(static_cast<int64_t>(b) * rows + r) * cols + c] = load(images[at]);
  }
}

// One thread per output pixel; z walks (batch, channel) pairs.
template <typename Net, typename Out>
__global__ void postprocess_kernel(const Net* __restrict__ net, int n, int channels, int height, int width,
                                   int padded_height, int padded_width, int top, int left, Affines affines,
                                   const ImageWindow* __restrict__ own, Out* __restrict__ images) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= width || y >= height) return;
  const int planes = n * channels;
  for (int p = blockIdx.z; p < planes; p += gridDim.z) {
    const int b = p / channels, c = p % channels;
    const Net v = net[(static_cast<int64_t>(p) * padded_height + y + top) * padded_width + x + left];
    float value = apply(load(v), affines.scale[c], affines.offset[c]);
    if (own != nullptr && !is_identity(own[b])) {
      value = apply(value, own[b].span, affines.carries[c] ? own[b].lo : 0.0f);
    }
    // (C, N, H, W): each output kind is one contiguous block
    images[((static_cast<int64_t>(c) * n + b) * height + y) * width + x] = store<Out>(value);
  }
}

dim3 grid_for(int64_t width, int64_t height, int64_t planes) {
  return dim3(static_cast<unsigned>((width + kBlockX - 1) / kBlockX),
              static_cast<unsigned>((height + kBlockY - 1) / kBlockY),
              static_cast<unsigned>(std::min<int64_t>(planes, kMaxGridZ)));
}

[[noreturn]] void unsupported(const char* what, DType a, DType b) {
  throw Error(ErrorKind::Engine, std::string(what) + ": no kernel for " + dtype_name(a) + " -> " + dtype_name(b));
}

void check_sizes(int64_t n, const PadGeometry& g) {
  // The kernels index rows and columns in 32 bits (offsets in 64).
  constexpr int64_t kMax = 1 << 30;
  if (n <= 0 || n > kMax || g.padded_height > kMax || g.padded_width > kMax) {
    throw Error(ErrorKind::Input, "batch of " + std::to_string(n) + " images of " + std::to_string(g.height) + "x" +
                                      std::to_string(g.width) + " is outside what the CUDA kernels index");
  }
}

template <typename In, typename Net>
void launch_pre(const void* images, int64_t n, const PadGeometry& g, Affine f, const ImageWindow* own, void* net,
                cudaStream_t stream) {
  preprocess_kernel<In, Net><<<grid_for(g.padded_width, g.padded_height, n), dim3(kBlockX, kBlockY), 0, stream>>>(
      static_cast<const In*>(images), static_cast<int>(n), static_cast<int>(g.height), static_cast<int>(g.width),
      static_cast<int>(g.padded_height), static_cast<int>(g.padded_width), static_cast<int>(g.top),
      static_cast<int>(g.left), f.scale, f.offset, own, static_cast<Net*>(net));
  check(cudaGetLastError(), "launching the preprocess kernel");
}

template <typename Net, typename Out>
void launch_post(const void* net, int64_t n, int64_t channels, const PadGeometry& g, const Affines& affines,
                 const ImageWindow* own, void* images, cudaStream_t stream) {
  postprocess_kernel<Net, Out><<<grid_for(g.width, g.height, n * channels), dim3(kBlockX, kBlockY), 0, stream>>>(
      static_cast<const Net*>(net), static_cast<int>(n), static_cast<int>(channels), static_cast<int>(g.height),
      static_cast<int>(g.width), static_cast<int>(g.padded_height), static_cast<int>(g.padded_width),
      static_cast<int>(g.top), static_cast<int>(g.left), affines, own, static_cast<Out*>(images));
  check(cudaGetLastError(), "launching the postprocess kernel");
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::UInt16: return "uint16";
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
  }
  return "unknown";
}

size_t dtype_size(DType t) { return t == DType::Float32 ? 4 : 2; }

void preprocess(const void* images, DType image_type, int64_t n, const PadGeometry& g, Window window,
                const ImageWindow* own, void* net_input, DType net_type, cudaStream_t stream) {
  check_sizes(n, g);
  const Affine f = to_network(window);  // the CPU's own scale and offset
  if (image_type == DType::UInt16 && net_type == DType::Float16) {
    return launch_pre<uint16_t, __half>(images, n, g, f, own, net_input, stream);
  }
  if (image_type == DType::UInt16 && net_type == DType::Float32) {
    return launch_pre<uint16_t, float>(images, n, g, f, own, net_input, stream);
  }
  if (image_type == DType::Float32 && net_type == DType::Float16) {
    return launch_pre<float, __half>(images, n, g, f, own, net_input, stream);
  }
  if (image_type == DType::Float32 && net_type == DType::Float32) {
    return launch_pre<float, float>(images, n, g, f, own, net_input, stream);
  }
  unsupported("preprocess", image_type, net_type);
}

void postprocess(const void* net_output, DType net_type, int64_t n, int64_t channels, const PadGeometry& g,
                 const std::vector<Window>& windows, const ImageWindow* own, const std::vector<char>& offsets,
                 void* images, DType image_type, cudaStream_t stream) {
  check_sizes(n, g);
  if (channels <= 0 || channels > kMaxChannels || static_cast<int64_t>(windows.size()) != channels) {
    throw Error(ErrorKind::Engine, "postprocess: " + std::to_string(windows.size()) + " windows for " +
                                       std::to_string(channels) + " channels (at most " +
                                       std::to_string(kMaxChannels) + ")");
  }
  Affines affines{};
  for (int64_t c = 0; c < channels; ++c) {
    const Affine f = from_network(windows[static_cast<size_t>(c)]);
    affines.scale[c] = f.scale;
    affines.offset[c] = f.offset;
    affines.carries[c] = static_cast<size_t>(c) < offsets.size() && offsets[static_cast<size_t>(c)] != 0;
  }
  if (net_type == DType::Float16 && image_type == DType::UInt16) {
    return launch_post<__half, uint16_t>(net_output, n, channels, g, affines, own, images, stream);
  }
  if (net_type == DType::Float16 && image_type == DType::Float32) {
    return launch_post<__half, float>(net_output, n, channels, g, affines, own, images, stream);
  }
  if (net_type == DType::Float32 && image_type == DType::UInt16) {
    return launch_post<float, uint16_t>(net_output, n, channels, g, affines, own, images, stream);
  }
  if (net_type == DType::Float32 && image_type == DType::Float32) {
    return launch_post<float, float>(net_output, n, channels, g, affines, own, images, stream);
  }
  unsupported("postprocess", net_type, image_type);
}

void gather_samples(const void* images, DType image_type, int64_t n, int64_t height, int64_t width,
                    const SampleGrid& grid, float* samples, cudaStream_t stream) {
  check_sizes(n, plan_padding(height, width, 1));
  if (grid.rows <= 0 || grid.cols <= 0) return;
  const dim3 blocks = grid_for(grid.cols, grid.rows, n), threads(kBlockX, kBlockY);
  const int args[] = {static_cast<int>(n), static_cast<int>(height), static_cast<int>(width),
                      static_cast<int>(grid.top), static_cast<int>(grid.left), static_cast<int>(grid.step),
                      static_cast<int>(grid.rows), static_cast<int>(grid.cols)};
  if (image_type == DType::UInt16) {
    gather_kernel<uint16_t><<<blocks, threads, 0, stream>>>(static_cast<const uint16_t*>(images), args[0], args[1],
                                                            args[2], args[3], args[4], args[5], args[6], args[7],
                                                            samples);
  } else if (image_type == DType::Float32) {
    gather_kernel<float><<<blocks, threads, 0, stream>>>(static_cast<const float*>(images), args[0], args[1], args[2],
                                                         args[3], args[4], args[5], args[6], args[7], samples);
  } else {
    unsupported("gather_samples", image_type, DType::Float32);
  }
  check(cudaGetLastError(), "launching the sample kernel");
}

}  // namespace dexrt::cuda
