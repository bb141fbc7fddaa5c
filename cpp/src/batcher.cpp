#include "dexrt/batcher.h"

#include <algorithm>
#include <string>
#include <type_traits>

#include "dexrt/error.h"

namespace dexrt {

namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// Requests batch together when the network sees them alike: the same working size, dtype and path (resampled
// frames reach the network as float32 working images, the others as they are).
bool same_kind(const Request& a, const Request& b) {
  return a.work.work == b.work.work && a.input.index() == b.input.index() &&
         a.work.resampled() == b.work.resampled() && (a.work.resampled() || a.work.size == b.work.size);
}

}  // namespace

Batcher::Batcher(std::shared_ptr<const Engine> engine, std::shared_ptr<StatsRecorder> stats, BatcherOptions options,
                 Completion completion)
    : engine_(std::move(engine)), stats_(std::move(stats)), options_(options), completion_(std::move(completion)) {
  if (options_.max_batch < 1) throw Error(ErrorKind::Engine, "max_batch must be at least 1");
  if (options_.max_delay_us < 0) throw Error(ErrorKind::Engine, "max_delay_us must not be negative");
  if (options_.workers < 1) throw Error(ErrorKind::Engine, "workers must be at least 1");
  workers_.reserve(static_cast<size_t>(options_.workers));
  worker_ids_.reserve(static_cast<size_t>(options_.workers));
  {
    // Workers wait on the mutex before looking at anything, so they never see worker_ids_ half written.
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < options_.workers; ++i) {
      workers_.emplace_back([this] { worker_loop(); });
      worker_ids_.push_back(workers_.back().get_id());
    }
  }
}

Batcher::~Batcher() { close(false); }

void Batcher::submit(std::unique_ptr<Request> request) {
  request->enqueued = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closing_) throw Error(ErrorKind::Engine, "the engine is closed; no new work is accepted");
    queue_.push_back(std::move(request));
  }
  wake_.notify_all();
}

bool Batcher::on_worker_thread() const {
  const auto self = std::this_thread::get_id();
  return std::find(worker_ids_.begin(), worker_ids_.end(), self) != worker_ids_.end();
}

void Batcher::close(bool cancel) {
  std::vector<std::unique_ptr<Request>> cancelled;
  const bool on_worker = on_worker_thread();
  bool joiner = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
    if (cancel) {
      for (auto& r : queue_) cancelled.push_back(std::move(r));
      queue_.clear();
    }
    if (!on_worker && !joining_) joining_ = joiner = true;
  }
  wake_.notify_all();
  // The joiner joins before it completes the cancelled requests: their completion runs Python callbacks, which
  // may call close() again on this thread, and that nested call must find the join done instead of waiting
  // for itself.
  if (joiner) {
    for (auto& t : workers_) t.join();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      joined_ = true;
    }
    joined_cv_.notify_all();
  }
  if (!cancelled.empty()) {
    for (auto& r : cancelled) r->outcome = Outcome::Cancelled;
    completion_(cancelled);
  }
  if (on_worker || joiner) return;  // a worker cannot wait for its own thread; it ends once the queue is drained
  std::unique_lock<std::mutex> lock(mutex_);
  joined_cv_.wait(lock, [&] { return joined_; });
}

int64_t Batcher::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(queue_.size());
}

size_t Batcher::compatible_count(const Request& first) const {
  return static_cast<size_t>(
      std::count_if(queue_.begin(), queue_.end(), [&](const auto& r) { return same_kind(*r, first); }));
}

