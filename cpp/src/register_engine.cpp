// Bindings for the engine runtime. The GIL is released while an engine builds, while it infers, and while
// it closes; batched requests complete on worker threads, which take the GIL once per batch to resolve the
// callers' futures.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <condition_variable>
#include <optional>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <utility>
#include <vector>

#include "dexrt/batcher.h"
#include "dexrt/engine.h"
#include "dexrt/error.h"
#include "dexrt/openvino_backend.h"
#ifdef DEXRT_WITH_TENSORRT
#include "dexrt/tensorrt_backend.h"
#endif
#include "dexrt/stats.h"
#include "register.h"

namespace py = pybind11;

namespace dexrt {

namespace {

// Batchers closed in the background (see ~Runtime); the interpreter waits for them at exit.
struct BackgroundCloses {
  std::mutex mutex;
  std::condition_variable done;
  int running = 0;
};

BackgroundCloses& background_closes() {
  static auto* closes = new BackgroundCloses();  // never destroyed: detached threads may outlive static destructors
  return *closes;
}

void background_close(std::unique_ptr<Batcher> batcher) {
  auto& bc = background_closes();
  {
    std::lock_guard<std::mutex> lock(bc.mutex);
    ++bc.running;
  }
  std::thread([b = std::move(batcher)]() mutable {
    b->close(false);
    b.reset();
    auto& bc = background_closes();
    std::lock_guard<std::mutex> lock(bc.mutex);
    --bc.running;
    bc.done.notify_all();
  }).detach();
}

void wait_for_background_closes() {
  py::gil_scoped_release release;  // their last batches may need the GIL to resolve futures
  auto& bc = background_closes();
  std::unique_lock<std::mutex> lock(bc.mutex);
  bc.done.wait(lock, [&] { return bc.running == 0; });
}

// An engine with its statistics and, once the first request is submitted, its batcher.
class Runtime {
 public:
  Runtime(std::shared_ptr<const Engine> engine, BatcherOptions options)
      : engine_(std::move(engine)), stats_(std::make_shared<StatsRecorder>()), options_(options) {}

  // Runs inside the Python object's deallocation: the GIL must stay held here (releasing it mid-teardown lets
  // other threads run the interpreter while this object is half destroyed). A worker finishing a batch may be
  // waiting for the GIL, so the batcher is drained and joined on a background thread instead.
  ~Runtime() {
    if (batcher_) background_close(std::move(batcher_));
  }

  const Engine& engine() const { return *engine_; }
  StatsRecorder& stats() { return *stats_; }

  void check_open() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) throw Error(ErrorKind::Engine, "the engine is closed");
  }

  Batcher& batcher() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) throw Error(ErrorKind::Engine, "the engine is closed; no new work is accepted");
    if (!batcher_) batcher_ = std::make_unique<Batcher>(engine_, stats_, options_, &complete);
    return *batcher_;
  }

  int64_t pending() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return batcher_ ? batcher_->pending() : 0;
  }

  void close(bool cancel) {
    Batcher* batcher = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      batcher = batcher_.get();
    }
    if (batcher) {
      py::gil_scoped_release release;
      batcher->close(cancel);
    }
  }

  const BatcherOptions& options() const { return options_; }

 private:
  static void complete(std::vector<std::unique_ptr<Request>>& batch);

  std::shared_ptr<const Engine> engine_;
  std::shared_ptr<StatsRecorder> stats_;
  BatcherOptions options_;
  mutable std::mutex mutex_;
  std::unique_ptr<Batcher> batcher_;
  bool closed_ = false;
};

// (C, H, W) pixels -> a tuple of C (H, W) arrays viewing one buffer, which the arrays own (no copy).
template <typename T>
py::tuple to_arrays(std::vector<T>&& pixels, int64_t channels, int64_t h, int64_t w) {
  auto* owned = new std::vector<T>(std::move(pixels));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  py::tuple out(channels);
  for (int64_t c = 0; c < channels; ++c) {
    out[static_cast<size_t>(c)] = py::array_t<T>({h, w}, owned->data() + c * h * w, owner);
  }
  return out;
}

