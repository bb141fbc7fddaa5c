// Siddon ray tracing and polyenergetic detector sums. See dexrt/drr.h and docs/synth.md.
#include "dexrt/drr.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <thread>

#include "dexrt/error.h"

namespace dexrt::drr {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int64_t kMaxDetectorSide = 16384;
constexpr int64_t kMaxChannels = 16;

Vec3 add(const Vec3& a, const Vec3& b) { return {a[0] + b[0], a[1] + b[1], a[2] + b[2]}; }
Vec3 sub(const Vec3& a, const Vec3& b) { return {a[0] - b[0], a[1] - b[1], a[2] - b[2]}; }
Vec3 scale(const Vec3& a, double s) { return {a[0] * s, a[1] * s, a[2] * s}; }
double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
Vec3 cross(const Vec3& a, const Vec3& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }

// Rodrigues: v rotated by `deg` degrees, right-handed about the unit vector `axis`.
Vec3 rotate(const Vec3& v, const Vec3& axis, double deg) {
  const double t = deg * kPi / 180.0, c = std::cos(t), s = std::sin(t);
  return add(add(scale(v, c), scale(cross(axis, v), s)), scale(axis, dot(axis, v) * (1.0 - c)));
}

void require(bool ok, const std::string& message) {
  if (!ok) throw Error(ErrorKind::Input, message);
}

// exp(x) for x <= 0 (clamped at -708, where it underflows anyway), to about 2 ulp. Plain arithmetic, no
// library call, so the compiler vectorises the loops that use it: Cody-Waite reduction x = n ln2 + r,
// |r| <= ln2 / 2, a degree-11 Taylor polynomial for exp(r), and 2^n built directly in the exponent bits.
inline double exp_neg(double x) {
  x = std::max(std::min(x, 0.0), -708.0);
  constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer in the low bits
  const double t = x * 1.4426950408889634 + kShifter;
  const double n = t - kShifter;
  const double r = (x - n * 0.693147180559890330) - n * 5.4979230187083711e-14;  // ln2 split in hi + lo
  double p = 2.505210838544172e-08;  // 1/11!
  p = p * r + 2.755731922398589e-07;
  p = p * r + 2.755731922398589e-06;
  p = p * r + 2.48015873015873e-05;
  p = p * r + 1.984126984126984e-04;
  p = p * r + 1.388888888888889e-03;
  p = p * r + 8.333333333333333e-03;
  p = p * r + 4.166666666666666e-02;
  p = p * r + 1.666666666666667e-01;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  const uint64_t scale_bits = (bits + 1023u) << 52;  // the low bits of t hold n; n + 1023 is 2^n's exponent
  double two_n;
  std::memcpy(&two_n, &scale_bits, sizeof two_n);
  return p * two_n;
}

// Runs body(task) for task in [0, n) on `threads` threads; the first exception is re-thrown on the caller.
template <typename Body>
void parallel_for(int64_t n, int threads, Body body) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(n, 1)));
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&]() {
    try {
      for (int64_t t = next++; t < n; t = next++) body(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = n;  // the other workers stop at their next task
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (failure) std::rethrow_exception(failure);
}

// World -> continuous voxel index, the inverse of the volume's affine.
struct IndexMap {
  std::array<Vec3, 3> inv;  // rows of the inverse 3x3
  Vec3 offset;

  explicit IndexMap(const Volume& v) {
    const auto& a = v.affine;
    const Vec3 c0{a[0][0], a[1][0], a[2][0]}, c1{a[0][1], a[1][1], a[2][1]}, c2{a[0][2], a[1][2], a[2][2]};
    const double det = dot(c0, cross(c1, c2));
    require(std::isfinite(det) && std::abs(det) > 1e-12, "the volume's affine is singular (voxel spacing 0?)");
    inv = {scale(cross(c1, c2), 1.0 / det), scale(cross(c2, c0), 1.0 / det), scale(cross(c0, c1), 1.0 / det)};
    offset = {a[0][3], a[1][3], a[2][3]};
  }
  Vec3 operator()(const Vec3& w) const {
    const Vec3 d = sub(w, offset);
    return {dot(inv[0], d), dot(inv[1], d), dot(inv[2], d)};
  }
};

// The whole volume box must sit between the source and the detector, or the "radiograph" is meaningless.
void check_volume_in_beam(const Volume& v, const ConeBeam& view, const Frame& f) {
  for (int corner = 0; corner < 8; ++corner) {
    Vec3 w{v.affine[0][3], v.affine[1][3], v.affine[2][3]};
    for (int ax = 0; ax < 3; ++ax) {
      const double idx = (corner >> ax) & 1 ? static_cast<double>(v.shape[ax]) - 0.5 : -0.5;
      for (int r = 0; r < 3; ++r) w[r] += v.affine[r][ax] * idx;
    }
    const double depth = dot(sub(w, f.source), f.beam);  // distance along the beam axis from the source
    require(depth > 0.0, "the CT volume reaches behind the X-ray source (source-isocentre distance " +
                             std::to_string(view.sid_mm) + " mm is too short for this volume)");
    require(depth < view.sdd_mm, "the CT volume crosses the detector plane (source-detector distance " +
                                     std::to_string(view.sdd_mm) + " mm is too short for this volume)");
  }
}

// Siddon/Jacobs traversal of one ray from p0 to p1 (voxel index space); adds value x alpha-length to acc.
// kChannels > 0 fixes the channel count at compile time (the common cases); 0 reads it from the volume.
template <int kChannels>
void trace(const Volume& v, const Vec3& p0, const Vec3& p1, double* acc) {
  const Vec3 d = sub(p1, p0);
  double amin = 0.0, amax = 1.0;
  for (int a = 0; a < 3; ++a) {
    const double lo = -0.5, hi = static_cast<double>(v.shape[a]) - 0.5;
    if (std::abs(d[a]) < 1e-12) {
      if (p0[a] < lo || p0[a] > hi) return;  // parallel to this axis and outside the slab
      continue;
    }
    const double a0 = (lo - p0[a]) / d[a], a1 = (hi - p0[a]) / d[a];
    amin = std::max(amin, std::min(a0, a1));
    amax = std::min(amax, std::max(a0, a1));
  }
  if (!(amin < amax)) return;

  const int64_t channels = kChannels > 0 ? kChannels : v.channels;
  const int64_t stride[3] = {v.shape[1] * v.shape[2] * channels, v.shape[2] * channels, channels};
  int64_t idx[3];
  int64_t offset = 0;  // of the current voxel, in floats
  int64_t step[3];
  double next[3], delta[3];
  for (int a = 0; a < 3; ++a) {
    const double x = p0[a] + amin * d[a];
    idx[a] = std::clamp<int64_t>(static_cast<int64_t>(std::floor(x + 0.5)), 0, v.shape[a] - 1);
    offset += idx[a] * stride[a];
    if (d[a] > 1e-12) {
      step[a] = 1;
      next[a] = (static_cast<double>(idx[a]) + 0.5 - p0[a]) / d[a];
      delta[a] = 1.0 / d[a];
    } else if (d[a] < -1e-12) {
      step[a] = -1;
      next[a] = (static_cast<double>(idx[a]) - 0.5 - p0[a]) / d[a];
      delta[a] = -1.0 / d[a];
    } else {
      step[a] = 0;
      next[a] = std::numeric_limits<double>::infinity();
      delta[a] = 0.0;
    }
  }
  // Voxels left before the ray leaves the grid along each axis; the walk ends when one runs out.
  int64_t left[3];
  for (int a = 0; a < 3; ++a) left[a] = step[a] > 0 ? v.shape[a] - 1 - idx[a] : (step[a] < 0 ? idx[a] : INT64_MAX);
  const float* data = v.data;
  double alpha = amin;
  for (;;) {
    const int ax = next[0] < next[1] ? (next[0] < next[2] ? 0 : 2) : (next[1] < next[2] ? 1 : 2);
    const bool last = next[ax] >= amax;
    const double an = last ? amax : next[ax];
    const double len = std::max(an - alpha, 0.0);  // never negative, even when the entry voxel rounds badly
    const float* voxel = data + offset;
    for (int64_t c = 0; c < channels; ++c) acc[c] += static_cast<double>(voxel[c]) * len;
    if (last || left[ax] == 0) break;
    alpha = an;
    --left[ax];
    offset += step[ax] * stride[ax];
    next[ax] += delta[ax];
  }
}

using TraceFn = void (*)(const Volume&, const Vec3&, const Vec3&, double*);

TraceFn tracer(int64_t channels) {
  switch (channels) {
    case 1: return &trace<1>;
    case 3: return &trace<3>;
    case 4: return &trace<4>;
    default: return &trace<0>;
  }
}

}  // namespace

Frame make_frame(const ConeBeam& g) {
  const auto finite = [](double x) { return std::isfinite(x); };
  require(finite(g.sid_mm) && g.sid_mm > 0.0, "source-isocentre distance must be > 0 mm, got " +
                                                  std::to_string(g.sid_mm));
  require(finite(g.sdd_mm) && g.sdd_mm > g.sid_mm && g.sdd_mm <= 1e5,
          "source-detector distance must exceed the source-isocentre distance (" + std::to_string(g.sid_mm) +
              " mm) and be at most 100 m, got " + std::to_string(g.sdd_mm) + " mm");
  require(g.rows >= 1 && g.cols >= 1 && g.rows <= kMaxDetectorSide && g.cols <= kMaxDetectorSide,
          "detector must have 1.." + std::to_string(kMaxDetectorSide) + " rows and columns, got " +
              std::to_string(g.rows) + "x" + std::to_string(g.cols));
  require(finite(g.pixel_row_mm) && finite(g.pixel_col_mm) && g.pixel_row_mm > 0.0 && g.pixel_col_mm > 0.0 &&
              g.pixel_row_mm <= 100.0 && g.pixel_col_mm <= 100.0,
          "detector pixel spacing must be in (0, 100] mm");
  require(finite(g.gantry_deg) && finite(g.couch_deg) && finite(g.tilt_deg), "angles must be finite");
  require(std::abs(g.tilt_deg) < 90.0 && std::abs(g.couch_deg) <= 360.0,
          "tilt must be within (-90, 90) degrees and couch within [-360, 360]");
  require(finite(g.iso_mm[0]) && finite(g.iso_mm[1]) && finite(g.iso_mm[2]), "isocentre must be finite");

  const Vec3 anterior{0.0, 1.0, 0.0}, left{-1.0, 0.0, 0.0}, superior{0.0, 0.0, 1.0};
  const double t = g.gantry_deg * kPi / 180.0;
  // Gantry 0: source anterior (AP beam); gantry 90: source at the patient's left.
  Vec3 to_source = add(scale(anterior, std::cos(t)), scale(left, std::sin(t)));
  Vec3 up = superior;
  const Vec3 cols_dir = cross(scale(to_source, -1.0), up);  // unit: the two are orthonormal
  // Tilt: the source swings towards the head for positive angles, about the column axis.
  to_source = rotate(to_source, cols_dir, -g.tilt_deg);
  up = rotate(up, cols_dir, -g.tilt_deg);
  // Couch: the patient turns by +couch about the anterior axis, i.e. the imaging frame by -couch.
  to_source = rotate(to_source, anterior, -g.couch_deg);
  up = rotate(up, anterior, -g.couch_deg);
  const Vec3 right_in_image = cross(scale(to_source, -1.0), up);

  Frame f;
  f.beam = scale(to_source, -1.0);
  f.source = add(g.iso_mm, scale(to_source, g.sid_mm));
  const Vec3 centre = add(g.iso_mm, scale(to_source, g.sid_mm - g.sdd_mm));
  f.col_step = scale(right_in_image, g.pixel_col_mm);
  f.row_step = scale(up, -g.pixel_row_mm);
  f.origin = sub(sub(centre, scale(f.col_step, 0.5 * static_cast<double>(g.cols - 1))),
                 scale(f.row_step, 0.5 * static_cast<double>(g.rows - 1)));
  return f;
}

void project(const Volume& volume, const std::vector<ConeBeam>& views, float* out, int threads) {
  require(volume.data != nullptr, "volume has no data");
  for (int a = 0; a < 3; ++a) require(volume.shape[a] >= 1, "volume must have at least one voxel per axis");
  require(volume.channels >= 1 && volume.channels <= kMaxChannels,
          "volume must have 1.." + std::to_string(kMaxChannels) + " channels");
  if (views.empty()) return;
  const int64_t rows = views[0].rows, cols = views[0].cols;
  std::vector<Frame> frames;
  frames.reserve(views.size());
  for (const auto& view : views) {
    require(view.rows == rows && view.cols == cols, "all views of one call must share the detector size");
    frames.push_back(make_frame(view));
    check_volume_in_beam(volume, view, frames.back());
  }
  const IndexMap to_index(volume);
  const TraceFn trace_ray = tracer(volume.channels);
  const int64_t channels = volume.channels;
  const int64_t n_tasks = static_cast<int64_t>(views.size()) * cols;

  // One task = one detector column of one view, walked row by row. Neighbouring rows differ along the
  // patient's long axis, which build_volume makes the fastest-varying index, so consecutive rays reuse the
  // cache lines of the previous one; columns are independent, so no synchronisation is needed.
  parallel_for(n_tasks, threads, [&](int64_t task) {
    const int64_t view = task / cols, c = task % cols;
    const Frame& f = frames[static_cast<size_t>(view)];
    const Vec3 p0 = to_index(f.source);
    const Vec3 col_origin = add(f.origin, scale(f.col_step, static_cast<double>(c)));
    float* dst = out + view * channels * rows * cols + c;  // (n_views, channels, rows, cols)
    double acc[kMaxChannels];
    for (int64_t r = 0; r < rows; ++r) {
      const Vec3 pixel = add(col_origin, scale(f.row_step, static_cast<double>(r)));
      std::fill(acc, acc + channels, 0.0);
      trace_ray(volume, p0, to_index(pixel), acc);
      const double length_mm = norm(sub(pixel, f.source));  // alpha runs 0..1 over this length
      for (int64_t ch = 0; ch < channels; ++ch) dst[(ch * rows + r) * cols] = static_cast<float>(acc[ch] * length_mm);
    }
  });
}

void polyenergetic(const float* line, int64_t channels, int64_t pixels, const double* mu, int64_t energies,
                   const double* weights, int64_t sums, double* out, int threads) {
  require(channels >= 1 && energies >= 1 && sums >= 1, "polyenergetic: empty channel, energy or sum axis");
  constexpr int64_t kBlock = 64;  // pixels per inner block: every loop below runs over them, so it vectorises
  const int64_t n_tasks = (pixels + kBlock - 1) / kBlock;
  parallel_for(n_tasks, threads, [&](int64_t task) {
    const int64_t p0 = task * kBlock, n = std::min(kBlock, pixels - p0);
    double transmission[kBlock];
    double acc[kBlock];
    thread_local std::vector<double> sum_buffer;
    sum_buffer.assign(static_cast<size_t>(sums * kBlock), 0.0);
    for (int64_t e = 0; e < energies; ++e) {
      // Exponentials once per (pixel, energy); every spectrum shares them.
      std::fill(acc, acc + kBlock, 0.0);
      for (int64_t c = 0; c < channels; ++c) {
        const double m = mu[c * energies + e];
        const float* l = line + c * pixels + p0;
        for (int64_t i = 0; i < n; ++i) acc[i] += m * static_cast<double>(l[i]);
      }
      for (int64_t i = 0; i < kBlock; ++i) transmission[i] = exp_neg(-acc[i]);
      for (int64_t s = 0; s < sums; ++s) {
        const double w = weights[s * energies + e];
        double* dst = sum_buffer.data() + s * kBlock;
        for (int64_t i = 0; i < kBlock; ++i) dst[i] += w * transmission[i];
      }
    }
    for (int64_t s = 0; s < sums; ++s) std::copy_n(sum_buffer.data() + s * kBlock, n, out + s * pixels + p0);
  });
}

}  // namespace dexrt::drr
