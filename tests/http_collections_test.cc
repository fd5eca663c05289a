// Document collections over HTTP, against the real binary: create / list /
// show / drop, adding and deleting documents, search against brute-force
// cosine over /embed's vectors, "retrieve" in the generation routes against
// the same documents named explicitly, persistence across restarts (and a
// damaged index file), metrics, and bad input that changes nothing.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "gritserve/collection/vector_index.h"
#include "http_api_util.h"

namespace gritserve::testing {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kDocs = {
    "The cat sat on the mat and looked at the bird outside the window.",
    "Paris is the capital of France and lies on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Mount Everest is the highest mountain on Earth, in the Himalaya.",
    "A byte has eight bits, and a nibble has four.",
    "Photosynthesis turns light into chemical energy in plants."};
constexpr char kQuestion[] = "Which mountain is the highest on Earth?";
constexpr char kDocInstruction[] = "Represent the passage";
constexpr char kQueryInstruction[] = "Find the passage that answers";

json GetJson(httplib::Client& c, const std::string& path, int status = 200) {
  auto res = c.Get(path.c_str());
  if (!res) {
    ADD_FAILURE() << path << ": no response";
    return json::object();
  }
  EXPECT_EQ(res->status, status) << path << ": " << res->body;
  return BodyJson(res);
}

json Create(httplib::Client& c, const std::string& name, const std::string& kv = "embed") {
  auto res = PostJson(c, "/v1/collections",
                      {{"name", name},
                       {"document_instruction", kDocInstruction},
                       {"query_instruction", kQueryInstruction},
                       {"kv_source", kv}});
  EXPECT_TRUE(res && res->status == 201) << (res ? res->body : "no response");
  return BodyJson(res);
}

// Documents "<prefix>i" with kDocs' texts (numbered past the sixth, so that no
// two score alike); `text_prefix` keeps their K/V apart from other tests'
// (the store is content-addressed and shared).
json Documents(size_t n, const std::string& prefix = "d", const std::string& text_prefix = "") {
  json docs = json::array();
  for (size_t i = 0; i < n; ++i) {
    docs.push_back(
        {{"id", prefix + std::to_string(i)},
         {"text", text_prefix + (i < kDocs.size() ? "" : "(" + std::to_string(i) + ") ") +
                      kDocs[i % kDocs.size()]},
         {"metadata", {{"n", i}, {"even", i % 2 == 0}}}});
  }
  return docs;
}

json AddDocs(httplib::Client& c, const std::string& name, const json& docs) {
  return Ok(c, "/v1/collections/" + name + "/documents", {{"documents", docs}});
}

json Search(httplib::Client& c, const std::string& name, json body) {
  return Ok(c, "/v1/collections/" + name + "/search", body);
}

json Greedy(json body, int max_tokens = 8) {
  body["temperature"] = 0;
  body["ignore_eos"] = true;
  body["max_tokens"] = max_tokens;
  body["return_tokens"] = true;
  return body;
}

double Dot(const json& a, const json& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i].get<double>() * b[i].get<double>();
  return s;
}

int64_t CacheStat(httplib::Client& c, const char* name) {
  return GetJson(c, "/cache").value(name, int64_t{-1});
}

class HttpCollectionsTest : public SharedServerTest<HttpCollectionsTest> {
 public:
  static ServerProcess* StartServer() {
    return new ServerProcess(TinyCheckpointDir(), {"--data-dir", MakeTempDir("coll-http")});
  }
};

