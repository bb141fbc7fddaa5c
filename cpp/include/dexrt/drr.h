// Cone-beam digitally reconstructed radiographs: exact (Siddon) line integrals through a multi-channel voxel
// volume, and the polyenergetic Beer-Lambert sum that turns per-material line integrals into detector signals.
//
// World coordinates are patient RAS+ millimetres (+x towards the patient's right, +y anterior, +z superior; see
// docs/synth.md): the volume's affine maps voxel indices (i0, i1, i2) to world points, as a NIfTI affine does.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace dexrt::drr {

using Vec3 = std::array<double, 3>;

// One view of a kV imager. The gantry turns about the patient's superior axis through the isocentre; the
// couch turns the patient about the vertical (anterior) axis; the tilt swings source and detector
// cranio-caudally about the detector's column axis. Angles in degrees, lengths in millimetres.
struct ConeBeam {
  double sid_mm = 1000.0;  // source to isocentre
  double sdd_mm = 1500.0;  // source to detector plane
  int64_t rows = 256;
  int64_t cols = 256;
  double pixel_row_mm = 1.0;  // detector pixel pitch (at the detector, not at the isocentre)
  double pixel_col_mm = 1.0;
  double gantry_deg = 0.0;
  double couch_deg = 0.0;
  double tilt_deg = 0.0;
  Vec3 iso_mm{0.0, 0.0, 0.0};
};

// Where a view puts its source and detector. Pixel (r, c) centre = origin + c * col_step + r * row_step.
struct Frame {
  Vec3 source;    // focal spot
  Vec3 origin;    // centre of pixel (0, 0), the top-left one in the stored image
  Vec3 col_step;  // one pixel to the right (towards the patient's left at gantry 0)
  Vec3 row_step;  // one pixel down (towards the patient's feet at gantry 0)
  Vec3 beam;      // unit vector from the source through the isocentre
};

// Validates the geometry (throws dexrt::Error, ErrorKind::Input) and builds the frame.
Frame make_frame(const ConeBeam& view);

// A voxel volume of `channels` values per voxel, stored (n0, n1, n2, channels) C-contiguous float32, with a
// 3x4 affine from voxel index to world millimetres (voxel centres at integer indices).
struct Volume {
  const float* data = nullptr;
  std::array<int64_t, 3> shape{0, 0, 0};
  int64_t channels = 1;
  std::array<std::array<double, 4>, 3> affine{};
};

// Line integrals (value x millimetres) of every channel along every ray of every view, by Siddon's exact
// radiological path (Jacobs' incremental form). Output (n_views, channels, rows, cols) float32; all views must
// share rows and cols. Work is split over `threads` std::threads (0: hardware concurrency).
void project(const Volume& volume, const std::vector<ConeBeam>& views, float* out, int threads);

// Polyenergetic Beer-Lambert: out[s, p] = sum_e weights[s, e] * exp(-sum_c mu[c, e] * line[c, p]).
// line (channels, pixels) float32, mu (channels, energies), weights (sums, energies), out (sums, pixels).
void polyenergetic(const float* line, int64_t channels, int64_t pixels, const double* mu, int64_t energies,
                   const double* weights, int64_t sums, double* out, int threads);

}  // namespace dexrt::drr