void Runtime::complete(std::vector<std::unique_ptr<Request>>& batch) {
  py::gil_scoped_acquire gil;
  for (auto& r : batch) {
    // Each future is resolved on its own: one that its caller cancelled meanwhile must not stop the others.
    try {
      py::object future = *static_cast<py::object*>(r->tag.get());
      if (r->outcome == Outcome::Cancelled) future.attr("cancel")();
      if (future.attr("done")().cast<bool>() && !future.attr("cancelled")().cast<bool>()) continue;
      // The executor protocol: a pending future becomes RUNNING, while a cancelled one (by close(cancel) just
      // above, or by its caller while it was queued) has its waiters notified and returns False. Future.cancel()
      // alone wakes result() but not concurrent.futures.wait/as_completed, which would then wait forever.
      // Each request passes here exactly once, so a cancelled future is never notified twice.
      if (!future.attr("set_running_or_notify_cancel")().cast<bool>()) continue;
      if (r->outcome == Outcome::Failed) {
        future.attr("set_exception")(python_exception(r->error));
        continue;
      }
      const int64_t h = r->work.size.height, w = r->work.size.width;
      py::tuple result = std::visit(
          [&](auto&& pixels) {
            const auto channels = static_cast<int64_t>(pixels.size()) / (h * w);  // (C, H, W)
            return to_arrays(std::move(pixels), channels, h, w);
          },
          r->output);
      future.attr("set_result")(result);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("dexrt: resolving a future");
    }
    r->tag.reset();  // drop the future while the GIL is held
  }
}

FullResolutionOptions full_resolution_options(const std::string& upsampling, int64_t radius, float epsilon,
                                              bool correction, int threads) {
  FullResolutionOptions o;
  if (upsampling == "guided") {
    o.upsampling = Upsampling::Guided;
  } else if (upsampling == "bicubic") {
    o.upsampling = Upsampling::Bicubic;
  } else {
    throw py::value_error("upsampling must be 'guided' or 'bicubic', got '" + upsampling + "'");
  }
  if (radius < 1 || !(epsilon > 0.0f) || threads < 0) {
    throw py::value_error("guide_radius must be >= 1, guide_epsilon > 0 and threads >= 0");
  }
  o.radius = radius;
  o.epsilon = epsilon;
  o.correction = correction;
  o.threads = threads;
  return o;
}

std::shared_ptr<Engine> make_engine(std::unique_ptr<Backend> backend, Contract contract, double model_spacing_mm,
                                    const FullResolutionOptions& full) {
  auto engine = std::make_shared<Engine>(std::move(backend), std::move(contract), model_spacing_mm, full.threads);
  engine->set_full_resolution(full);
  return engine;
}