TEST_F(HttpCollectionsTest, CreateListShowDrop) {
  const json made = Create(*client_, "life-cycle");
  EXPECT_EQ(made["name"], "life-cycle");
  EXPECT_EQ(made["documents"], 0);
  EXPECT_EQ(made["query_instruction"], kQueryInstruction);
  ExpectError(PostJson(*client_, "/v1/collections", {{"name", "life-cycle"}}), 409, "duplicate");
  for (const char* bad : {"", "-x", "a/b", "a b", "ümlaut"}) {
    ExpectError(PostJson(*client_, "/v1/collections", {{"name", bad}}), 422, bad);
  }
  ExpectError(PostJson(*client_, "/v1/collections", {{"name", 7}}), 400, "name not a string");
  ExpectError(PostJson(*client_, "/v1/collections", {{"name", "k"}, {"kv_source", "x"}}), 422,
              "kv_source");
  bool listed = false;
  const json list = GetJson(*client_, "/v1/collections");
  for (const auto& c : list["collections"]) {
    listed = listed || c["name"] == "life-cycle";
  }
  EXPECT_TRUE(listed);
  EXPECT_EQ(GetJson(*client_, "/v1/collections/life-cycle")["name"], "life-cycle");
  auto res = client_->Delete("/v1/collections/life-cycle");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  ExpectError(client_->Get("/v1/collections/life-cycle"), 404, "dropped");
  ExpectError(client_->Delete("/v1/collections/life-cycle"), 404, "dropped twice");
}

// Exact search orders like brute-force cosine over /embed's vectors with the
// same instructions, and scores are those cosines.
TEST_F(HttpCollectionsTest, SearchEqualsBruteForceCosineOverEmbed) {
  Create(*client_, "brute");
  AddDocs(*client_, "brute", Documents(kDocs.size()));
  std::vector<std::string> texts(kDocs.begin(), kDocs.end());
  const json doc_vecs =
      Ok(*client_, "/embed", {{"inputs", texts}, {"instruction", kDocInstruction}});
  for (const std::string& query :
       {std::string(kQuestion), std::string("capital of France"), std::string("bits")}) {
    const json q = Ok(*client_, "/embed", {{"inputs", query}, {"instruction", kQueryInstruction}});
    std::vector<double> cos;
    for (const auto& v : doc_vecs) cos.push_back(Dot(q[0], v));
    std::vector<size_t> order(cos.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return cos[a] > cos[b]; });
    const json r = Search(*client_, "brute", {{"query", query}, {"top_k", kDocs.size()}});
    ASSERT_EQ(r["results"].size(), kDocs.size()) << r;
    for (size_t i = 0; i < order.size(); ++i) {
      const json& hit = r["results"][i];
      EXPECT_EQ(hit["id"], "d" + std::to_string(order[i])) << query << " rank " << i;
      EXPECT_NEAR(hit["score"].get<double>(), cos[order[i]], 1e-5) << query << " rank " << i;
      EXPECT_EQ(hit["text"], kDocs[order[i]]);
      EXPECT_EQ(hit["metadata"]["n"], order[i]);
    }
    // top_k, min_score and filter cut the same list.
    const json top2 = Search(*client_, "brute", {{"query", query}, {"top_k", 2}});
    ASSERT_EQ(top2["results"].size(), 2u);
    EXPECT_EQ(top2["results"][1]["id"], r["results"][1]["id"]);
    const double third = r["results"][2]["score"].get<double>();
    const json above = Search(*client_, "brute", {{"query", query}, {"min_score", third}});
    EXPECT_EQ(above["results"].size(), 3u) << above;
    const json even =
        Search(*client_, "brute", {{"query", query}, {"filter", {{"even", true}}}, {"top_k", 10}});
    ASSERT_EQ(even["results"].size(), 3u);
    for (const auto& h : even["results"]) EXPECT_EQ(h["metadata"]["even"], true);
  }
}

