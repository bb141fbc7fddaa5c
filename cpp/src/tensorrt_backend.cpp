// Compiled only when CMake finds a TensorRT SDK (DEXRT_WITH_TENSORRT). Written against the TensorRT 10/11
// C++ API: name-based I/O (getNbIOTensors, getIOTensorName, setTensorAddress, setInputShape, enqueueV3),
// 64-bit Dims, objects released with delete (std::unique_ptr).
#include "dexrt/tensorrt_backend.h"

#include <NvInfer.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>

#include "dexrt/cuda/runtime.h"
#include "dexrt/error.h"

namespace dexrt {

namespace {

std::mutex g_sink_mutex;
std::function<void(int, const char*)> g_sink;

std::string dims_text(const nvinfer1::Dims& d) {
  std::string s = "(";
  for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
  return s + ")";
}

std::string shape_text(const BatchShape& s) {
  return "(" + std::to_string(s.n) + ", 1, " + std::to_string(s.height) + ", " + std::to_string(s.width) + ")";
}

cuda::DType dtype_of(nvinfer1::DataType t, const std::string& tensor) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return cuda::DType::Float32;
    case nvinfer1::DataType::kHALF: return cuda::DType::Float16;
    default:
      throw Error(ErrorKind::Engine, "the plan's tensor '" + tensor + "' is neither float32 nor float16 (TensorRT "
                                     "DataType " + std::to_string(static_cast<int>(t)) + ")");
  }
}

cudaStream_t producer_stream(uintptr_t handle) {
  // __cuda_array_interface__ v3: 1 is the legacy default stream, 2 the per-thread default stream.
  if (handle == 1) return cudaStreamLegacy;
  if (handle == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(handle);
}

}  // namespace

std::string tensorrt_library_version() {
  return std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
         std::to_string(getInferLibPatchVersion());
}

void set_tensorrt_log_sink(std::function<void(int, const char*)> sink) {
  std::lock_guard<std::mutex> lock(g_sink_mutex);
  g_sink = std::move(sink);
}

// Keeps the last error for the exception that follows a failed call; forwards warnings and errors.
class TensorRtBackend::Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override {
    if (severity > Severity::kWARNING) return;
    try {
      if (severity <= Severity::kERROR) {
        std::lock_guard<std::mutex> lock(mutex_);
        last_error_ = message;
      }
      std::function<void(int, const char*)> sink;
      {
        std::lock_guard<std::mutex> lock(g_sink_mutex);
        sink = g_sink;
      }
      if (sink) sink(static_cast<int>(severity), message);
    } catch (...) {
      // A logger must not throw into TensorRT; the message is lost.
    }
  }

  std::string last_error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_error_.empty() ? "no detail from TensorRT" : last_error_;
  }

 private:
  mutable std::mutex mutex_;
  std::string last_error_;
};

struct TensorRtBackend::Slot {
  int profile = 0;
  cuda::Stream stream;
  cuda::Event producer_ready;
  cuda::Event started{true}, preprocessed{true}, inferred{true}, downloaded{true};  // stage times of a chunk
  cuda::DeviceBuffer input, output;          // the bindings, at the profile's largest shape: never moved
  cuda::DeviceBuffer images_in, images_out;  // stored images: (n, H, W) and (C, n, H, W)
  cuda::PinnedBuffer host_in, host_out;
  cuda::DeviceBuffer windows, samples;  // per-image windows of a chunk; sampled pixels of a device batch
  cuda::PinnedBuffer host_windows, host_samples;
  std::unique_ptr<nvinfer1::IExecutionContext> context;  // uses input/output: declared after them
  BatchShape shape;                                      // the context's current input shape
  std::map<std::tuple<int64_t, int64_t, int64_t>, cuda::GraphExec> graphs;  // destroyed before the context
};