std::vector<std::unique_ptr<Request>> Batcher::take_batch() {
  // The oldest request decides the batch's shape; requests of other shapes keep their place in the queue.
  std::vector<std::unique_ptr<Request>> batch;
  const Request& first = *queue_.front();  // stays valid: moving the unique_ptr does not move the request
  int64_t size = std::min<int64_t>(static_cast<int64_t>(compatible_count(first)), options_.max_batch);
  if (options_.power_of_two_batches) {
    int64_t p = 1;
    while (p * 2 <= size) p *= 2;
    size = p;
  }
  for (auto it = queue_.begin(); it != queue_.end() && static_cast<int64_t>(batch.size()) < size;) {
    if (same_kind(**it, first)) {
      batch.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return batch;
}

void Batcher::worker_loop() {
  for (;;) {
    std::vector<std::unique_ptr<Request>> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;  // closing and drained
      // Wait for a full batch, but never longer than max_delay after the oldest request arrived.
      const auto deadline = queue_.front()->enqueued + std::chrono::microseconds(options_.max_delay_us);
      while (!closing_ && !queue_.empty() &&
             static_cast<int64_t>(compatible_count(*queue_.front())) < options_.max_batch) {
        if (wake_.wait_until(lock, deadline) == std::cv_status::timeout) break;
      }
      if (queue_.empty()) continue;  // another worker took them
      batch = take_batch();
      if (!queue_.empty()) wake_.notify_one();  // what is left may already make another batch
    }
    run_batch(batch);
  }
}

namespace {

// Requests at their own size: one engine batch, straight into each request's output.
template <typename T>
StageTimes run_plain(const Engine& engine, std::vector<std::unique_ptr<Request>>& batch,
                     std::vector<std::exception_ptr>& errors) {
  const Size2 size = batch.front()->work.size;
  const int64_t plane = size.height * size.width;
  std::vector<HostImage> slots;
  slots.reserve(batch.size());
  for (auto& r : batch) {
    auto& out = std::get<std::vector<T>>(r->output);
    out.resize(static_cast<size_t>(engine.output_channels() * plane));
    // (C, H, W) per request; the window was computed at submit
    slots.push_back(HostImage{std::get<std::vector<T>>(r->input).data(), out.data(), plane, r->work.window});
  }
  const PixelType type = std::is_same_v<T, uint16_t> ? PixelType::UInt16 : PixelType::Float32;
  return engine.run(ImageBatch{type, static_cast<int64_t>(slots.size()), size.height, size.width, slots.data()},
                    true, &errors);
}

// Resampled frames: their working images through the network as one batch, then each frame finished at its size.
template <typename T>
StageTimes run_resampled(const Engine& engine, std::vector<std::unique_ptr<Request>>& batch,
                         std::vector<std::exception_ptr>& errors) {
  const Size2 work = batch.front()->work.work;
  const int64_t net_block = engine.output_channels() * work.height * work.width;
  std::vector<float> net(batch.size() * static_cast<size_t>(net_block));  // (N, C, h, w)
  std::vector<const WorkImage*> frames;
  std::vector<float*> outputs;
  for (size_t b = 0; b < batch.size(); ++b) {
    frames.push_back(&batch[b]->work);
    outputs.push_back(net.data() + static_cast<int64_t>(b) * net_block);
  }
  StageTimes times = engine.run_prepared(frames, outputs, &errors);
  const auto finishing = Clock::now();
  for (size_t b = 0; b < batch.size(); ++b) {
    if (errors[b]) continue;
    Request& r = *batch[b];
    const int64_t plane = r.work.size.height * r.work.size.width;
    auto& out = std::get<std::vector<T>>(r.output);
    out.resize(static_cast<size_t>(engine.output_channels() * plane));
    try {
      engine.finish(std::get<std::vector<T>>(r.input).data(), r.work, outputs[b], out.data(), plane);
    } catch (...) {
      errors[b] = std::current_exception();
    }
  }
  times.post_us += micros(Clock::now() - finishing);
  return times;
}

template <typename T>
StageTimes run_typed(const Engine& engine, std::vector<std::unique_ptr<Request>>& batch,
                     std::vector<std::exception_ptr>& errors) {
  for (auto& r : batch) r->output = std::vector<T>();
  return batch.front()->work.resampled() ? run_resampled<T>(engine, batch, errors)
                                         : run_plain<T>(engine, batch, errors);
}

}  // namespace

void Batcher::run_batch(std::vector<std::unique_ptr<Request>>& batch) {
  const auto started = Clock::now();
  std::vector<std::exception_ptr> errors(batch.size());
  StageTimes times;
  try {
    if (std::holds_alternative<std::vector<uint16_t>>(batch.front()->input)) {
      times = run_typed<uint16_t>(*engine_, batch, errors);
    } else {
      times = run_typed<float>(*engine_, batch, errors);
    }
  } catch (...) {  // the batch as a whole failed: every request with it
    std::fill(errors.begin(), errors.end(), std::current_exception());
  }
  const auto finished = Clock::now();
  std::vector<double> queue_us, total_us;
  for (size_t b = 0; b < batch.size(); ++b) {
    Request& r = *batch[b];
    queue_us.push_back(micros(started - r.enqueued));
    total_us.push_back(micros(finished - r.enqueued));
    r.outcome = errors[b] ? Outcome::Failed : Outcome::Done;
    r.error = errors[b];
    if (errors[b]) r.output = Pixels();
  }
  stats_->record_batch(static_cast<int64_t>(batch.size()), times, queue_us, total_us);
  completion_(batch);
}

}  // namespace dexrt