// "retrieve" places the found documents' K/V (kept when they were added)
// before the prompt: the same tokens as naming those ids explicitly.
TEST_F(HttpCollectionsTest, RetrieveEqualsExplicitDocumentIds) {
  Create(*client_, "rag");
  AddDocs(*client_, "rag", Documents(kDocs.size()));
  const int64_t computed = CacheStat(*client_, "computed");
  const json got =
      Ok(*client_, "/generate",
         Greedy({{"prompt", kQuestion}, {"retrieve", {{"collection", "rag"}, {"top_k", 3}}}}));
  ASSERT_EQ(got["retrieved"].size(), 3u) << got;
  EXPECT_GE(got["timings"]["retrieval_ms"].get<double>(), 0.0);
  const json search = Search(*client_, "rag", {{"query", kQuestion}, {"top_k", 3}});
  std::vector<std::string> ids;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(got["retrieved"][i]["id"], search["results"][i]["id"]);
    EXPECT_NEAR(got["retrieved"][i]["score"].get<double>(),
                search["results"][i]["score"].get<double>(), 1e-6);
    ids.push_back("rag/" + got["retrieved"][i]["id"].get<std::string>());
  }
  EXPECT_EQ(CacheStat(*client_, "computed"), computed) << "the adding pass's K/V is reused";
  const json named =
      Ok(*client_, "/generate",
         Greedy({{"prompt", kQuestion}, {"documents", ids}, {"kv_source", "embed"}}));
  EXPECT_EQ(got["tokens"], named["tokens"]);
  EXPECT_EQ(got["usage"]["cached_tokens"], named["usage"]["cached_tokens"]);
  EXPECT_GT(got["usage"]["cached_tokens"].get<int64_t>(), 0);

  // Chat: the last user message is the question; same documents.
  const json chat = Ok(*client_, "/v1/chat/completions",
                       Greedy({{"messages", {{{"role", "user"}, {"content", kQuestion}}}},
                               {"retrieve", {{"collection", "rag"}, {"top_k", 3}}}}));
  EXPECT_EQ(chat["retrieved"], got["retrieved"]);
  const json comp =
      Ok(*client_, "/v1/completions",
         Greedy({{"prompt", kQuestion}, {"retrieve", {{"collection", "rag"}, {"top_k", 1}}}}));
  EXPECT_EQ(comp["retrieved"][0]["id"], got["retrieved"][0]["id"]);

  // Streaming: the first event names the documents.
  StreamResult s = StreamPost(*client_, "/generate",
                              Greedy({{"prompt", kQuestion},
                                      {"stream", true},
                                      {"retrieve", {{"collection", "rag"}, {"top_k", 3}}}}));
  ASSERT_EQ(s.status, 200);
  const auto events = JsonEvents(s);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0]["retrieved"], got["retrieved"]);
  EXPECT_EQ(events.back()["tokens"], got["tokens"]);
}

// "cache_query": the question's K/V, kept by the search's own embedding pass,
// follows the documents; the same as the client keeping it with /embed "ids"
// and naming it after the documents. "query" searches with other text than
// the prompt.
TEST_F(HttpCollectionsTest, CacheQueryPlacesTheQuestionsEmbeddingPassKv) {
  Create(*client_, "qc");
  AddDocs(*client_, "qc", Documents(kDocs.size(), "d", "[qc] "));
  const json retrieve = {{"collection", "qc"}, {"top_k", 2}, {"query", kQuestion}};
  json cached_retrieve = retrieve;
  cached_retrieve["cache_query"] = true;
  const json plain =
      Ok(*client_, "/generate", Greedy({{"prompt", "Answer:"}, {"retrieve", retrieve}}));
  const json got =
      Ok(*client_, "/generate", Greedy({{"prompt", "Answer:"}, {"retrieve", cached_retrieve}}));
  EXPECT_EQ(got["retrieved"], plain["retrieved"]);
  const int64_t plain_cached = plain["usage"]["cached_tokens"].get<int64_t>();
  EXPECT_GT(got["usage"]["cached_tokens"].get<int64_t>(), plain_cached) << got;
  // Asked again: the question's entry is found, nothing is computed.
  const int64_t computed = CacheStat(*client_, "computed");
  const json again =
      Ok(*client_, "/generate", Greedy({{"prompt", "Answer:"}, {"retrieve", cached_retrieve}}));
  EXPECT_EQ(CacheStat(*client_, "computed"), computed);
  EXPECT_EQ(again["tokens"], got["tokens"]);

  // The client's way: keep the question under an id, name it after the documents.
  Ok(*client_, "/embed",
     {{"inputs", kQuestion}, {"instruction", kQueryInstruction}, {"ids", {"qc-question"}}});
  json ids = json::array();
  for (const auto& r : got["retrieved"]) ids.push_back("qc/" + r["id"].get<std::string>());
  ids.push_back("qc-question");
  const json named =
      Ok(*client_, "/generate",
         Greedy({{"prompt", "Answer:"}, {"documents", ids}, {"kv_source", "embed"}}));
  EXPECT_EQ(got["tokens"], named["tokens"]);
  EXPECT_EQ(got["usage"]["cached_tokens"], named["usage"]["cached_tokens"]);

  // Chat: the same, with the last user message as the question.
  json chat_retrieve = cached_retrieve;
  chat_retrieve.erase("query");
  const json chat = Ok(*client_, "/v1/chat/completions",
                       Greedy({{"messages", {{{"role", "user"}, {"content", kQuestion}}}},
                               {"retrieve", chat_retrieve}}));
  EXPECT_EQ(chat["retrieved"], got["retrieved"]);

  json causal = cached_retrieve;
  ExpectError(PostJson(*client_, "/generate",
                       {{"prompt", "q"}, {"kv_source", "causal"}, {"retrieve", causal}}),
              422, "cache_query with causal K/V");
  causal["query"] = "";
  ExpectError(PostJson(*client_, "/generate", {{"prompt", "q"}, {"retrieve", causal}}), 422,
              "empty query");
  causal["query"] = 3;
  ExpectError(PostJson(*client_, "/generate", {{"prompt", "q"}, {"retrieve", causal}}), 400,
              "query not a string");
  causal["query"] = "q";
  causal["cache_query"] = "yes";
  ExpectError(PostJson(*client_, "/generate", {{"prompt", "q"}, {"retrieve", causal}}), 400,
              "cache_query not a boolean");
}

