#include "dexrt/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace dexrt {

void StatsRecorder::Ring::add(double v, size_t window) {
  if (values.size() < window) {
    values.push_back(v);
  } else {
    values[next] = v;
    next = (next + 1) % window;
  }
}

void StatsRecorder::record_batch(int64_t n, const StageTimes& times, const std::vector<double>& queue_us,
                                 const std::vector<double>& total_us) {
  std::lock_guard<std::mutex> lock(mutex_);
  requests_ += n;
  batches_ += 1;
  batch_sizes_[n] += 1;
  rings_["pre_us"].add(times.pre_us, window_);
  rings_["infer_us"].add(times.infer_us, window_);
  rings_["post_us"].add(times.post_us, window_);
  for (double q : queue_us) rings_["queue_us"].add(q, window_);
  for (double t : total_us) rings_["total_us"].add(t, window_);
}

namespace {

// Nearest-rank percentile of sorted values.
double percentile(const std::vector<double>& sorted, double p) {
  const auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

}  // namespace

StatsSnapshot StatsRecorder::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  StatsSnapshot s;
  s.requests = requests_;
  s.batches = batches_;
  s.batch_sizes = batch_sizes_;
  for (const auto& [name, ring] : rings_) {
    if (ring.values.empty()) continue;
    std::vector<double> sorted = ring.values;
    std::sort(sorted.begin(), sorted.end());
    Summary sum;
    sum.count = static_cast<int64_t>(sorted.size());
    sum.mean = std::accumulate(sorted.begin(), sorted.end(), 0.0) / static_cast<double>(sorted.size());
    sum.p50 = percentile(sorted, 50);
    sum.p99 = percentile(sorted, 99);
    sum.max = sorted.back();
    s.stages[name] = sum;
  }
  return s;
}

void StatsRecorder::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  requests_ = batches_ = 0;
  batch_sizes_.clear();
  rings_.clear();
}

}  // namespace dexrt
