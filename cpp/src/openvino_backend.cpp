#include "dexrt/openvino_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "dexrt/error.h"

namespace dexrt {

namespace {

// One ov::Core for the whole process, never destroyed. The CPU plugin installs a signal stack
// (sigaltstack) for the thread that first compiles, and restores the stack it found when the plugin is
// destroyed; with one core per engine, engines destroyed in creation order leave the thread pointing at a
// freed stack, and its next handled signal (SIGCHLD, SIGINT) crashes the process.
ov::Core& shared_core() {
  static auto* core = new ov::Core();
  return *core;
}

std::string shape_text(const ov::PartialShape& s) { return s.to_string(); }

// Returns the request to its pool when the run ends, even by an exception.
class PooledRequest {
 public:
  PooledRequest(std::mutex& mutex, std::vector<ov::InferRequest>& idle, ov::CompiledModel& model)
      : mutex_(mutex), idle_(idle) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_.empty()) {
      request_ = model.create_infer_request();
    } else {
      request_ = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  ~PooledRequest() {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.push_back(std::move(request_));
  }
  PooledRequest(const PooledRequest&) = delete;
  PooledRequest& operator=(const PooledRequest&) = delete;

  ov::InferRequest& get() { return request_; }

 private:
  std::mutex& mutex_;
  std::vector<ov::InferRequest>& idle_;
  ov::InferRequest request_;
};

}  // namespace

OpenVinoBackend::OpenVinoBackend(const std::string& model_xml, const std::string& weights, OpenVinoOptions options)
    : options_(std::move(options)), core_(shared_core()) {
  try {
    weights_ = ov::Tensor(ov::element::u8, ov::Shape{weights.size()});
    if (!weights.empty()) std::memcpy(weights_.data(), weights.data(), weights.size());
    model_ = core_.read_model(model_xml, weights_);
  } catch (const ov::Exception& e) {
    throw Error(ErrorKind::Engine, std::string("OpenVINO could not read the model: ") + e.what());
  }
  if (model_->inputs().size() != 1 || model_->outputs().size() != 1) {
    throw Error(ErrorKind::Engine, "the network must have one input and one output, it has " +
                                       std::to_string(model_->inputs().size()) + " and " +
                                       std::to_string(model_->outputs().size()));
  }
  const auto& in = model_->input();
  const auto& out = model_->output();
  if (in.get_element_type() != ov::element::f32 || out.get_element_type() != ov::element::f32) {
    throw Error(ErrorKind::Engine, "the network's input and output must be float32, they are " +
                                       in.get_element_type().get_type_name() + " and " +
                                       out.get_element_type().get_type_name());
  }
  const ov::PartialShape in_shape = in.get_partial_shape();
  const ov::PartialShape out_shape = out.get_partial_shape();
  if (in_shape.rank() != 4 || !in_shape[1].compatible(1)) {
    throw Error(ErrorKind::Engine, "the network input must be (N, 1, H, W), it is " + shape_text(in_shape));
  }
  if (out_shape.rank() != 4 || !out_shape[1].is_static()) {
    throw Error(ErrorKind::Engine, "the network output must be (N, C, H, W) with a fixed C, it is " +
                                       shape_text(out_shape));
  }
  output_channels_ = out_shape[1].get_length();
  const auto& devices = core_.get_available_devices();
  if (std::find(devices.begin(), devices.end(), options_.device) == devices.end()) {
    std::string known;
    for (const auto& d : devices) known += (known.empty() ? "" : ", ") + d;
    throw Error(ErrorKind::Engine, "OpenVINO device '" + options_.device + "' is not available (available: " +
                                       known + ")");
  }
}

std::shared_ptr<OpenVinoBackend::Compiled> OpenVinoBackend::compiled_for(const BatchShape& shape) {
  const ShapeKey key{shape.n, shape.height, shape.width};
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (auto it = cache_.find(key); it != cache_.end()) {
    recency_.remove(key);
    recency_.push_front(key);
    return it->second;
  }
  // Compiling holds the cache lock: a second thread asking for the same shape waits instead of compiling twice.
  auto compiled = std::make_shared<Compiled>();
  try {
    std::shared_ptr<ov::Model> fixed = model_->clone();
    fixed->reshape(ov::PartialShape{shape.n, 1, shape.height, shape.width});
    // f32 explicitly: on CPUs with native bf16 (AVX512_BF16, AMX) the CPU plugin otherwise runs in bf16, whose
    // 8-bit mantissa moves outputs by hundreds of uint16 steps; an engine's precision is the bundle's, not the CPU's.
    ov::AnyMap properties{{"PERFORMANCE_HINT", options_.performance_hint}, {"INFERENCE_PRECISION_HINT", "f32"}};
    if (options_.num_threads > 0) properties.emplace("INFERENCE_NUM_THREADS", options_.num_threads);
    // A compiled blob per (model, shape, properties) on disk: a new process skips compiling a shape seen before.
    if (!options_.cache_dir.empty()) properties.emplace("CACHE_DIR", options_.cache_dir);
    compiled->model = core_.compile_model(fixed, options_.device, properties);
  } catch (const ov::Exception& e) {
    throw Error(ErrorKind::Engine, "OpenVINO could not compile the network for input (" + std::to_string(shape.n) +
                                       ", 1, " + std::to_string(shape.height) + ", " + std::to_string(shape.width) +
                                       "): " + e.what());
  }
  // The post-processing reads (N, C, Hp, Wp) at the input's size: a network that makes anything else (a strided
  // layer, an upsampling, a reduction over the batch) is refused here, before any output is read.
  const ov::PartialShape out = compiled->model.output().get_partial_shape();
  const ov::PartialShape want{shape.n, output_channels_, shape.height, shape.width};
  if (out.is_dynamic() || out != want) {
    throw Error(ErrorKind::Engine, "for input (" + std::to_string(shape.n) + ", 1, " + std::to_string(shape.height) +
                                       ", " + std::to_string(shape.width) + ") the network's output is " +
                                       shape_text(out) + ", not " + shape_text(want) +
                                       " (N, C, H, W at the input's size)");
  }
  cache_.emplace(key, compiled);
  recency_.push_front(key);
  while (cache_.size() > std::max<size_t>(options_.max_cached_shapes, 1)) {
    cache_.erase(recency_.back());  // runs still holding it keep it alive until they finish
    recency_.pop_back();
  }
  return compiled;
}

StageTimes OpenVinoBackend::run(const ImageBatch& batch, const PadGeometry& g, const Contract& contract) {
  using Clock = std::chrono::steady_clock;
  auto micros = [](Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  std::shared_ptr<Compiled> compiled = compiled_for(BatchShape{batch.n, g.padded_height, g.padded_width});
  StageTimes times;
  try {
    PooledRequest request(compiled->mutex, compiled->idle, compiled->model);
    ov::InferRequest& r = request.get();
    const auto t0 = Clock::now();
    preprocess_batch(batch, g, contract, r.get_input_tensor().data<float>());  // (N, 1, Hp, Wp) f32
    const auto t1 = Clock::now();
    r.infer();
    const auto t2 = Clock::now();
    postprocess_batch(r.get_output_tensor().data<const float>(), batch, g, contract);  // (N, C, Hp, Wp)
    times = {micros(t1 - t0), micros(t2 - t1), micros(Clock::now() - t2)};
  } catch (const ov::Exception& e) {
    throw Error(ErrorKind::Engine, std::string("OpenVINO inference failed: ") + e.what());
  }
  return times;
}

}  // namespace dexrt