TEST_F(HttpCollectionsTest, DeletingADocumentDropsItAndFreesItsKv) {
  Create(*client_, "del");
  const int64_t entries = CacheStat(*client_, "entries");
  AddDocs(*client_, "del", Documents(4, "x", "Deleted later: "));
  EXPECT_EQ(CacheStat(*client_, "entries"), entries + 4);
  const json before = Search(*client_, "del", {{"query", kQuestion}, {"top_k", 4}});
  const std::string best = before["results"][0]["id"];
  auto res = client_->Delete(("/v1/collections/del/documents/" + best).c_str());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  const json after = Search(*client_, "del", {{"query", kQuestion}, {"top_k", 4}});
  ASSERT_EQ(after["results"].size(), 3u);
  for (const auto& h : after["results"]) EXPECT_NE(h["id"], best);
  EXPECT_EQ(CacheStat(*client_, "entries"), entries + 3);
  ExpectError(PostJson(*client_, "/generate",
                       Greedy({{"prompt", kQuestion}, {"documents", {"del/" + best}}})),
              404, "freed id");
  ExpectError(client_->Delete(("/v1/collections/del/documents/" + best).c_str()), 404, "twice");
  // Re-adding an id replaces it (and frees the old text's K/V); dropping the
  // collection frees the rest.
  AddDocs(*client_, "del",
          {{{"id", after["results"][0]["id"]}, {"text", "A different text for this id."}}});
  EXPECT_EQ(GetJson(*client_, "/v1/collections/del")["documents"], 3);
  EXPECT_EQ(CacheStat(*client_, "entries"), entries + 3);
  ASSERT_TRUE(client_->Delete("/v1/collections/del"));
  EXPECT_EQ(CacheStat(*client_, "entries"), entries);
}

TEST_F(HttpCollectionsTest, ChunkingStoresIdHashK) {
  Create(*client_, "chunks");
  std::string text;
  for (const auto& d : kDocs) text += d + " ";
  const json added = Ok(*client_, "/v1/collections/chunks/documents",
                        {{"documents", {{{"id", "long"}, {"text", text}}}},
                         {"chunking", {{"tokens", 24}, {"overlap", 4}}}});
  ASSERT_GT(added["ids"].size(), 2u) << added;
  EXPECT_EQ(added["ids"][0], "long#0");
  EXPECT_EQ(added["ids"][1], "long#1");
  const json r = Search(*client_, "chunks", {{"query", "capital of France"}, {"top_k", 100}});
  EXPECT_EQ(r["results"].size(), added["ids"].size());
  ASSERT_TRUE(client_->Delete("/v1/collections/chunks/documents/long"));
  EXPECT_EQ(GetJson(*client_, "/v1/collections/chunks")["documents"], 0);
  ExpectError(PostJson(*client_, "/v1/collections/chunks/documents",
                       {{"documents", {{{"id", "a"}, {"text", "t"}}}},
                        {"chunking", {{"tokens", 8}, {"overlap", 8}}}}),
              422, "overlap >= tokens");
}

