#include "dexrt/fullres.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <sstream>
#include <string>

#include "dexrt/error.h"
#include "dexrt/parallel.h"
#include "dexrt/parts.h"
#include "dexrt/resample.h"
#include "dexrt/robust_range.h"
#include "dexrt/simd.h"

namespace dexrt {

namespace {

std::string number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// The local slope of an output p on the working image I by He et al.'s guided filter: per pixel the least-squares
// fit p ~ a * I + b over the (2r + 1)^2 window around it, a regularised by eps, then averaged over the same windows
// (box filters, O(N)). I and p come in with their means removed, so the float32 moments do not cancel.
std::vector<float> guided_slope(const std::vector<float>& guide, const std::vector<float>& p, int64_t h, int64_t w,
                                int64_t r, float eps) {
  const size_t n = guide.size();
  std::vector<float> ip(n), ii(n), mean_i(n), mean_p(n), mean_ip(n), mean_ii(n);
  for (size_t k = 0; k < n; ++k) {
    ip[k] = guide[k] * p[k];
    ii[k] = guide[k] * guide[k];
  }
  box_mean(guide.data(), h, w, r, mean_i.data());
  box_mean(p.data(), h, w, r, mean_p.data());
  box_mean(ip.data(), h, w, r, mean_ip.data());
  box_mean(ii.data(), h, w, r, mean_ii.data());
  std::vector<float>& a = ip;  // reused
  for (size_t k = 0; k < n; ++k) {
    const float variance = mean_ii[k] - mean_i[k] * mean_i[k];
    const float covariance = mean_ip[k] - mean_i[k] * mean_p[k];
    a[k] = covariance / (std::max(variance, 0.0f) + eps);
  }
  std::vector<float> slope(n);
  box_mean(a.data(), h, w, r, slope.data());
  return slope;
}

// The widened maps of one finish, kept per calling thread between calls: at detector sizes they are megabytes,
// which fresh allocations would page-fault in and zero on every frame.
class Scratch {
 public:
  float* take(size_t n) {
    if (used_ == buffers_.size()) buffers_.emplace_back();
    std::vector<float>& b = buffers_[used_++];
    if (b.size() < n) b.resize(n);
    return b.data();
  }
  void reset() { used_ = 0; }

