// How a normalised engine's outputs add up to its input: the one statement of the rule, used by the
// post-processing (which part carries the input's offset, prepost.h) and by the full-resolution path (which part
// is the input minus another, fullres.h). The trainer's generator computes its soft output by the same rule
// (dexrt_train.networks, soft_from_se).
//
// In the network's normalised units an image is x_n = (x - lo) / span and its parts are bone_n and
// soft_n = x_n - bone_n + correction, the correction small and smooth. Mapped back by the image's window:
//     bone = span * bone_n                      bone has no offset: no bone, no signal;
//     soft = lo + span * soft_n                 every other part carries the input's offset lo;
// so that in the input's grey values soft = x - bone + span * correction. At the network's size the
// correction is what the network's soft adds to x - bone; at the input's own size it is brought up smoothly
// and the input's own detail stays in soft: soft = input - bone (+ correction).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dexrt {

constexpr const char* kBonePart = "bone";
constexpr const char* kSoftPart = "soft";

// Whether a part named `channel` carries the input's offset when mapped back from normalised units.
bool carries_offset(const std::string& channel);

// Per output channel: 1 when it adds the image's lo on the way out (normalised engines only), else 0.
std::vector<char> channel_offsets(const std::vector<std::string>& channels, bool normalised);

// The bone and soft channels of an engine whose outputs add up to its input (normalised, both named), or -1.
struct AdditiveParts {
  int64_t bone = -1, soft = -1;
  bool present() const { return bone >= 0 && soft >= 0; }
};
AdditiveParts additive_parts(const std::vector<std::string>& channels, bool normalised);

// The rule pixel by pixel, in grey values: the correction the network's soft adds at its own size, and soft
// from an input pixel, its bone and that correction.
inline float soft_correction(float input, float bone, float soft) { return soft - (input - bone); }
inline float soft_of(float input, float bone, float correction) { return input - bone + correction; }

}  // namespace dexrt