TEST_F(HttpCollectionsTest, BadInputIsRefusedAndChangesNothing) {
  Create(*client_, "strict");
  AddDocs(*client_, "strict", Documents(3));
  const int64_t entries = CacheStat(*client_, "entries");
  const std::string docs = "/v1/collections/strict/documents";
  const std::string search = "/v1/collections/strict/search";
  ExpectError(PostJson(*client_, "/v1/collections/nope/search", {{"query", "q"}}), 404, "unknown");
  ExpectError(PostJson(*client_, "/v1/collections/nope/documents", {{"documents", Documents(1)}}),
              404, "unknown add");
  ExpectError(
      PostJson(*client_, "/generate", {{"prompt", "q"}, {"retrieve", {{"collection", "nope"}}}}),
      404, "unknown retrieve");
  ExpectError(PostJson(*client_, search, {{"query", ""}}), 422, "empty query");
  ExpectError(PostJson(*client_, search, {{"top_k", 3}}), 400, "no query");
  ExpectError(PostJson(*client_, search, {{"query", "q"}, {"top_k", 0}}), 422, "top_k 0");
  ExpectError(PostJson(*client_, search, {{"query", "q"}, {"top_k", 100000}}), 422, "top_k big");
  ExpectError(PostJson(*client_, search, {{"query", "q"}, {"filter", "n=1"}}), 400, "filter str");
  ExpectError(PostJson(*client_, search, {{"query", "q"}, {"filter", {{"n", {1, 2}}}}}), 422,
              "filter list");
  ExpectError(PostJson(*client_, search, {{"query", "q"}, {"min_score", 3}}), 422, "min_score");
  ExpectError(PostJson(*client_, "/generate",
                       {{"prompt", "q"}, {"retrieve", {{"collection", "strict"}, {"top_k", 0}}}}),
              422, "retrieve top_k");
  ExpectError(PostJson(*client_, "/generate", {{"prompt", "q"}, {"retrieve", "strict"}}), 400,
              "retrieve not an object");

  // 10,000 documents in one request: 413 before anything is embedded.
  ExpectError(PostJson(*client_, docs, {{"documents", Documents(10000, "big")}}), 413, "10k");
  // One bad document among good ones: nothing of the request is stored.
  json mixed = Documents(3, "m");
  mixed.push_back({{"id", "bad"}, {"text", ""}});
  ExpectError(PostJson(*client_, docs, {{"documents", mixed}}), 422, "empty text");
  mixed = Documents(3, "m");
  mixed.push_back({{"id", "m0"}, {"text", "again"}});
  ExpectError(PostJson(*client_, docs, {{"documents", mixed}}), 422, "repeated id");
  mixed = Documents(3, "m");
  mixed.push_back({{"id", "a#1"}, {"text", "hash"}});
  ExpectError(PostJson(*client_, docs, {{"documents", mixed}}), 422, "# in id");
  mixed = Documents(3, "m");
  mixed.push_back({{"id", "meta"}, {"text", "t"}, {"metadata", "not an object"}});
  ExpectError(PostJson(*client_, docs, {{"documents", mixed}}), 400, "metadata");
  std::string huge;
  for (int i = 0; i < 34000; ++i) huge += "word ";  // past the 32768-token context
  mixed = Documents(3, "m");
  mixed.push_back({{"id", "huge"}, {"text", huge}});
  ExpectError(PostJson(*client_, docs, {{"documents", mixed}}), 422, "too many tokens");
  ExpectError(PostJson(*client_, docs, {{"documents", json::array()}}), 400, "empty list");
  EXPECT_EQ(GetJson(*client_, "/v1/collections/strict")["documents"], 3);
  EXPECT_EQ(CacheStat(*client_, "entries"), entries);
  ExpectError(client_->Get("/v1/collections/strict/search"), 405, "GET search");
}

