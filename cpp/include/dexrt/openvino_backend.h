// OpenVINO backend: the CPU path. The IR is held once; a model compiled for each distinct static input
// shape is cached (static shapes run ~1.3x faster than dynamic ones on the CPU plugin), each with a pool
// of infer requests so several threads can run at once.
#pragma once

#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <openvino/runtime/core.hpp>

#include "dexrt/backend.h"

namespace dexrt {

struct OpenVinoOptions {
  std::string device = "CPU";
  std::string performance_hint = "LATENCY";  // LATENCY or THROUGHPUT
  int num_threads = 0;                        // 0: OpenVINO's choice
  std::string cache_dir;                      // OpenVINO's model cache (compiled blobs on disk); empty: none
  size_t max_cached_shapes = 8;
};

class OpenVinoBackend final : public Backend {
 public:
  // `model_xml` and `weights` are an OpenVINO IR pair (the .xml text and the .bin bytes).
  OpenVinoBackend(const std::string& model_xml, const std::string& weights, OpenVinoOptions options);

  std::string name() const override { return "openvino"; }
  std::string device() const override { return options_.device; }
  int64_t output_channels() const override { return output_channels_; }

  StageTimes run(const ImageBatch& batch, const PadGeometry& g, const Contract& contract) override;

 private:
  using ShapeKey = std::tuple<int64_t, int64_t, int64_t>;
  struct Compiled {
    ov::CompiledModel model;
    std::mutex mutex;
    std::vector<ov::InferRequest> idle;  // requests not in use; more are created on demand
  };

  std::shared_ptr<Compiled> compiled_for(const BatchShape& shape);

  OpenVinoOptions options_;
  ov::Core& core_;  // the process-wide core (see shared_core in the .cpp)
  ov::Tensor weights_;  // the model's constants point into this buffer: it must outlive model_
  std::shared_ptr<ov::Model> model_;
  int64_t output_channels_ = 0;

  std::mutex cache_mutex_;
  std::map<ShapeKey, std::shared_ptr<Compiled>> cache_;
  std::list<ShapeKey> recency_;  // front: most recently used
};

}  // namespace dexrt
