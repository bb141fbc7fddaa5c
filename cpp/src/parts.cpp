#include "dexrt/parts.h"

namespace dexrt {

bool carries_offset(const std::string& channel) { return channel != kBonePart; }

std::vector<char> channel_offsets(const std::vector<std::string>& channels, bool normalised) {
  std::vector<char> offsets;
  for (const auto& c : channels) offsets.push_back(normalised && carries_offset(c) ? 1 : 0);
  return offsets;
}

AdditiveParts additive_parts(const std::vector<std::string>& channels, bool normalised) {
  AdditiveParts parts;
  if (!normalised) return parts;
  for (size_t c = 0; c < channels.size(); ++c) {
    if (channels[c] == kBonePart) parts.bone = static_cast<int64_t>(c);
    if (channels[c] == kSoftPart) parts.soft = static_cast<int64_t>(c);
  }
  return parts;
}

}  // namespace dexrt
