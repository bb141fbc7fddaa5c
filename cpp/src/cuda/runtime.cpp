#include "dexrt/cuda/runtime.h"

#include "dexrt/error.h"

namespace dexrt::cuda {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  // Clears the sticky per-thread "last error" so a later, unrelated check does not report this one again.
  cudaGetLastError();
  throw Error(ErrorKind::Engine, std::string(what) + " failed: " + cudaGetErrorName(status) + " (" +
                                     cudaGetErrorString(status) + ")");
}

RuntimeStatus runtime_status() {
  RuntimeStatus s;
  cudaRuntimeGetVersion(&s.runtime_version);
  // Without libcuda.so (no driver) these report an error instead of failing to load: the runtime is
  // linked statically and opens the driver library only on first use.
  cudaDriverGetVersion(&s.driver_version);
  const cudaError_t status = cudaGetDeviceCount(&s.device_count);
  if (status != cudaSuccess) {
    s.device_count = 0;
    s.error = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    cudaGetLastError();
  } else if (s.device_count == 0) {
    s.error = "no CUDA device";
  }
  return s;
}

DeviceInfo device_info(int index) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  DeviceInfo d;
  d.index = index;
  d.name = prop.name;
  d.major = prop.major;
  d.minor = prop.minor;
  d.total_memory = prop.totalGlobalMem;
  d.multiprocessors = prop.multiProcessorCount;
  return d;
}

DeviceGuard::DeviceGuard(int device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    changed_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (changed_) cudaSetDevice(previous_);
}

Stream::Stream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"); }

Stream::~Stream() {
  if (stream_) cudaStreamDestroy(stream_);
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

void Stream::synchronize() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

Event::Event(bool timing) {
  check(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreateWithFlags");
}

double Event::elapsed_us(const Event& from, const Event& to) {
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, from.event_, to.event_), "cudaEventElapsedTime");
  return 1000.0 * static_cast<double>(ms);
}

Event::~Event() {
  if (event_) cudaEventDestroy(event_);
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

void Event::record(cudaStream_t stream) const { check(cudaEventRecord(event_, stream), "cudaEventRecord"); }

void DeviceMemory::allocate(void** data, size_t bytes) { check(cudaMalloc(data, bytes), "cudaMalloc"); }
void DeviceMemory::free(void* data) noexcept { cudaFree(data); }

void PinnedMemory::allocate(void** data, size_t bytes) { check(cudaMallocHost(data, bytes), "cudaMallocHost"); }
void PinnedMemory::free(void* data) noexcept { cudaFreeHost(data); }

GraphExec::~GraphExec() {
  if (exec_) cudaGraphExecDestroy(exec_);
}

GraphExec& GraphExec::operator=(GraphExec&& other) noexcept {
  if (this != &other) {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

GraphExec GraphExec::instantiate(cudaStream_t stream, cudaError_t enqueue_status, const std::string& enqueue_error) {
  cudaGraph_t graph = nullptr;
  const cudaError_t end_status = cudaStreamEndCapture(stream, &graph);
  if (enqueue_status != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw Error(ErrorKind::Engine, "capturing a CUDA graph failed: " + enqueue_error);
  }
  check(end_status, "cudaStreamEndCapture");
  GraphExec result;
  const cudaError_t status = cudaGraphInstantiate(&result.exec_, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph is independent of the graph it was made from
  check(status, "cudaGraphInstantiate");
  return result;
}

void GraphExec::launch(cudaStream_t stream) const { check(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch"); }

}  // namespace dexrt::cuda
