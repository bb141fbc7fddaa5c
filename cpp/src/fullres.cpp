#include "dexrt/fullres.h"

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

double mean_of(const std::vector<float>& v) {
  double sum = 0.0;
  for (float x : v) sum += x;
  return v.empty() ? 0.0 : sum / static_cast<double>(v.size());
}

// He et al.'s guided filter coefficients at the working size: per pixel the least-squares fit p ~ a * I + b over
// the (2r + 1)^2 window around it (a regularised by eps), then a and b averaged over the same windows. I and p
// come in with their means removed, so the float32 moments do not cancel.
void guided_coefficients(const std::vector<float>& guide, const std::vector<float>& p, int64_t h, int64_t w,
                         int64_t r, float eps, std::vector<float>& a, std::vector<float>& b) {
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
  std::vector<float>& a_raw = ip;  // reused
  std::vector<float>& b_raw = ii;
  for (size_t k = 0; k < n; ++k) {
    const float variance = mean_ii[k] - mean_i[k] * mean_i[k];
    const float covariance = mean_ip[k] - mean_i[k] * mean_p[k];
    a_raw[k] = covariance / (std::max(variance, 0.0f) + eps);
    b_raw[k] = mean_p[k] - a_raw[k] * mean_i[k];
  }
  a.resize(n);
  b.resize(n);
  box_mean(a_raw.data(), h, w, r, a.data());
  box_mean(b_raw.data(), h, w, r, b.data());
}

// One output channel on its way back to the frame's size: its working-size maps, widened to the frame's width.
struct ChannelPlan {
  enum class Kind { Guided, Resampled, Soft } kind = Kind::Resampled;
  // (h, W) each: a and b (Guided), the output (Resampled), the correction (Soft); scratch memory (see Scratch)
  const float* first_map = nullptr;
  const float* second_map = nullptr;
  const Taps* rows = nullptr;        // h -> H
  bool has_first = false;
};

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

// The common case in one pass over a row: bone = a * g + b by the guided filter's maps brought down to this row
// (two taps), soft = input - bone + correction (parts.h), both stored. Every stream is contiguous, so it vectorises.
struct FusedRow {
  const float *a0, *a1, *b0, *b1, *c0, *c1;  // the row's two source rows of each map (c: null without correction)
  float w0, w1;                              // their weights
  float lo, inv, mean;                       // the guide's units: g = (pixel - lo) * inv - mean
};

template <typename T>
inline __attribute__((always_inline)) void fused_row_body(const FusedRow& r, const T* __restrict src,
                                                          T* __restrict bone_out, T* __restrict soft_out,
                                                          int64_t n) {
  const float* __restrict a0 = r.a0;
  const float* __restrict a1 = r.a1;
  const float* __restrict b0 = r.b0;
  const float* __restrict b1 = r.b1;
  const float w0 = r.w0, w1 = r.w1, lo = r.lo, inv = r.inv, mean = r.mean;
  if (r.c0 != nullptr) {
    const float* __restrict c0 = r.c0;
    const float* __restrict c1 = r.c1;
    for (int64_t x = 0; x < n; ++x) {
      const float p = static_cast<float>(src[x]);
      const float g = (p - lo) * inv - mean;
      const float bone = (w0 * a0[x] + w1 * a1[x]) * g + (w0 * b0[x] + w1 * b1[x]);
      bone_out[x] = store_as<T>(bone);
      soft_out[x] = store_as<T>(soft_of(p, bone, w0 * c0[x] + w1 * c1[x]));
    }
  } else {
    for (int64_t x = 0; x < n; ++x) {
      const float p = static_cast<float>(src[x]);
      const float g = (p - lo) * inv - mean;
      const float bone = (w0 * a0[x] + w1 * a1[x]) * g + (w0 * b0[x] + w1 * b1[x]);
      bone_out[x] = store_as<T>(bone);
      soft_out[x] = store_as<T>(soft_of(p, bone, 0.0f));
    }
  }
}