std::unique_ptr<Runtime> make_runtime(const std::string& backend, const std::string& device, const py::bytes& model,
                                      const py::bytes& weights, WindowPair input_window,
                                      const std::vector<WindowPair>& output_windows, int64_t size_multiple,
                                      const std::string& performance_hint, int num_threads, int64_t max_batch,
                                      int64_t max_delay_us, int workers, int cuda_device, int contexts,
                                      bool cuda_graphs, const std::string& cache_dir, bool normalised,
                                      const std::vector<std::string>& channels, double model_spacing_mm,
                                      const std::string& upsampling, int64_t guide_radius, float guide_epsilon,
                                      bool soft_correction) {
  if (max_batch < 1 || max_delay_us < 0 || workers < 1) {
    throw py::value_error("max_batch and workers must be at least 1, max_delay_us at least 0");
  }
  if (!(model_spacing_mm >= 0.0)) throw py::value_error("model_spacing_mm must be >= 0 (0: not recorded)");
  Contract contract;
  contract.input = Window{input_window.first, input_window.second};
  contract.outputs = to_windows(output_windows);
  contract.size_multiple = size_multiple;
  contract.normalised = normalised;
  contract.channels = channels;
  const FullResolutionOptions full =
      full_resolution_options(upsampling, guide_radius, guide_epsilon, soft_correction, num_threads);
#ifdef DEXRT_WITH_TENSORRT
  if (backend == "tensorrt") {  // `model` is the serialized plan; `weights` is unused
    const TensorRtOptions options{cuda_device, contexts, cuda_graphs};
    std::string plan = model;
    py::gil_scoped_release release;
    auto engine = make_engine(std::make_unique<TensorRtBackend>(plan, options), std::move(contract),
                              model_spacing_mm, full);
    return std::make_unique<Runtime>(std::move(engine), BatcherOptions{max_batch, max_delay_us, workers});
  }
  const char* const available = "openvino, tensorrt";
#else
  static_cast<void>(cuda_device);  // only the TensorRT backend uses these three
  static_cast<void>(contexts);
  static_cast<void>(cuda_graphs);
  const char* const available = "openvino";
#endif
  if (backend != "openvino") {
    throw py::value_error("unknown backend '" + backend + "' (this build has: " + available + ")");
  }
  OpenVinoOptions options;
  options.device = device;
  options.performance_hint = performance_hint;
  options.num_threads = num_threads;
  options.cache_dir = cache_dir;
  std::string xml = model;  // copies out of the Python objects while the GIL is held
  std::string bin = weights;
  py::gil_scoped_release release;
  auto engine = make_engine(std::make_unique<OpenVinoBackend>(xml, bin, std::move(options)), std::move(contract),
                            model_spacing_mm, full);
  // OpenVINO compiles one static-shape model per batch size: keep their number small (see BatcherOptions).
  return std::make_unique<Runtime>(std::move(engine), BatcherOptions{max_batch, max_delay_us, workers, true});
}

// The size the network runs an (H, W) image at: its own, or with a pixel spacing the model's.
Size2 work_size(const Runtime& rt, Size2 size, const std::optional<WindowPair>& spacing_mm, double model_spacing_mm) {
  if (!spacing_mm) return size;
  return rt.engine().working_size(size, spacing_mm->first, spacing_mm->second, model_spacing_mm);
}

template <typename T>
py::array infer_typed(Runtime& rt, const py::array& images, const std::optional<WindowPair>& spacing_mm,
                      double model_spacing_mm) {
  // A C-contiguous array is used in place; any other layout is copied once into a contiguous buffer.
  auto contiguous = py::array_t<T, py::array::c_style>::ensure(images);
  const int64_t n = images.shape(0), h = images.shape(1), w = images.shape(2);
  const int64_t c = rt.engine().output_channels();
  const Size2 size{h, w};
  const Size2 work = work_size(rt, size, spacing_mm, model_spacing_mm);
  py::array_t<T> out({c, n, h, w});  // (C, N, H, W), the input's dtype
  const T* src = contiguous.data();
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    const auto started = std::chrono::steady_clock::now();
    const StageTimes times = rt.engine().infer_full(src, n, size, work, dst);
    const double total = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started).count();
    rt.stats().record_batch(n, times, std::vector<double>(static_cast<size_t>(n), 0.0),
                            std::vector<double>(static_cast<size_t>(n), total));
  }
  return out;
}

// Images already on the GPU, as __cuda_array_interface__ describes them: a device pointer to C-contiguous
// (N, H, W) pixels and the stream that wrote them. The (C, N, H, W) result comes back in host memory.
py::array infer_device(Runtime& rt, uintptr_t pointer, int64_t n, int64_t height, int64_t width,
                       const std::string& dtype, uintptr_t stream) {
  rt.check_open();
  if (dtype != "uint16" && dtype != "float32") {
    throw Error(ErrorKind::Input, "images must be uint16 or float32, got " + dtype);
  }
  if (pointer == 0 || n <= 0 || height <= 0 || width <= 0) throw Error(ErrorKind::Input, "the images are empty");
  const bool u16 = dtype == "uint16";
  const int64_t c = rt.engine().output_channels();
  py::array out = u16 ? py::array(py::array_t<uint16_t>({c, n, height, width}))
                      : py::array(py::array_t<float>({c, n, height, width}));
  ImageBatch batch{u16 ? PixelType::UInt16 : PixelType::Float32, n, height, width};
  batch.device_data = reinterpret_cast<const void*>(pointer);
  batch.stream = stream;
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    const StageTimes times = rt.engine().infer_device(batch, dst);
    rt.stats().record_batch(n, times, std::vector<double>(static_cast<size_t>(n), 0.0),
                            std::vector<double>(static_cast<size_t>(n), times.infer_us));
  }
  return out;
}

