// Request counters and latency histograms per route, rendered as Prometheus text.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace gritserve {

class Metrics {
 public:
  void RecordRequest(const std::string& route, int status, double seconds);
  // Extra gauge/counter lines appended verbatim (scheduler and cache state). A
  // name may carry labels (name{tier="disk"}); series of one name go together.
  std::string Render(const std::vector<std::pair<std::string, double>>& gauges,
                     const std::vector<std::pair<std::string, double>>& counters) const;
  // One labelled series of a histogram: `buckets` are cumulative counts per
  // bound in `bounds`. The # TYPE line comes with `type_line`.
  static std::string RenderHistogram(const std::string& name, const std::string& label,
                                     const std::vector<double>& bounds,
                                     const std::vector<int64_t>& buckets, double sum, int64_t count,
                                     bool type_line);

 private:
  struct Histogram {
    std::vector<int64_t> buckets;  // cumulative counts per bound in kBounds
    double sum = 0;
    int64_t count = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  std::map<std::string, Histogram> durations_;
};

}  // namespace gritserve