// A slot taken from the idle list for one call, returned (with its stream drained) however the call ends.
class TensorRtBackend::Lease {
 public:
  explicit Lease(TensorRtBackend& backend) : backend_(backend) {
    std::unique_lock<std::mutex> lock(backend_.mutex_);
    backend_.slot_freed_.wait(lock, [&] { return !backend_.idle_.empty(); });
    slot_ = backend_.idle_.back();
    backend_.idle_.pop_back();
  }
  ~Lease() {
    cudaStreamSynchronize(slot_->stream.get());  // after an exception, work may still be queued
    {
      std::lock_guard<std::mutex> lock(backend_.mutex_);
      backend_.idle_.push_back(slot_);
    }
    backend_.slot_freed_.notify_one();
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  Slot& operator*() const { return *slot_; }

 private:
  TensorRtBackend& backend_;
  Slot* slot_ = nullptr;
};

TensorRtBackend::TensorRtBackend(const std::string& plan, TensorRtOptions options)
    : options_(options), logger_(std::make_unique<Logger>()) {
  if (options_.contexts < 1) throw Error(ErrorKind::Engine, "contexts must be at least 1");
  const cuda::RuntimeStatus status = cuda::runtime_status();
  if (status.device_count == 0) throw Error(ErrorKind::Engine, "no usable CUDA device: " + status.error);
  if (options_.device < 0 || options_.device >= status.device_count) {
    throw Error(ErrorKind::Engine, "CUDA device " + std::to_string(options_.device) + " does not exist (" +
                                       std::to_string(status.device_count) + " found)");
  }
  cuda::DeviceGuard guard(options_.device);
  const cuda::DeviceInfo info = cuda::device_info(options_.device);
  device_name_ = "cuda:" + std::to_string(options_.device) + " (" + info.name + ")";

  runtime_.reset(nvinfer1::createInferRuntime(*logger_));
  if (!runtime_) throw Error(ErrorKind::Engine, "TensorRT could not create a runtime: " + logger_->last_error());
  engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
  if (!engine_) {
    throw Error(ErrorKind::Engine, "TensorRT " + tensorrt_library_version() + " could not load the plan on " +
                                       info.name + ": " + logger_->last_error() +
                                       " (a plan runs only on the GPU model and TensorRT version it was built "
                                       "with; rebuild it with `dexrt build-engine --device gpu`)");
  }

  std::vector<std::string> inputs, outputs;
  for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
    const char* tensor = engine_->getIOTensorName(i);
    (engine_->getTensorIOMode(tensor) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).emplace_back(tensor);
  }
  if (inputs.size() != 1 || outputs.size() != 1) {
    throw Error(ErrorKind::Engine, "the plan must have one input and one output, it has " +
                                       std::to_string(inputs.size()) + " and " + std::to_string(outputs.size()));
  }
  input_name_ = inputs[0];
  output_name_ = outputs[0];
  input_type_ = dtype_of(engine_->getTensorDataType(input_name_.c_str()), input_name_);
  output_type_ = dtype_of(engine_->getTensorDataType(output_name_.c_str()), output_name_);
  for (const std::string& tensor : {input_name_, output_name_}) {
    if (engine_->getTensorFormat(tensor.c_str()) != nvinfer1::TensorFormat::kLINEAR) {
      throw Error(ErrorKind::Engine, "the plan's tensor '" + tensor + "' is not in the linear (NCHW) format");
    }
  }
  const nvinfer1::Dims in = engine_->getTensorShape(input_name_.c_str());    // (N, 1, H, W), -1 where dynamic
  const nvinfer1::Dims out = engine_->getTensorShape(output_name_.c_str());  // (N, C, H, W)
  if (in.nbDims != 4 || in.d[1] != 1) {
    throw Error(ErrorKind::Engine, "the plan's input must be (N, 1, H, W), it is " + dims_text(in));
  }
  if (out.nbDims != 4 || out.d[1] <= 0) {
    throw Error(ErrorKind::Engine, "the plan's output must be (N, C, H, W) with a fixed C, it is " + dims_text(out));
  }
  output_channels_ = out.d[1];
  if (output_channels_ > cuda::kMaxChannels) {
    throw Error(ErrorKind::Engine, "the plan has " + std::to_string(output_channels_) + " output channels, more than " +
                                       std::to_string(cuda::kMaxChannels));
  }

