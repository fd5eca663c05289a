// Collection search latency and recall (JSON on stdout): for each data kind and
// collection size, the exact scan and the HNSW graph (hnswlib) over unit
// vectors of the Qwen2.5-0.5B width, with the graph's recall@k against the
// scan, for each M and ef_search asked for (default: the server's defaults).
// Only the search: the question's embedding is not included.
//
// Data kinds: "random" (i.i.d. Gaussian directions, the hardest case for a
// graph: every point is about as far from every other) and "clustered" (a
// mixture of Gaussians around --centres random centres, closer to real
// embeddings, which crowd into topics). Queries come from the same
// distribution as the vectors.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gritserve/collection/vector_index.h"

namespace {

using Clock = std::chrono::steady_clock;
using Vec = std::vector<float>;

void Normalise(Vec& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  for (auto& x : v) x = static_cast<float>(x / std::sqrt(s));
}

Vec Gaussian(std::mt19937& rng, int64_t dim, float scale) {
  std::normal_distribution<float> n(0, scale);
  Vec v(static_cast<size_t>(dim));
  for (auto& x : v) x = n(rng);
  return v;
}

// Draws unit vectors of one data kind.
class Source {
 public:
  Source(const std::string& kind, int64_t dim, int64_t centres, float spread, uint32_t seed)
      : kind_(kind), dim_(dim), spread_(spread), rng_(seed) {
    if (kind != "random" && kind != "clustered") throw CLI::ValidationError("--data", kind);
    if (kind == "clustered") {
      for (int64_t c = 0; c < centres; ++c) {
        centres_.push_back(Gaussian(rng_, dim, 1.0f));
        Normalise(centres_.back());
      }
    }
  }

  Vec Next() {
    // Noise of norm about `spread` around a unit centre.
    Vec v = Gaussian(rng_, dim_, kind_ == "random" ? 1.0f : spread_ / std::sqrt(float(dim_)));
    if (!centres_.empty()) {
      const Vec& c = centres_[rng_() % centres_.size()];
      for (size_t i = 0; i < v.size(); ++i) v[i] += c[i];
    }
    Normalise(v);
    return v;
  }

 private:
  std::string kind_;
  int64_t dim_;
  float spread_;
  std::mt19937 rng_;
  std::vector<Vec> centres_;
};

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Setup {
  std::vector<int64_t> sizes = {1000, 10000, 100000};
  std::vector<std::string> data = {"random", "clustered"};
  std::vector<int64_t> ms, efs;
  int64_t dim = 896, queries = 100, top_k = 10, centres = 300;
  float spread = 0.8f;
};

// The graph at one M over `vecs`, then each ef_search: recall and latency.
nlohmann::json MeasureGraph(const Setup& s, int64_t m, const std::vector<Vec>& vecs,
                            const std::vector<Vec>& queries,
                            const std::vector<std::set<uint64_t>>& truth) {
  gritserve::IndexOptions o;
  o.exact_below = 0;
  o.m = m;
  gritserve::VectorIndex ann(s.dim, o);
  const auto t_build = Clock::now();
  for (size_t i = 0; i < vecs.size(); ++i) ann.Add(i, vecs[i].data());
  nlohmann::json r = {{"m", m}, {"build_s", Ms(t_build) / 1e3}, {"ef", nlohmann::json::array()}};
  for (const int64_t ef : s.efs) {
    ann.set_ef_search(ef);
    std::vector<double> ms;
    int64_t found = 0;
    for (size_t q = 0; q < queries.size(); ++q) {
      const auto t0 = Clock::now();
      const auto got = ann.Search(queries[q].data(), s.top_k);
      ms.push_back(Ms(t0));
      for (const auto& h : got) found += static_cast<int64_t>(truth[q].count(h.label));
    }
    const double recall =
        static_cast<double>(found) / static_cast<double>(queries.size() * s.top_k);
    r["ef"].push_back({{"ef_search", ef}, {"search_ms_p50", Median(ms)}, {"recall", recall}});
    std::cerr << "  m " << m << " ef " << ef << " recall " << recall << " p50 " << Median(ms)
              << " ms\n";
  }
  return r;
}

nlohmann::json MeasureSize(const Setup& s, const std::string& kind, int64_t n) {
  Source src(kind, s.dim, s.centres, s.spread, static_cast<uint32_t>(7 + n));
  std::vector<Vec> vecs, queries;
  for (int64_t i = 0; i < n; ++i) vecs.push_back(src.Next());
  for (int64_t q = 0; q < s.queries; ++q) queries.push_back(src.Next());
  gritserve::IndexOptions exact_only;
  exact_only.exact_below = n + 1;
  gritserve::VectorIndex exact(s.dim, exact_only);
  for (int64_t i = 0; i < n; ++i) exact.Add(static_cast<uint64_t>(i), vecs[i].data());
  std::vector<double> ms;
  std::vector<std::set<uint64_t>> truth;
  for (const auto& q : queries) {
    const auto t0 = Clock::now();
    const auto hits = exact.SearchExact(q.data(), s.top_k);
    ms.push_back(Ms(t0));
    truth.emplace_back();
    for (const auto& h : hits) truth.back().insert(h.label);
  }
  std::cerr << kind << " " << n << ": exact p50 " << Median(ms) << " ms\n";
  nlohmann::json r = {{"data", kind},
                      {"vectors", n},
                      {"exact_search_ms_p50", Median(ms)},
                      {"graphs", nlohmann::json::array()}};
  for (const int64_t m : s.ms) r["graphs"].push_back(MeasureGraph(s, m, vecs, queries, truth));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve collection search benchmark"};
  Setup s;
  const gritserve::IndexOptions defaults;
  app.add_option("--sizes", s.sizes, "collection sizes")->capture_default_str();
  app.add_option("--data", s.data, "data kinds: random, clustered")->capture_default_str();
  app.add_option("--m", s.ms, "hnswlib M values (default: the server's)");
  app.add_option("--ef-search", s.efs, "ef_search values (default: the server's)");
  app.add_option("--dim", s.dim, "vector width (896: Qwen2.5-0.5B)")->capture_default_str();
  app.add_option("--queries", s.queries, "searches per size")->capture_default_str();
  app.add_option("--top-k", s.top_k, "hits per search")->capture_default_str();
  app.add_option("--centres", s.centres, "clustered: mixture centres")->capture_default_str();
  app.add_option("--spread", s.spread, "clustered: noise norm around a unit centre")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (s.ms.empty()) s.ms = {defaults.m};
  if (s.efs.empty()) s.efs = {defaults.ef_search};

  nlohmann::json out = {{"dim", s.dim},
                        {"top_k", s.top_k},
                        {"queries", s.queries},
                        {"centres", s.centres},
                        {"spread", s.spread},
                        {"defaults",
                         {{"exact_below", defaults.exact_below},
                          {"m", defaults.m},
                          {"ef_construction", defaults.ef_construction},
                          {"ef_search", defaults.ef_search}}},
                        {"results", nlohmann::json::array()}};
  for (const auto& kind : s.data) {
    for (const int64_t n : s.sizes) out["results"].push_back(MeasureSize(s, kind, n));
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
