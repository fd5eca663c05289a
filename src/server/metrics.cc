#include "metrics.h"

#include <sstream>
#include <string>

namespace gritserve {
namespace {
const double kBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
constexpr size_t kNumBounds = sizeof(kBounds) / sizeof(kBounds[0]);

// A sample value: the stream's default 6 significant digits would print a
// 1 GiB budget as 1.07374e+09 and stall every counter past a million; 15
// digits keep integers below 10^15 exact and short decimals short.
std::string Value(double v) {
  std::ostringstream s;
  s.precision(15);
  s << v;
  return s.str();
}
}  // namespace

void Metrics::RecordRequest(const std::string& route, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_[{route, status}] += 1;
  Histogram& h = durations_[route];
  if (h.buckets.empty()) h.buckets.assign(kNumBounds, 0);
  for (size_t i = 0; i < kNumBounds; ++i) {
    if (seconds <= kBounds[i]) h.buckets[i] += 1;
  }
  h.sum += seconds;
  h.count += 1;
}

std::string Metrics::Render(const std::vector<std::pair<std::string, double>>& gauges,
                            const std::vector<std::pair<std::string, double>>& counters) const {
  std::ostringstream out;
  std::lock_guard<std::mutex> lock(mu_);
  out << "# HELP gritserve_requests_total HTTP requests by route and status.\n"
      << "# TYPE gritserve_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    out << "gritserve_requests_total{route=\"" << key.first << "\",status=\"" << key.second
        << "\"} " << n << "\n";
  }
  out << "# HELP gritserve_request_duration_seconds Time to handle a request (to the first byte "
         "for streams).\n"
      << "# TYPE gritserve_request_duration_seconds histogram\n";
  for (const auto& [route, h] : durations_) {
    for (size_t i = 0; i < kNumBounds; ++i) {
      out << "gritserve_request_duration_seconds_bucket{route=\"" << route << "\",le=\""
          << kBounds[i] << "\"} " << h.buckets[i] << "\n";
    }
    out << "gritserve_request_duration_seconds_bucket{route=\"" << route << "\",le=\"+Inf\"} "
        << h.count << "\n";
    out << "gritserve_request_duration_seconds_sum{route=\"" << route << "\"} " << Value(h.sum)
        << "\n";
    out << "gritserve_request_duration_seconds_count{route=\"" << route << "\"} " << h.count
        << "\n";
  }
  for (const auto& [name, v] : gauges) {
    out << "# TYPE " << name << " gauge\n" << name << " " << Value(v) << "\n";
  }
  for (const auto& [name, v] : counters) {
    out << "# TYPE " << name << " counter\n" << name << " " << Value(v) << "\n";
  }
  return out.str();
}

}  // namespace gritserve