DEXRT_VECTOR_CLONES void fused_row(const FusedRow& r, const uint16_t* src, uint16_t* bone, uint16_t* soft,
                                   int64_t n) {
  fused_row_body(r, src, bone, soft, n);
}
DEXRT_VECTOR_CLONES void fused_row(const FusedRow& r, const float* src, float* bone, float* soft, int64_t n) {
  fused_row_body(r, src, bone, soft, n);
}

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
  // The guided filter and bicubic upsampling bring a coarser output up; a frame coarser than the model (in either
  // direction) gets its outputs back by plain resampling, area averaging where they shrink.
  const bool enlarging = h <= H && w <= W;
  const bool guided = enlarging && o.upsampling == Upsampling::Guided;
  const bool bicubic = enlarging && o.upsampling == Upsampling::Bicubic;
  const Taps smooth_rows = resize_taps(h, H), smooth_cols = resize_taps(w, W);  // linear when enlarging
  Taps cubic_rows, cubic_cols;
  if (bicubic) {
    cubic_rows = cubic_taps(h, H);
    cubic_cols = cubic_taps(w, W);
  }

  // The guide: the working image in its normalised units, mean removed; the frame's pixels map the same way.
  const float glo = work.guide.lo, ginv = work.guide.inv_span;
  std::vector<float> guide;
  float guide_mean = 0.0f;
  if (guided) {
    guide.resize(static_cast<size_t>(plane));
    for (int64_t k = 0; k < plane; ++k) guide[static_cast<size_t>(k)] = (work.pixels[static_cast<size_t>(k)] - glo) * ginv;
    guide_mean = static_cast<float>(mean_of(guide));
    for (auto& v : guide) v -= guide_mean;
  }

  thread_local Scratch scratch;
  scratch.reset();
  auto widen = [&](const std::vector<float>& map, const Taps& cols) {
    float* wide = scratch.take(static_cast<size_t>(h * W));
    widen_rows(map.data(), h, cols, wide, o.threads);
    return static_cast<const float*>(wide);
  };
  std::vector<ChannelPlan> plans(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    ChannelPlan& plan = plans[static_cast<size_t>(c)];
    const float* p = net + c * plane;
    if (c == parts.soft && parts.present()) {
      plan.kind = ChannelPlan::Kind::Soft;
      plan.rows = &smooth_rows;
      if (o.correction) {
        const float* bone = net + parts.bone * plane;
        std::vector<float> correction(static_cast<size_t>(plane));
        for (int64_t k = 0; k < plane; ++k) {
          correction[static_cast<size_t>(k)] = soft_correction(work.pixels[static_cast<size_t>(k)], bone[k], p[k]);
        }
        plan.first_map = widen(correction, smooth_cols);
        plan.has_first = true;
      }
    } else if (guided) {
      plan.kind = ChannelPlan::Kind::Guided;
      plan.rows = &smooth_rows;
      std::vector<float> centred(p, p + plane), a, b;
      const auto p_mean = static_cast<float>(mean_of(centred));
      for (auto& v : centred) v -= p_mean;
      guided_coefficients(guide, centred, h, w, o.radius, o.epsilon, a, b);
      for (auto& v : b) v += p_mean;
      plan.first_map = widen(a, smooth_cols);
      plan.second_map = widen(b, smooth_cols);
      plan.has_first = true;
    } else {
      plan.kind = ChannelPlan::Kind::Resampled;
      plan.rows = bicubic ? &cubic_rows : &smooth_rows;
      plan.first_map = widen(std::vector<float>(p, p + plane), bicubic ? cubic_cols : smooth_cols);
      plan.has_first = true;
    }
  }

  std::atomic<bool> finite{true};
  if (guided && parts.present() && channels == 2) {
    // bone and soft only: the fused row pass
    const ChannelPlan& bone_plan = plans[static_cast<size_t>(parts.bone)];
    const ChannelPlan& soft_plan = plans[static_cast<size_t>(parts.soft)];
    parallel_for(H, o.threads, 16, [&](int64_t begin, int64_t end) {
      bool ok = true;
      for (int64_t y = begin; y < end; ++y) {
        const int64_t r0 = smooth_rows.first[static_cast<size_t>(y)];
        const float* w = smooth_rows.at(y);
        const int64_t r1 = smooth_rows.count > 1 ? r0 + 1 : r0;
        FusedRow row{bone_plan.first_map + r0 * W, bone_plan.first_map + r1 * W,
                     bone_plan.second_map + r0 * W, bone_plan.second_map + r1 * W, nullptr, nullptr,
                     w[0], smooth_rows.count > 1 ? w[1] : 0.0f, glo, ginv, guide_mean};
        if (soft_plan.has_first) {
          row.c0 = soft_plan.first_map + r0 * W;
          row.c1 = soft_plan.first_map + r1 * W;
        }
        T* bone = out + parts.bone * channel_stride + y * W;
        T* soft = out + parts.soft * channel_stride + y * W;
        fused_row(row, frame + y * W, bone, soft, W);
        if constexpr (std::is_same_v<T, float>) ok = ok && all_finite(bone, W) && all_finite(soft, W);
      }
      if (!ok) finite = false;
    });
    if (!finite) throw Error(ErrorKind::Input, kNotFiniteMessage);
    return;
  }
  parallel_for(H, o.threads, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> pixel(static_cast<size_t>(W)), g(static_cast<size_t>(W)), tmp(static_cast<size_t>(W));
    std::vector<std::vector<float>> values(static_cast<size_t>(channels), std::vector<float>(static_cast<size_t>(W)));
    bool ok = true;
    for (int64_t y = begin; y < end; ++y) {
      const T* src = frame + y * W;
      for (int64_t x = 0; x < W; ++x) pixel[static_cast<size_t>(x)] = static_cast<float>(src[x]);
      if (guided) {
        for (int64_t x = 0; x < W; ++x) g[static_cast<size_t>(x)] = (pixel[static_cast<size_t>(x)] - glo) * ginv - guide_mean;
      }
      for (int64_t c = 0; c < channels; ++c) {  // every part but soft, which needs bone's
        const ChannelPlan& plan = plans[static_cast<size_t>(c)];
        float* __restrict v = values[static_cast<size_t>(c)].data();
        if (plan.kind == ChannelPlan::Kind::Guided) {
          combine_rows(plan.first_map, W, *plan.rows, y, v);
          combine_rows(plan.second_map, W, *plan.rows, y, tmp.data());
          const float* __restrict gi = g.data();
          const float* __restrict b = tmp.data();
          for (int64_t x = 0; x < W; ++x) v[x] = v[x] * gi[x] + b[x];
        } else if (plan.kind == ChannelPlan::Kind::Resampled) {
          combine_rows(plan.first_map, W, *plan.rows, y, v);
        }
      }
      if (parts.present()) {
        const ChannelPlan& plan = plans[static_cast<size_t>(parts.soft)];
        float* __restrict v = values[static_cast<size_t>(parts.soft)].data();
        const float* __restrict bone = values[static_cast<size_t>(parts.bone)].data();
        const float* __restrict in = pixel.data();
        if (plan.has_first) {
          combine_rows(plan.first_map, W, *plan.rows, y, v);
          for (int64_t x = 0; x < W; ++x) v[x] = soft_of(in[x], bone[x], v[x]);
        } else {
          for (int64_t x = 0; x < W; ++x) v[x] = soft_of(in[x], bone[x], 0.0f);
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        const float* __restrict v = values[static_cast<size_t>(c)].data();
        T* __restrict dst = out + c * channel_stride + y * W;
        for (int64_t x = 0; x < W; ++x) dst[x] = store_as<T>(v[x]);
        if constexpr (std::is_same_v<T, float>) ok = ok && all_finite(v, W);
      }
    }
    if (!ok) finite = false;
  });
  if (!finite) {
    throw Error(ErrorKind::Input, kNotFiniteMessage);
  }
}

template WorkImage prepare_frame<uint16_t>(const uint16_t*, Size2, Size2, bool, const FullResolutionOptions&);
template WorkImage prepare_frame<float>(const float*, Size2, Size2, bool, const FullResolutionOptions&);
template void finish_frame<uint16_t>(const uint16_t*, const WorkImage&, const float*, const Contract&, uint16_t*,
                                     int64_t, const FullResolutionOptions&);
template void finish_frame<float>(const float*, const WorkImage&, const float*, const Contract&, float*, int64_t,
                                  const FullResolutionOptions&);

}  // namespace dexrt
