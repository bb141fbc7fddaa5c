// Move-only RAII owners for the CUDA runtime handles dexrt uses: streams, events, device and pinned host
// memory, captured graphs. Every failing CUDA call becomes a dexrt::Error(ErrorKind::Engine); destructors
// never throw (a failure there is ignored: the process may be tearing down its CUDA context).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace dexrt::cuda {

// Throws dexrt::Error naming `what` and CUDA's own text for `status` unless it is cudaSuccess.
void check(cudaError_t status, const char* what);

// What the CUDA runtime can see. Never throws: without a driver or a GPU, `error` says why.
struct RuntimeStatus {
  int runtime_version = 0;  // e.g. 13000 for CUDA 13.0 (the runtime linked into dexrt)
  int driver_version = 0;   // 0 when no driver is installed
  int device_count = 0;
  std::string error;  // empty when at least one device is usable
};
RuntimeStatus runtime_status();

struct DeviceInfo {
  int index = 0;
  std::string name;  // e.g. "NVIDIA H100 80GB HBM3"
  int major = 0, minor = 0;  // compute capability
  size_t total_memory = 0;   // bytes
  int multiprocessors = 0;
};
// Throws when no device is usable.
DeviceInfo device_info(int index);

// Makes `device` current for the calling thread for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// A non-blocking stream: it does not synchronize with the legacy default stream.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

// An event without timing, for ordering work across streams.
class Event {
 public:
  explicit Event(bool timing = false);  // timing: usable with elapsed_us (slightly slower to record)
  ~Event();
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  void record(cudaStream_t stream) const;
  // Microseconds between two recorded timing events, once both have completed.
  static double elapsed_us(const Event& from, const Event& to);

 private:
  cudaEvent_t event_ = nullptr;
};

// Where a GrowingBuffer's memory comes from.
struct DeviceMemory {
  static void allocate(void** data, size_t bytes);  // cudaMalloc
  static void free(void* data) noexcept;
};
// Page-locked host memory: the only host memory cudaMemcpyAsync copies without a hidden staging copy,
// and the only kind such a copy overlaps with other work.
struct PinnedMemory {
  static void allocate(void** data, size_t bytes);  // cudaMallocHost
  static void free(void* data) noexcept;
};

// Memory that only grows: reserve() reallocates when asked for more than it holds, so a buffer reused
// across batches of varying size settles at the largest.
template <class Memory>
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  explicit GrowingBuffer(size_t bytes) { reserve(bytes); }
  ~GrowingBuffer() { release(); }
  GrowingBuffer(GrowingBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  GrowingBuffer& operator=(GrowingBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;

  void reserve(size_t bytes) {  // contents are not kept
    if (bytes <= bytes_) return;
    release();
    Memory::allocate(&data_, bytes);
    bytes_ = bytes;
  }
  void* get() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  void release() noexcept {
    if (data_) Memory::free(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = GrowingBuffer<DeviceMemory>;
using PinnedBuffer = GrowingBuffer<PinnedMemory>;

// An instantiated CUDA graph: the work captured from a stream, replayed with one launch.
class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec();
  GraphExec(GraphExec&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  GraphExec& operator=(GraphExec&& other) noexcept;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;

  // Captures what `enqueue` puts on `stream` (which must be idle and not the legacy default stream) and
  // instantiates it. The work is recorded, not run.
  template <typename F>
  static GraphExec capture(cudaStream_t stream, F&& enqueue);

  explicit operator bool() const { return exec_ != nullptr; }
  void launch(cudaStream_t stream) const;

 private:
  static GraphExec instantiate(cudaStream_t stream, cudaError_t enqueue_status, const std::string& enqueue_error);
  cudaGraphExec_t exec_ = nullptr;
};

template <typename F>
GraphExec GraphExec::capture(cudaStream_t stream, F&& enqueue) {
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  // The capture must be ended whatever `enqueue` does, or the stream stays in capture mode.
  try {
    enqueue();
  } catch (const std::exception& e) {
    return instantiate(stream, cudaErrorStreamCaptureInvalidated, e.what());
  }
  return instantiate(stream, cudaSuccess, "");
}

}  // namespace dexrt::cuda
