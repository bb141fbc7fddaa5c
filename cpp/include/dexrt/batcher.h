// Dynamic batching: requests from any thread are grouped into batches of up to max_batch images of the same
// working size and dtype, waiting at most max_delay_us after the oldest queued request; `workers` threads each
// form and run batches, so several batches are in flight at once. No Python runs here: completion is a C++
// callback, invoked once per batch on the worker thread, each request with its own outcome.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <variant>
#include <vector>

#include "dexrt/engine.h"
#include "dexrt/stats.h"

namespace dexrt {

struct BatcherOptions {
  int64_t max_batch = 8;
  int64_t max_delay_us = 1000;
  int workers = 2;
  // Form only batches of 1, 2, 4, 8, ... images. A backend that compiles one model per batch size (OpenVINO,
  // static shapes) then holds at most log2(max_batch) + 1 of them per image size instead of max_batch; the
  // requests left over run in the next batch at once, since their deadline has passed.
  bool power_of_two_batches = true;
};

using Pixels = std::variant<std::vector<uint16_t>, std::vector<float>>;

enum class Outcome { Done, Failed, Cancelled };

// One submitted image. The batcher owns a copy of the pixels, so the caller may reuse its buffer at once.
struct Request {
  Pixels input;    // (H, W)
  Pixels output;   // (C, H, W), same dtype as input; filled when the request succeeds
  WorkImage work;  // Engine::prepare's: its size, working size, window (and working image when resampled)
  std::shared_ptr<void> tag;  // the caller's handle (e.g. a future), carried through untouched
  std::chrono::steady_clock::time_point enqueued;
  Outcome outcome = Outcome::Done;
  std::exception_ptr error;  // set when Failed
};

// Called once per batch with the batch's requests, each with its outcome.
using Completion = std::function<void(std::vector<std::unique_ptr<Request>>& batch)>;

class Batcher {
 public:
  Batcher(std::shared_ptr<const Engine> engine, std::shared_ptr<StatsRecorder> stats, BatcherOptions options,
          Completion completion);
  ~Batcher();  // drains pending work (close(false))
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues one image. Throws Error(Engine) once closed.
  void submit(std::unique_ptr<Request> request);

  // Stops accepting requests; with cancel, queued (not yet running) requests complete as Cancelled, otherwise
  // they all run. Returns when every worker has finished and the requests this call cancelled are completed.
  // Idempotent and safe from any number of threads at once: one caller joins the workers, the others wait for
  // that join. Called on a worker thread (from a completion, e.g. a future's done-callback) it cannot wait for
  // its own thread, so it stops the batcher and returns at once; a later close from outside, or the
  // destructor, joins. A completion may call close again (re-entrantly) without deadlock.
  void close(bool cancel);

  int64_t pending() const;
  const BatcherOptions& options() const { return options_; }

 private:
  void worker_loop();
  size_t compatible_count(const Request& first) const;  // needs mutex_
  std::vector<std::unique_ptr<Request>> take_batch();   // needs mutex_
  void run_batch(std::vector<std::unique_ptr<Request>>& batch);

  std::shared_ptr<const Engine> engine_;
  std::shared_ptr<StatsRecorder> stats_;
  BatcherOptions options_;
  Completion completion_;

  bool on_worker_thread() const;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Request>> queue_;
  bool closing_ = false;
  // The join protocol of close(): std::thread::join from two threads at once is undefined (one of them blocked
  // forever in practice), so exactly one caller joins and the others wait on `joined_cv_`.
  bool joining_ = false;
  bool joined_ = false;
  std::condition_variable joined_cv_;
  std::vector<std::thread> workers_;
  std::vector<std::thread::id> worker_ids_;  // written before any close; read without touching workers_
};

}  // namespace dexrt
