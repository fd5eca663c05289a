// Collection search latency (JSON on stdout): for each collection size, the
// exact scan and the HNSW graph (hnswlib, the server's defaults) over random
// unit vectors of the Qwen2.5-0.5B width, with the graph's recall@k against
// the scan. Only the search: the question's embedding is not included.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <vector>

#include "gritserve/collection/vector_index.h"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<float> RandomUnit(std::mt19937& rng, int64_t dim) {
  std::normal_distribution<float> n(0, 1);
  std::vector<float> v(static_cast<size_t>(dim));
  double s = 0;
  for (auto& x : v) {
    x = n(rng);
    s += static_cast<double>(x) * x;
  }
  for (auto& x : v) x = static_cast<float>(x / std::sqrt(s));
  return v;
}

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve collection search benchmark"};
  std::vector<int64_t> sizes = {1000, 10000, 100000};
  int64_t dim = 896, queries = 50, top_k = 5;
  gritserve::IndexOptions defaults;
  app.add_option("--sizes", sizes, "collection sizes")->capture_default_str();
  app.add_option("--dim", dim, "vector width (896: Qwen2.5-0.5B)")->capture_default_str();
  app.add_option("--queries", queries, "searches per size")->capture_default_str();
  app.add_option("--top-k", top_k, "hits per search")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  nlohmann::json out = {{"dim", dim},
                        {"top_k", top_k},
                        {"queries", queries},
                        {"hnsw",
                         {{"m", defaults.m},
                          {"ef_construction", defaults.ef_construction},
                          {"ef_search", defaults.ef_search}}},
                        {"results", nlohmann::json::array()}};
  std::mt19937 rng(7);
  for (const int64_t n : sizes) {
    gritserve::IndexOptions exact_only = defaults, graph = defaults;
    exact_only.exact_below = n + 1;
    graph.exact_below = 0;
    gritserve::VectorIndex exact(dim, exact_only), ann(dim, graph);
    std::vector<std::vector<float>> vecs;
    for (int64_t i = 0; i < n; ++i) vecs.push_back(RandomUnit(rng, dim));
    for (int64_t i = 0; i < n; ++i) exact.Add(static_cast<uint64_t>(i), vecs[i].data());
    const auto t_build = Clock::now();
    for (int64_t i = 0; i < n; ++i) ann.Add(static_cast<uint64_t>(i), vecs[i].data());
    const double build_ms = Ms(t_build);
    std::vector<double> exact_ms, ann_ms;
    int64_t found = 0;
    for (int64_t q = 0; q < queries; ++q) {
      const auto query = RandomUnit(rng, dim);
      auto t0 = Clock::now();
      const auto truth = exact.Search(query.data(), top_k);
      exact_ms.push_back(Ms(t0));
      t0 = Clock::now();
      const auto got = ann.Search(query.data(), top_k);
      ann_ms.push_back(Ms(t0));
      std::set<uint64_t> want;
      for (const auto& h : truth) want.insert(h.label);
      for (const auto& h : got) found += static_cast<int64_t>(want.count(h.label));
    }
    const nlohmann::json r = {
        {"vectors", n},
        {"exact_search_ms_p50", Median(exact_ms)},
        {"hnsw_search_ms_p50", Median(ann_ms)},
        {"hnsw_build_ms", build_ms},
        {"hnsw_recall", static_cast<double>(found) / static_cast<double>(queries * top_k)}};
    std::cerr << r.dump() << "\n";
    out["results"].push_back(r);
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