bool is_uint16(const py::array& a) { return py::isinstance<py::array_t<uint16_t>>(a); }
bool is_float32(const py::array& a) { return py::isinstance<py::array_t<float>>(a); }

py::array infer(Runtime& rt, const py::array& images, const std::optional<WindowPair>& spacing_mm,
                double model_spacing_mm) {
  rt.check_open();
  if (images.ndim() != 3) {
    throw Error(ErrorKind::Input, "images must be a 3-D array (N, H, W), got " + std::to_string(images.ndim()) +
                                      "-D");
  }
  if (is_uint16(images)) return infer_typed<uint16_t>(rt, images, spacing_mm, model_spacing_mm);
  if (is_float32(images)) return infer_typed<float>(rt, images, spacing_mm, model_spacing_mm);
  throw Error(ErrorKind::Input, "images must be uint16 or float32 (native byte order), got " + dtype_name(images));
}

// The pixels copied into the request, and the request prepared for the network (working image, window) on the
// caller's thread, without the GIL: that work then spreads over the submitting threads.
template <typename T>
void prepare_request(const Runtime& rt, const py::array& image, Request& request, Size2 size, Size2 work) {
  auto contiguous = py::array_t<T, py::array::c_style>::ensure(image);
  const T* data = contiguous.data();
  py::gil_scoped_release release;
  std::vector<T> pixels(data, data + size.height * size.width);
  request.work = rt.engine().prepare(pixels.data(), size, work);
  request.input = std::move(pixels);
}