  // Contexts running at once must each have their own profile: the plan holds one per context.
  const int contexts = std::min(options_.contexts, engine_->getNbOptimizationProfiles());
  for (int p = 0; p < contexts; ++p) {
    auto slot = std::make_unique<Slot>();
    slot->profile = p;
    const nvinfer1::Dims max =
        engine_->getProfileShape(input_name_.c_str(), p, nvinfer1::OptProfileSelector::kMAX);  // (N, 1, H, W)
    if (max.nbDims != 4 || max.d[0] <= 0 || max.d[2] <= 0 || max.d[3] <= 0) {
      throw Error(ErrorKind::Engine, "the plan's profile " + std::to_string(p) + " has no usable largest input shape " +
                                         dims_text(max));
    }
    const auto pixels = static_cast<size_t>(max.d[0] * max.d[2] * max.d[3]);
    slot->input.reserve(pixels * cuda::dtype_size(input_type_));
    slot->output.reserve(pixels * static_cast<size_t>(output_channels_) * cuda::dtype_size(output_type_));
    slot->context.reset(engine_->createExecutionContext());
    if (!slot->context) {
      throw Error(ErrorKind::Engine, "TensorRT could not create execution context " + std::to_string(p) + ": " +
                                         logger_->last_error());
    }
    if (!slot->context->setOptimizationProfileAsync(p, slot->stream.get()) ||
        !slot->context->setTensorAddress(input_name_.c_str(), slot->input.get()) ||
        !slot->context->setTensorAddress(output_name_.c_str(), slot->output.get())) {
      throw Error(ErrorKind::Engine, "TensorRT could not set up execution context " + std::to_string(p) + ": " +
                                         logger_->last_error());
    }
    slot->stream.synchronize();
    idle_.push_back(slot.get());
    slots_.push_back(std::move(slot));
  }
}

TensorRtBackend::~TensorRtBackend() {
  // The members go in reverse order: graphs and contexts, then the engine, the runtime, the logger.
  for (const auto& slot : slots_) cudaStreamSynchronize(slot->stream.get());
}

void TensorRtBackend::check_shape(const BatchShape& shape, int profile) const {
  const auto min = engine_->getProfileShape(input_name_.c_str(), profile, nvinfer1::OptProfileSelector::kMIN);
  const auto max = engine_->getProfileShape(input_name_.c_str(), profile, nvinfer1::OptProfileSelector::kMAX);
  const int64_t want[4] = {shape.n, 1, shape.height, shape.width};
  for (int d = 0; d < 4; ++d) {
    if (want[d] < min.d[d] || want[d] > max.d[d]) {
      throw Error(ErrorKind::Input, "network input " + shape_text(shape) + " is outside the engine's shape range " +
                                        dims_text(min) + " to " + dims_text(max) +
                                        "; rebuild the engine with a larger shape range");
    }
  }
}