TEST_F(HttpCollectionsTest, MetricsAndInfo) {
  Create(*client_, "metered");
  AddDocs(*client_, "metered", Documents(2));
  Search(*client_, "metered", {{"query", "q"}});
  const std::string m = MetricsText(*client_);
  EXPECT_EQ(Metric(m, "gritserve_collection_documents{collection=\"metered\"}"), 2) << m;
  EXPECT_GE(Metric(m, "gritserve_collection_search_seconds_count"), 1);
  const json info = GetJson(*client_, "/info");
  EXPECT_EQ(info["collections"]["max_collection_batch"], 256);
  // The flags' defaults are the index's own.
  const IndexOptions defaults;
  EXPECT_EQ(info["collections"]["exact_below"], defaults.exact_below);
  EXPECT_EQ(info["collections"]["hnsw"]["m"], defaults.m);
  EXPECT_EQ(info["collections"]["hnsw"]["ef_construction"], defaults.ef_construction);
  EXPECT_EQ(info["collections"]["hnsw"]["ef_search"], defaults.ef_search);
  const json spec = GetJson(*client_, "/openapi.json");
  for (const char* path :
       {"/v1/collections", "/v1/collections/{name}", "/v1/collections/{name}/documents",
        "/v1/collections/{name}/documents/{id}", "/v1/collections/{name}/search"}) {
    EXPECT_TRUE(spec["paths"].contains(path)) << path;
  }
  EXPECT_TRUE(spec["components"]["schemas"]["GenerateRequest"]["properties"].contains("retrieve"));
}

// Restarting on the same --data-dir answers the same search identically, with
// the exact scan and with the HNSW graph; a truncated graph file is reported
// and rebuilt.
TEST(HttpCollectionsRestartTest, SurvivesRestartAndRebuildsDamagedIndex) {
  const std::string data = MakeTempDir("coll-restart");
  const std::vector<std::string> args = {"--data-dir", data, "--collection-exact-below", "4"};
  const json query = {{"query", kQuestion}, {"top_k", 5}};
  json small, big;
  {
    ServerProcess server(TinyCheckpointDir(), args);
    auto c = server.Client();
    Create(*c, "small");
    AddDocs(*c, "small", Documents(3));
    Create(*c, "big");
    AddDocs(*c, "big", Documents(12));
    EXPECT_EQ(GetJson(*c, "/v1/collections/big")["index"], "hnsw");
    EXPECT_EQ(GetJson(*c, "/v1/collections/small")["index"], "exact");
    small = Search(*c, "small", query)["results"];
    big = Search(*c, "big", query)["results"];
    EXPECT_EQ(server.Signal(SIGTERM), 0) << server.Log();
  }
  {
    ServerProcess server(TinyCheckpointDir(), args);
    auto c = server.Client();
    EXPECT_EQ(Search(*c, "small", query)["results"], small);
    EXPECT_EQ(Search(*c, "big", query)["results"], big);
    // Retrieval after a restart: the K/V is gone with the process (no
    // --cache-dir) and computed again on demand.
    const json got =
        Ok(*c, "/generate", Greedy({{"prompt", kQuestion}, {"retrieve", {{"collection", "big"}}}}));
    EXPECT_EQ(got["retrieved"].size(), 4u);
    EXPECT_EQ(Metric(*c, "gritserve_collection_index_rebuilds_total"), 0);
    EXPECT_EQ(server.Signal(SIGTERM), 0) << server.Log();
  }
  std::string graph;
  for (const auto& e : fs::directory_iterator(data + "/collections/big")) {
    if (e.path().extension() == ".hnsw") graph = e.path().string();
  }
  ASSERT_FALSE(graph.empty());
  fs::resize_file(graph, fs::file_size(graph) - 100);
  ServerProcess server(TinyCheckpointDir(), args);
  auto c = server.Client();
  EXPECT_EQ(Search(*c, "big", query)["results"], big);
  EXPECT_EQ(Metric(*c, "gritserve_collection_index_rebuilds_total"), 1);
  EXPECT_NE(server.Log().find("rebuilding it from the 12 documents"), std::string::npos)
      << server.Log();
}

}  // namespace
}  // namespace gritserve::testing
