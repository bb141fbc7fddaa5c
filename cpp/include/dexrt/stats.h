// Latency statistics: per-stage timings kept over a sliding window of recent samples, and a batch-size
// histogram over the engine's lifetime. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dexrt/engine.h"

namespace dexrt {

struct Summary {
  int64_t count = 0;  // samples in the window
  double mean = 0, p50 = 0, p99 = 0, max = 0;
};

struct StatsSnapshot {
  int64_t requests = 0;  // images completed (ok or failed)
  int64_t batches = 0;
  std::map<int64_t, int64_t> batch_sizes;  // batch size -> number of batches
  std::map<std::string, Summary> stages;   // "queue_us", "pre_us", "infer_us", "post_us", "total_us"
};

class StatsRecorder {
 public:
  explicit StatsRecorder(size_t window = 8192) : window_(window) {}

  // One batch of `n` images: the stage times of the batch, and each request's queue wait and total latency.
  void record_batch(int64_t n, const StageTimes& times, const std::vector<double>& queue_us,
                    const std::vector<double>& total_us);
  StatsSnapshot snapshot() const;
  void reset();

 private:
  struct Ring {
    std::vector<double> values;
    size_t next = 0;
    void add(double v, size_t window);
  };

  size_t window_;
  mutable std::mutex mutex_;
  int64_t requests_ = 0, batches_ = 0;
  std::map<int64_t, int64_t> batch_sizes_;
  std::map<std::string, Ring> rings_;
};

}  // namespace dexrt