void TensorRtBackend::enqueue(Slot& slot, const BatchShape& shape) {
  nvinfer1::IExecutionContext& context = *slot.context;
  const cudaStream_t stream = slot.stream.get();
  if (slot.shape.n != shape.n || slot.shape.height != shape.height || slot.shape.width != shape.width) {
    check_shape(shape, slot.profile);
    nvinfer1::Dims in{};
    in.nbDims = 4;
    in.d[0] = shape.n;
    in.d[1] = 1;
    in.d[2] = shape.height;
    in.d[3] = shape.width;
    if (!context.setInputShape(input_name_.c_str(), in)) {
      throw Error(ErrorKind::Engine,
                  "TensorRT refused input shape " + shape_text(shape) + ": " + logger_->last_error());
    }
    // The postprocess kernel reads (N, C, H, W) at the input's size: make sure that is what the network makes.
    const nvinfer1::Dims out = context.getTensorShape(output_name_.c_str());
    if (out.nbDims != 4 || out.d[0] != shape.n || out.d[1] != output_channels_ || out.d[2] != shape.height ||
        out.d[3] != shape.width) {
      throw Error(ErrorKind::Engine, "for input " + shape_text(shape) + " the network's output is " + dims_text(out) +
                                         ", not (N, C, H, W) at the input's size");
    }
    slot.shape = shape;
  }
  if (options_.cuda_graphs) {
    // One graph per shape; the context's shape (set above) always matches the graph being launched.
    const auto key = std::make_tuple(shape.n, shape.height, shape.width);
    if (auto it = slot.graphs.find(key); it != slot.graphs.end()) {
      it->second.launch(stream);
      return;
    }
    // TensorRT may defer work after a shape change to the next enqueueV3: run once for real, then capture.
    if (!context.enqueueV3(stream)) {
      throw Error(ErrorKind::Engine, "TensorRT enqueueV3 failed: " + logger_->last_error());
    }
    slot.graphs.emplace(key, cuda::GraphExec::capture(stream, [&] {
      if (!context.enqueueV3(stream)) {
        throw Error(ErrorKind::Engine, "TensorRT enqueueV3 failed under CUDA graph capture (load the engine "
                                       "without CUDA graphs): " + logger_->last_error());
      }
    }));
    return;
  }
  if (!context.enqueueV3(stream)) throw Error(ErrorKind::Engine, "TensorRT enqueueV3 failed: " + logger_->last_error());
}