void submit(Runtime& rt, const py::array& image, py::object future, const std::optional<WindowPair>& spacing_mm,
            double model_spacing_mm) {
  if (image.ndim() != 2) {
    throw Error(ErrorKind::Input, "submit takes one (H, W) image, got " + std::to_string(image.ndim()) + "-D");
  }
  if (image.shape(0) <= 0 || image.shape(1) <= 0) throw Error(ErrorKind::Input, "the image is empty");
  rt.check_open();
  const Size2 size{image.shape(0), image.shape(1)};
  const Size2 work = work_size(rt, size, spacing_mm, model_spacing_mm);
  auto request = std::make_unique<Request>();
  if (is_uint16(image)) {
    prepare_request<uint16_t>(rt, image, *request, size, work);
  } else if (is_float32(image)) {
    prepare_request<float>(rt, image, *request, size, work);
  } else {
    throw Error(ErrorKind::Input, "the image must be uint16 or float32 (native byte order), got " + dtype_name(image));
  }
  // The future may be released on a worker thread: its deleter takes the GIL.
  request->tag = std::shared_ptr<void>(new py::object(std::move(future)), [](void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
  rt.batcher().submit(std::move(request));
}

py::dict stats(Runtime& rt) {
  const StatsSnapshot s = rt.stats().snapshot();
  py::dict out, stages, sizes;
  for (const auto& [name, sum] : s.stages) {
    py::dict d;
    d["count"] = sum.count;
    d["mean"] = sum.mean;
    d["p50"] = sum.p50;
    d["p99"] = sum.p99;
    d["max"] = sum.max;
    stages[py::str(name)] = d;
  }
  for (const auto& [size, count] : s.batch_sizes) sizes[py::int_(size)] = count;
  out["requests"] = s.requests;
  out["batches"] = s.batches;
  out["batch_sizes"] = sizes;
  out["stages"] = stages;
  return out;
}

}  // namespace

void register_engine(py::module_& m) {
  py::class_<Runtime>(m, "Engine", "A network behind the value contract: (N, H, W) images -> (C, N, H, W) images.")
      .def(py::init(&make_runtime), py::kw_only(), py::arg("backend"), py::arg("device"), py::arg("model"),
           py::arg("weights"), py::arg("input_window"), py::arg("output_windows"), py::arg("size_multiple"),
           py::arg("performance_hint") = "LATENCY", py::arg("num_threads") = 0, py::arg("max_batch") = 8,
           py::arg("max_delay_us") = 1000, py::arg("workers") = 2, py::arg("cuda_device") = 0,
           py::arg("contexts") = 2, py::arg("cuda_graphs") = false, py::arg("cache_dir") = "",
           py::arg("normalised") = false, py::arg("channels") = std::vector<std::string>{},
           py::arg("model_spacing_mm") = 0.0, py::arg("upsampling") = "guided", py::arg("guide_radius") = 2,
           py::arg("guide_epsilon") = 1e-4f, py::arg("soft_correction") = true)
      .def_property_readonly("backend", [](const Runtime& r) { return r.engine().backend().name(); })
      .def_property_readonly("device", [](const Runtime& r) { return r.engine().backend().device(); })
      .def_property_readonly("output_channels", [](const Runtime& r) { return r.engine().output_channels(); })
      .def_property_readonly("size_multiple", [](const Runtime& r) { return r.engine().contract().size_multiple; })
      .def_property_readonly("max_batch", [](const Runtime& r) { return r.options().max_batch; })
      .def_property_readonly("max_delay_us", [](const Runtime& r) { return r.options().max_delay_us; })
      .def_property_readonly("workers", [](const Runtime& r) { return r.options().workers; })
      .def_property_readonly("normalised", [](const Runtime& r) { return r.engine().contract().normalised; })
      .def_property_readonly("model_spacing_mm", [](const Runtime& r) { return r.engine().model_spacing_mm(); })
      .def("infer", &infer, py::arg("images"), py::arg("spacing_mm") = py::none(), py::arg("model_spacing_mm") = 0.0,
           "(N, H, W) uint16 or float32 -> (C, N, H, W) of the same dtype. With spacing_mm (row, col), the images "
           "run at the model's pixel spacing (model_spacing_mm, 0: the engine's) and come back at their own size. "
           "Releases the GIL.")
      .def("infer_device", &infer_device, py::arg("pointer"), py::arg("n"), py::arg("height"), py::arg("width"),
           py::arg("dtype"), py::arg("stream") = 0,
           "(N, H, W) images in CUDA device memory -> (C, N, H, W) host array. GPU backends only.")
      .def("submit", &submit, py::arg("image"), py::arg("future"), py::arg("spacing_mm") = py::none(),
           py::arg("model_spacing_mm") = 0.0,
           "Queue one (H, W) image (copied); `future` (concurrent.futures.Future) receives a tuple of C (H, W) "
           "arrays, or the exception. spacing_mm as for infer.")
      .def("close", &Runtime::close, py::arg("cancel") = false,
           "Stop accepting work; run (or, with cancel, cancel) what is queued; wait for the workers.")
      .def_property_readonly("pending", &Runtime::pending, "Requests queued and not yet running.")
      .def("stats", &stats, "Per-stage latency summaries (microseconds) and the batch-size histogram.")
      .def("reset_stats", [](Runtime& r) { r.stats().reset(); });

  m.def("wait_for_background_closes", &wait_for_background_closes,
        "Wait until engines released without close() have finished their queued work (run at exit).");
  py::module_::import("atexit").attr("register")(m.attr("wait_for_background_closes"));

  m.def(
      "pad_geometry",
      [](int64_t height, int64_t width, int64_t size_multiple) {
        const PadGeometry g = plan_padding(height, width, size_multiple);
        return py::make_tuple(g.padded_height, g.padded_width, g.top, g.left);
      },
      py::arg("height"), py::arg("width"), py::arg("size_multiple"),
      "(padded_height, padded_width, top, left) of an image inside the network input.");
}

}  // namespace dexrt