 private:
  std::vector<std::vector<float>> buffers_;
  size_t used_ = 0;
};

// A working-size map on its way to the frame's size: widened to the frame's width (h, W), with the row taps that
// bring it to the frame's height.
struct Map {
  const float* wide = nullptr;  // null: no such map
  const Taps* rows = nullptr;
  void row(int64_t y, int64_t width, float* dst) const { combine_rows(wide, width, *rows, y, dst); }
};

// One output channel: brought up as it is (`value`), or by the guided filter as slope * g + value, g the frame in
// the guide's units (`slope` and `value` then the filter's a and b); the soft part of an additive engine instead
// carries the correction (`value`).
struct ChannelPlan {
  enum class Kind { Resampled, Soft } kind = Kind::Resampled;
  Map value, slope;
};

// One row of a guided output: v = slope * g + value, g the frame's pixels in the guide's normalised units.
DEXRT_VECTOR_CLONES void guided_row(const float* __restrict value, const float* __restrict slope,
                                    const float* __restrict g, float* __restrict out, int64_t n) {
  for (int64_t x = 0; x < n; ++x) out[x] = slope[x] * g[x] + value[x];
}

// g = (pixel - lo) * inv_span over a row: the frame in the guide's normalised units.
DEXRT_VECTOR_CLONES void normalise_row(const float* __restrict pixel, float lo, float inv, float* __restrict g,
                                       int64_t n) {
  for (int64_t x = 0; x < n; ++x) g[x] = (pixel[x] - lo) * inv;
}

// soft = input - bone + correction (parts.h) over a row.
DEXRT_VECTOR_CLONES void soft_row(const float* __restrict pixel, const float* __restrict bone,
                                  const float* __restrict correction, float* __restrict out, int64_t n) {
  if (correction != nullptr) {
    for (int64_t x = 0; x < n; ++x) out[x] = soft_of(pixel[x], bone[x], correction[x]);
  } else {
    for (int64_t x = 0; x < n; ++x) out[x] = soft_of(pixel[x], bone[x], 0.0f);
  }
}

// The default model's row in one pass: every map is brought to this row by the same two linear taps, then
// bone = a * g + b (g the pixel in the guide's units) and soft = pixel - bone + correction are stored. Every stream
// is contiguous and nothing goes through a row buffer.
struct PartsRow {
  const float *slope0, *slope1, *value0, *value1, *correction0, *correction1;
  float w0, w1;
  float lo, inv;  // the guide's units
};

template <typename T>
inline __attribute__((always_inline)) void parts_row_body(const PartsRow& r, const T* __restrict src,
                                                          T* __restrict bone_out, T* __restrict soft_out, int64_t n) {
  const float* __restrict a0 = r.slope0;
  const float* __restrict a1 = r.slope1;
  const float* __restrict b0 = r.value0;
  const float* __restrict b1 = r.value1;
  const float* __restrict c0 = r.correction0;
  const float* __restrict c1 = r.correction1;
  const float w0 = r.w0, w1 = r.w1, lo = r.lo, inv = r.inv;
  for (int64_t x = 0; x < n; ++x) {
    const float p = static_cast<float>(src[x]);
    const float bone = (w0 * a0[x] + w1 * a1[x]) * ((p - lo) * inv) + (w0 * b0[x] + w1 * b1[x]);
    bone_out[x] = store_as<T>(bone);
    soft_out[x] = store_as<T>(soft_of(p, bone, w0 * c0[x] + w1 * c1[x]));
  }
}
DEXRT_VECTOR_CLONES void parts_row(const PartsRow& r, const uint16_t* src, uint16_t* bone, uint16_t* soft, int64_t n) {
  parts_row_body(r, src, bone, soft, n);
}
DEXRT_VECTOR_CLONES void parts_row(const PartsRow& r, const float* src, float* bone, float* soft, int64_t n) {
  parts_row_body(r, src, bone, soft, n);
}

template <typename T>
inline __attribute__((always_inline)) void convert_row(const T* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = static_cast<float>(src[x]);
}
template <typename T>
inline __attribute__((always_inline)) void store_row(const float* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = store_as<T>(src[x]);
}
DEXRT_VECTOR_CLONES void to_float(const uint16_t* src, float* dst, int64_t n) { convert_row(src, dst, n); }
DEXRT_VECTOR_CLONES void to_float(const float* src, float* dst, int64_t n) { convert_row(src, dst, n); }
DEXRT_VECTOR_CLONES void to_stored(const float* src, uint16_t* dst, int64_t n) { store_row(src, dst, n); }
DEXRT_VECTOR_CLONES void to_stored(const float* src, float* dst, int64_t n) { store_row(src, dst, n); }

}  // namespace

Size2 working_size(int64_t height, int64_t width, double row_mm, double col_mm, double model_mm) {
  if (height <= 0 || width <= 0) throw Error(ErrorKind::Input, "the image is empty");
  for (double v : {row_mm, col_mm, model_mm}) {
    if (!(std::isfinite(v) && v > 0.0)) {
      throw Error(ErrorKind::Input, "pixel spacings must be positive and finite, got " + number(row_mm) + " x " +
                                        number(col_mm) + " mm for a model of " + number(model_mm) + " mm");
    }
  }
  // In doubles first: a hostile spacing must give a clear error, never an overflow in a conversion.
  const double rows = static_cast<double>(height) * row_mm / model_mm;
  const double cols = static_cast<double>(width) * col_mm / model_mm;
  if (!(std::isfinite(rows) && std::isfinite(cols) && rows <= kMaxWorkingSide && cols <= kMaxWorkingSide)) {
    std::ostringstream s;
    s.setf(std::ios::fixed);
    s.precision(0);
    s << rows << "x" << cols;
    throw Error(ErrorKind::Input, "resampling " + std::to_string(height) + "x" + std::to_string(width) +
                                      " pixels of " + number(row_mm) + "x" + number(col_mm) + " mm to the model's " +
                                      number(model_mm) + " mm would make " + s.str() + " pixels, more than the " +
                                      std::to_string(kMaxWorkingSide) +
                                      " per side dexrt allows; check the pixel spacing, or run the image at its "
                                      "own size (no spacing, --no-resample)");
  }
  // Python's round(): half to even.
  const Size2 target{std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(rows))),
                     std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(cols)))};
  const double dh = static_cast<double>(target.height) / static_cast<double>(height) - 1.0;
  const double dw = static_cast<double>(target.width) / static_cast<double>(width) - 1.0;
  if (std::abs(dh) <= kResampleTolerance && std::abs(dw) <= kResampleTolerance) return Size2{height, width};
  return target;
}

template <typename T>
WorkImage prepare_frame(const T* frame, Size2 size, Size2 work, bool normalised, const FullResolutionOptions& o) {
  WorkImage w;
  w.size = size;
  w.work = work;
  if (work == size) {
    if (normalised) w.window = image_window(robust_range(frame, size.height, size.width));
    return w;
  }
  w.pixels.resize(static_cast<size_t>(work.height * work.width));
  resize_image(frame, size.height, size.width, w.pixels.data(), work.height, work.width, o.threads);
  w.guide = image_window(robust_range(w.pixels.data(), work.height, work.width));
  if (normalised) w.window = w.guide;
  return w;
}

