// A parallel loop for the pre/post work outside the network (resampling, windows, the full-resolution outputs):
// contiguous chunks of [0, n) on the calling thread and up to threads - 1 short-lived others. Thread start costs
// tens of microseconds, against milliseconds of work per call at detector sizes; small loops run inline.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace dexrt {

// The threads a loop uses when asked for `requested` (0: one per hardware thread).
inline int loop_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// f(begin, end) over [0, n) in at most `threads` chunks of at least `grain` items; the first exception is
// rethrown on the calling thread once every chunk has finished.
template <typename F>
void parallel_for(int64_t n, int threads, int64_t grain, F&& f) {
  if (n <= 0) return;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(loop_threads(threads), n / std::max<int64_t>(grain, 1)));
  if (chunks == 1) {
    f(int64_t{0}, n);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(chunks - 1));
  auto chunk = [&](int64_t i) {
    try {
      f(n * i / chunks, n * (i + 1) / chunks);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
  };
  int64_t started = 1;
  try {
    for (; started < chunks; ++started) pool.emplace_back(chunk, started);
  } catch (const std::system_error&) {
    // no thread to be had: the chunks not handed out run here
  }
  chunk(0);
  for (int64_t i = started; i < chunks; ++i) chunk(i);
  for (auto& t : pool) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace dexrt