StageTimes TensorRtBackend::run(const ImageBatch& batch, const PadGeometry& g, const Contract& contract) {
  using Clock = std::chrono::steady_clock;
  auto micros = [](Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  cuda::DeviceGuard guard(options_.device);
  Lease lease(*this);
  Slot& s = *lease;
  const cudaStream_t stream = s.stream.get();
  const cuda::DType image_type = batch.type == PixelType::UInt16 ? cuda::DType::UInt16 : cuda::DType::Float32;
  const size_t pixel = cuda::dtype_size(image_type);
  const int64_t plane = batch.height * batch.width;
  const auto image_bytes = static_cast<size_t>(plane) * pixel;
  const int64_t channels = output_channels_;
  const int64_t max_batch =
      engine_->getProfileShape(input_name_.c_str(), s.profile, nvinfer1::OptProfileSelector::kMAX).d[0];
  const int64_t step = std::min(batch.n, max_batch);
  const size_t step_bytes = static_cast<size_t>(step) * image_bytes;
  s.images_out.reserve(step_bytes * static_cast<size_t>(channels));
  s.host_out.reserve(step_bytes * static_cast<size_t>(channels));
  if (batch.device_data) {
    if (batch.stream != 0) {  // the producer's pending writes come first
      s.producer_ready.record(producer_stream(batch.stream));
      cuda::check(cudaStreamWaitEvent(stream, s.producer_ready.get(), 0), "cudaStreamWaitEvent");
    }
  } else {
    s.images_in.reserve(step_bytes);
    s.host_in.reserve(step_bytes);
  }

  StageTimes times;
  for (int64_t first = 0; first < batch.n; first += step) {
    const int64_t k = std::min(step, batch.n - first);
    const BatchShape shape{k, g.padded_height, g.padded_width};
    check_shape(shape, s.profile);
    const size_t in_bytes = static_cast<size_t>(k) * image_bytes;
    const auto gather_started = Clock::now();
    const void* images = nullptr;  // (k, H, W) on the device
    s.started.record(stream);
    if (batch.device_data) {
      images = static_cast<const unsigned char*>(batch.device_data) + static_cast<size_t>(first) * image_bytes;
    } else {
      // into pinned memory: the upload is then a plain DMA
      auto* dst = static_cast<unsigned char*>(s.host_in.get());
      for (int64_t b = 0; b < k; ++b) {
        std::memcpy(dst + static_cast<size_t>(b) * image_bytes, batch.images[first + b].input, image_bytes);
      }
      cuda::check(cudaMemcpyAsync(s.images_in.get(), s.host_in.get(), in_bytes, cudaMemcpyHostToDevice, stream),
                  "cudaMemcpyAsync (images)");
      images = s.images_in.get();
    }
    // The chunk's per-image windows, when the contract has them (the identity needs no upload).
    const ImageWindow* own = nullptr;
    if (contract.normalised) {
      const size_t bytes = static_cast<size_t>(k) * sizeof(ImageWindow);
      s.windows.reserve(bytes);
      s.host_windows.reserve(bytes);
      auto* host = static_cast<ImageWindow*>(s.host_windows.get());
      for (int64_t b = 0; b < k; ++b) host[b] = batch.images[first + b].window;
      cuda::check(cudaMemcpyAsync(s.windows.get(), host, bytes, cudaMemcpyHostToDevice, stream),
                  "cudaMemcpyAsync (windows)");
      own = static_cast<const ImageWindow*>(s.windows.get());
    }
    times.pre_us += micros(Clock::now() - gather_started);
    cuda::preprocess(images, image_type, k, g, contract.input, own, s.input.get(), input_type_,
                     stream);  // (k, 1, Hp, Wp)
    s.preprocessed.record(stream);
    enqueue(s, shape);  // (k, C, Hp, Wp)
    s.inferred.record(stream);
    cuda::postprocess(s.output.get(), output_type_, k, channels, g, contract.outputs, own, contract.offsets,
                      s.images_out.get(), image_type, stream);  // (C, k, H, W)
    cuda::check(cudaMemcpyAsync(s.host_out.get(), s.images_out.get(), in_bytes * static_cast<size_t>(channels),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync (results)");
    s.downloaded.record(stream);
    s.stream.synchronize();
    const auto scatter_started = Clock::now();
    const auto* src = static_cast<const unsigned char*>(s.host_out.get());
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t b = 0; b < k; ++b) {
        const HostImage& slot = batch.images[first + b];
        std::memcpy(static_cast<unsigned char*>(slot.output) + static_cast<size_t>(c * slot.channel_stride) * pixel,
                    src + static_cast<size_t>(c * k + b) * image_bytes, image_bytes);
      }
    }
    times.pre_us += cuda::Event::elapsed_us(s.started, s.preprocessed);
    times.infer_us += cuda::Event::elapsed_us(s.preprocessed, s.inferred);
    times.post_us += cuda::Event::elapsed_us(s.inferred, s.downloaded) + micros(Clock::now() - scatter_started);
  }
  return times;
}

std::vector<float> TensorRtBackend::device_samples(const ImageBatch& batch, const SampleGrid& grid) {
  if (batch.device_data == nullptr) throw Error(ErrorKind::Engine, "device_samples needs a device batch");
  cuda::DeviceGuard guard(options_.device);
  Lease lease(*this);
  Slot& s = *lease;
  const cudaStream_t stream = s.stream.get();
  if (batch.stream != 0) {  // the producer's pending writes come first
    s.producer_ready.record(producer_stream(batch.stream));
    cuda::check(cudaStreamWaitEvent(stream, s.producer_ready.get(), 0), "cudaStreamWaitEvent");
  }
  const size_t bytes = static_cast<size_t>(batch.n * grid.size()) * sizeof(float);
  s.samples.reserve(bytes);
  s.host_samples.reserve(bytes);
  const cuda::DType type = batch.type == PixelType::UInt16 ? cuda::DType::UInt16 : cuda::DType::Float32;
  cuda::gather_samples(batch.device_data, type, batch.n, batch.height, batch.width, grid,
                       static_cast<float*>(s.samples.get()), stream);  // (N, rows, cols)
  cuda::check(cudaMemcpyAsync(s.host_samples.get(), s.samples.get(), bytes, cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync (samples)");
  s.stream.synchronize();
  const auto* host = static_cast<const float*>(s.host_samples.get());
  return std::vector<float>(host, host + batch.n * grid.size());
}

}  // namespace dexrt