template <typename T>
void finish_frame(const T* frame, const WorkImage& work, const float* net, const Contract& contract, T* out,
                  int64_t channel_stride, const FullResolutionOptions& o) {
  const int64_t H = work.size.height, W = work.size.width, h = work.work.height, w = work.work.width;
  const int64_t plane = h * w;
  const auto channels = static_cast<int64_t>(contract.outputs.size());
  const AdditiveParts parts = additive_parts(contract.channels, contract.normalised);
  // Bicubic and the guided filter bring a coarser output up; a frame coarser than the model (in either direction)
  // gets its outputs back by plain resampling, area averaging where they shrink.
  const bool enlarging = h <= H && w <= W;
  const bool guided = enlarging && o.upsampling == Upsampling::Guided;
  const Taps smooth_rows = resize_taps(h, H), smooth_cols = resize_taps(w, W);  // linear when enlarging
  Taps cubic_rows, cubic_cols;
  if (enlarging && !guided) {
    cubic_rows = cubic_taps(h, H);
    cubic_cols = cubic_taps(w, W);
  }
  // Bicubic brings each output up as it is; the guided filter's maps come up linearly (bicubic maps changed its
  // scores on 1024^2 views by less than 0.005 suppression and 0.02 dB, for twice the taps).
  const Taps& value_rows = enlarging && !guided ? cubic_rows : smooth_rows;
  const Taps& value_cols = enlarging && !guided ? cubic_cols : smooth_cols;

  thread_local Scratch scratch;
  scratch.reset();
  auto widen = [&](const float* map, const Taps& cols, const Taps& rows) {
    float* wide = scratch.take(static_cast<size_t>(h * W));
    widen_rows(map, h, cols, wide, o.threads);
    return Map{wide, &rows};
  };

  // The guide: the working image in the units of its robust range (the frame's pixels map the same way).
  // The filter fits on it with its mean removed (so the float32 moments do not cancel); that is the same for every
  // output, so it is made once.
  std::vector<float> guide, centred_guide;
  if (guided) {
    guide.resize(static_cast<size_t>(plane));
    double sum = 0.0;
    for (int64_t k = 0; k < plane; ++k) {
      guide[static_cast<size_t>(k)] = work.guide.normalise(work.pixels[static_cast<size_t>(k)]);
      sum += guide[static_cast<size_t>(k)];
    }
    const auto mean = static_cast<float>(sum / static_cast<double>(plane));
    centred_guide = guide;
    for (auto& v : centred_guide) v -= mean;
  }
  std::vector<ChannelPlan> plans(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    ChannelPlan& plan = plans[static_cast<size_t>(c)];
    const float* p = net + c * plane;
    if (c == parts.soft && parts.present()) {
      plan.kind = ChannelPlan::Kind::Soft;
      if (o.correction) {
        const float* bone = net + parts.bone * plane;
        std::vector<float> correction(static_cast<size_t>(plane));
        for (int64_t k = 0; k < plane; ++k) {
          correction[static_cast<size_t>(k)] = soft_correction(work.pixels[static_cast<size_t>(k)], bone[k], p[k]);
        }
        plan.value = widen(correction.data(), smooth_cols, smooth_rows);
      }
      continue;
    }
    if (!guided) {
      plan.value = widen(p, value_cols, value_rows);
      continue;
    }
    // He et al.'s fast guided filter: the slope a of p on the guide, fitted locally at the working size (box
    // filters), and an intercept b = p - a * guide that gives back the network's own output at the working size
    // exactly. (Their box-averaged b blurs it: measured on 1024^2 views, that scored below plain bicubic.)
    std::vector<float> centred(p, p + plane);
    double sum = 0.0;
    for (int64_t k = 0; k < plane; ++k) sum += p[k];
    const auto mean = static_cast<float>(sum / static_cast<double>(plane));
    for (auto& v : centred) v -= mean;
    std::vector<float> slope = guided_slope(centred_guide, centred, h, w, o.radius, o.epsilon);
    // bone's share of a detail is between none and all of it: a per grey value in [0, 1] (parts.h)
    if (c == parts.bone && parts.present()) {
      for (auto& v : slope) v = std::clamp(v, 0.0f, work.guide.span);
    }
    std::vector<float> intercept(static_cast<size_t>(plane));
    for (int64_t k = 0; k < plane; ++k) {
      intercept[static_cast<size_t>(k)] = p[k] - slope[static_cast<size_t>(k)] * guide[static_cast<size_t>(k)];
    }
    plan.slope = widen(slope.data(), smooth_cols, smooth_rows);
    plan.value = widen(intercept.data(), smooth_cols, smooth_rows);
  }

  std::atomic<bool> finite{true};
  const ChannelPlan* soft_plan = parts.present() ? &plans[static_cast<size_t>(parts.soft)] : nullptr;
  if (guided && channels == 2 && soft_plan != nullptr && soft_plan->value.wide != nullptr) {
    // bone and soft only, the default model: the fused row pass (every map on the same linear row taps)
    const ChannelPlan& bone_plan = plans[static_cast<size_t>(parts.bone)];
    parallel_for(H, o.threads, 16, [&](int64_t begin, int64_t end) {
      bool ok = true;
      for (int64_t y = begin; y < end; ++y) {
        const int64_t r0 = smooth_rows.first[static_cast<size_t>(y)] * W;
        const int64_t r1 = smooth_rows.count > 1 ? r0 + W : r0;
        const float* w = smooth_rows.at(y);
        const PartsRow row{bone_plan.slope.wide + r0,  bone_plan.slope.wide + r1,
                           bone_plan.value.wide + r0,  bone_plan.value.wide + r1,
                           soft_plan->value.wide + r0, soft_plan->value.wide + r1,
                           w[0], smooth_rows.count > 1 ? w[1] : 0.0f, work.guide.lo, work.guide.inv_span};
        T* bone = out + parts.bone * channel_stride + y * W;
        T* soft = out + parts.soft * channel_stride + y * W;
        parts_row(row, frame + y * W, bone, soft, W);
        if constexpr (std::is_same_v<T, float>) ok = ok && all_finite(bone, W) && all_finite(soft, W);
      }
      if (!ok) finite = false;
    });
    if (!finite) throw Error(ErrorKind::Input, kNotFiniteMessage);
    return;
  }
  parallel_for(H, o.threads, 16, [&](int64_t begin, int64_t end) {
    const auto n = static_cast<size_t>(W);
    std::vector<float> pixel(n), g(n), value(n), slope(n), correction(n);
    std::vector<std::vector<float>> values(static_cast<size_t>(channels), std::vector<float>(n));
    bool ok = true;
    for (int64_t y = begin; y < end; ++y) {
      to_float(frame + y * W, pixel.data(), W);
      if (guided) normalise_row(pixel.data(), work.guide.lo, work.guide.inv_span, g.data(), W);
      for (int64_t c = 0; c < channels; ++c) {  // every part but soft, which needs bone's
        const ChannelPlan& plan = plans[static_cast<size_t>(c)];
        if (plan.kind == ChannelPlan::Kind::Soft) continue;
        float* v = values[static_cast<size_t>(c)].data();
        if (plan.slope.wide != nullptr) {
          plan.value.row(y, W, value.data());
          plan.slope.row(y, W, slope.data());
          guided_row(value.data(), slope.data(), g.data(), v, W);
        } else {
          plan.value.row(y, W, v);
        }
      }
      if (parts.present()) {
        const ChannelPlan& plan = plans[static_cast<size_t>(parts.soft)];
        const bool corrected = plan.value.wide != nullptr;
        if (corrected) plan.value.row(y, W, correction.data());
        soft_row(pixel.data(), values[static_cast<size_t>(parts.bone)].data(), corrected ? correction.data() : nullptr,
                 values[static_cast<size_t>(parts.soft)].data(), W);
      }
      for (int64_t c = 0; c < channels; ++c) {
        const float* v = values[static_cast<size_t>(c)].data();
        to_stored(v, out + c * channel_stride + y * W, W);
        if constexpr (std::is_same_v<T, float>) ok = ok && all_finite(v, W);
      }
    }
    if (!ok) finite = false;
  });
  if (!finite) throw Error(ErrorKind::Input, kNotFiniteMessage);
}

template WorkImage prepare_frame<uint16_t>(const uint16_t*, Size2, Size2, bool, const FullResolutionOptions&);
template WorkImage prepare_frame<float>(const float*, Size2, Size2, bool, const FullResolutionOptions&);
template void finish_frame<uint16_t>(const uint16_t*, const WorkImage&, const float*, const Contract&, uint16_t*,
                                     int64_t, const FullResolutionOptions&);
template void finish_frame<float>(const float*, const WorkImage&, const float*, const Contract&, float*, int64_t,
                                  const FullResolutionOptions&);

}  // namespace dexrt
