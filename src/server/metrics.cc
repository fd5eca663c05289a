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
  auto series = [&out](const std::vector<std::pair<std::string, double>>& lines, const char* type) {
    std::string last;
    for (const auto& [name, v] : lines) {
      const std::string base = name.substr(0, name.find('{'));
      if (base != last) out << "# TYPE " << base << " " << type << "\n";
      last = base;
      out << name << " " << Value(v) << "\n";
    }
  };
  series(gauges, "gauge");
  series(counters, "counter");
  return out.str();
}

std::string Metrics::RenderHistogram(const std::string& name, const std::string& label,
                                     const std::vector<double>& bounds,
                                     const std::vector<int64_t>& buckets, double sum, int64_t count,
                                     bool type_line) {
  std::ostringstream out;
  if (type_line) out << "# TYPE " << name << " histogram\n";
  const std::string sep = label.empty() ? "" : label + ",";
  for (size_t i = 0; i < bounds.size() && i < buckets.size(); ++i) {
    out << name << "_bucket{" << sep << "le=\"" << bounds[i] << "\"} " << buckets[i] << "\n";
  }
  out << name << "_bucket{" << sep << "le=\"+Inf\"} " << count << "\n";
  const std::string labels = label.empty() ? "" : "{" + label + "}";
  out << name << "_sum" << labels << " " << Value(sum) << "\n";
  out << name << "_count" << labels << " " << count << "\n";
  return out.str();
}

}  // namespace gritserve
