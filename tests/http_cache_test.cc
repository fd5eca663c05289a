// The document KV cache over HTTP, against the real binary: /embed "ids" and
// "cache", cached ids in rerank and generation, GET /cache and DELETE
// /cache/{id}, the disk tier across restarts and damage, eviction under the
// byte budget, half-precision storage, concurrent use, and /metrics.
// Every counter assertion is a delta of GET /cache, so the order of tests
// within one process does not matter.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "http_api_util.h"

namespace gritserve::testing {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kDocs = {
    "The cat sat on the mat and looked at the bird outside the window.",
    "Paris is the capital of France and lies on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Mount Everest is the highest mountain on Earth, in the Himalaya.",
};

constexpr char kQuestion[] = "Which of these facts is about geography?";

json GetJson(httplib::Client& c, const std::string& path) {
  auto res = c.Get(path.c_str());
  if (!res) {
    ADD_FAILURE() << path << ": no response";
    return json::object();
  }
  EXPECT_EQ(res->status, 200) << path << ": " << res->body;
  return BodyJson(res);
}

json Stats(httplib::Client& c) { return GetJson(c, "/cache"); }

int64_t Stat(httplib::Client& c, const char* name) { return Stats(c).value(name, int64_t{-1}); }

// A greedy request that always yields `max_tokens` tokens and returns their ids,
// so two answers can be compared token by token.
json Greedy(json body, int max_tokens = 16) {
  body["temperature"] = 0;
  body["ignore_eos"] = true;
  body["max_tokens"] = max_tokens;
  body["return_tokens"] = true;
  return body;
}

std::vector<int64_t> Tokens(const json& generated) {
  if (!generated.contains("tokens") || !generated["tokens"].is_array()) {
    ADD_FAILURE() << "no tokens in " << generated.dump();
    return {};
  }
  return generated["tokens"].get<std::vector<int64_t>>();
}

// Greedy /generate over cached ids with the embedding-pass K/V.
json OverIds(const std::vector<std::string>& ids, int max_tokens = 16) {
  return Greedy({{"prompt", kQuestion}, {"documents", ids}, {"kv_source", "embed"}}, max_tokens);
}

// The ids of `text` exactly as the tokenizer splits it, no special tokens.
std::vector<int64_t> TokenIds(httplib::Client& c, const std::string& text) {
  json j = Ok(c, "/tokenize", {{"inputs", text}, {"add_special_tokens", false}});
  std::vector<int64_t> ids;
  if (!j.is_array() || j.empty()) return ids;
  for (const auto& t : j[0]) ids.push_back(t["id"].get<int64_t>());
  return ids;
}

// Tokens of the embedding prompt for `text` (template included), which is
// exactly what /embed stores for it: /v1/embeddings reports that count.
int64_t EmbedPromptTokens(httplib::Client& c, const std::string& text) {
  return Ok(c, "/v1/embeddings", {{"input", text}})["usage"]["prompt_tokens"].get<int64_t>();
}

void ExpectVectorsNear(const json& a, const json& b, double tol, const std::string& what) {
  ASSERT_TRUE(a.is_array() && b.is_array()) << what;
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << what;
    for (size_t k = 0; k < a[i].size(); ++k) {
      ASSERT_NEAR(a[i][k].get<double>(), b[i][k].get<double>(), tol)
          << what << " [" << i << "][" << k << "]";
    }
  }
}

// /rerank scores by input index (the response is sorted best first).
std::vector<double> RerankScores(const json& r) {
  std::vector<double> s(r.size());
  for (const auto& e : r) s.at(e["index"].get<size_t>()) = e["score"].get<double>();
  return s;
}

std::vector<double> V1RerankScores(const json& r) {
  std::vector<double> s(r["results"].size());
  for (const auto& e : r["results"]) {
    s.at(e["index"].get<size_t>()) = e["relevance_score"].get<double>();
  }
  return s;
}

std::vector<std::string> KvFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& f : fs::directory_iterator(dir)) {
    if (f.path().extension() == ".kv") out.push_back(f.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

size_t AliasFiles(const std::string& dir) {
  size_t n = 0;
  for (const auto& f : fs::directory_iterator(fs::path(dir) / "aliases")) {
    n += f.path().extension() == ".json" ? 1 : 0;
  }
  return n;
}

void Stop(ServerProcess& s) { EXPECT_EQ(s.Signal(SIGTERM), 0) << s.Log(); }

// Stores kDocs[0..n) under ids "<prefix>0".. with one /embed call.
std::vector<std::string> StoreDocs(httplib::Client& c, size_t n, const std::string& prefix) {
  std::vector<std::string> texts(kDocs.begin(), kDocs.begin() + static_cast<std::ptrdiff_t>(n));
  std::vector<std::string> ids;
  for (size_t i = 0; i < n; ++i) ids.push_back(prefix + std::to_string(i));
  Ok(c, "/embed", {{"inputs", texts}, {"ids", ids}});
  return ids;
}

// 1. /embed "ids" stores entries from the same pass; later uses are hits.
TEST(HttpCacheTest, EmbedIdsAreServedToEmbedRerankAndGenerate) {
  ServerProcess server(TinyCheckpointDir());
  auto c = server.Client();
  const json before = Stats(*c);
  const std::vector<std::string> texts = {kDocs[0], kDocs[1]};

  const json stored = Ok(*c, "/embed", {{"inputs", texts}, {"ids", {"id1", "id2"}}});
  json s = Stats(*c);
  EXPECT_EQ(s["entries"].get<int64_t>(), before["entries"].get<int64_t>() + 2) << s;
  EXPECT_EQ(s["ids"].get<int64_t>(), before["ids"].get<int64_t>() + 2) << s;
  EXPECT_GT(s["bytes"].get<int64_t>(), before["bytes"].get<int64_t>());
  EXPECT_EQ(s["computed"], before["computed"]) << "the /embed pass itself fills the store";
  // Keeping the K/V must not change the embedding.
  const json plain = Ok(*c, "/embed", {{"inputs", texts}});
  ExpectVectorsNear(stored, plain, 1e-5, "/embed with ids vs without");

  // The same input again with "cache": the pooled vector comes from the store.
  s = Stats(*c);
  const json again = Ok(*c, "/embed", {{"inputs", {kDocs[0]}}, {"cache", true}});
  json s2 = Stats(*c);
  EXPECT_EQ(s2["hits"].get<int64_t>(), s["hits"].get<int64_t>() + 1) << s2;
  EXPECT_EQ(s2["entries"], s["entries"]);
  ExpectVectorsNear(again, json::array({stored[0]}), 1e-6, "cache hit vs stored");

  // Rerank by id: the stored embeddings, the same scores as the texts.
  const std::string query = "Where is the capital of France?";
  s = Stats(*c);
  const json by_id = Ok(*c, "/rerank",
                        {{"query", query},
                         {"texts", {{{"id", "id1"}}, {{"id", "id2"}}}},
                         {"raw_scores", true},
                         {"return_text", true}});
  s2 = Stats(*c);
  EXPECT_EQ(s2["hits"].get<int64_t>(), s["hits"].get<int64_t>() + 2) << s2;
  EXPECT_EQ(s2["computed"], s["computed"]);
  EXPECT_EQ(s2["entries"], s["entries"]);
  const json by_text =
      Ok(*c, "/rerank", {{"query", query}, {"texts", texts}, {"raw_scores", true}});
  const auto id_scores = RerankScores(by_id), text_scores = RerankScores(by_text);
  ASSERT_EQ(id_scores.size(), 2u);
  ASSERT_EQ(text_scores.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(id_scores[i], text_scores[i], 1e-5) << i;
  for (const auto& e : by_id) {
    EXPECT_EQ(e["text"], texts.at(e["index"].get<size_t>())) << "return_text of a cached id";
  }

  s = Stats(*c);
  const json v1_id =
      Ok(*c, "/v1/rerank", {{"query", query}, {"documents", {{{"id", "id2"}}, {{"id", "id1"}}}}});
  s2 = Stats(*c);
  EXPECT_EQ(s2["hits"].get<int64_t>(), s["hits"].get<int64_t>() + 2) << s2;
  EXPECT_EQ(s2["computed"], s["computed"]);
  const json v1_text =
      Ok(*c, "/v1/rerank", {{"query", query}, {"documents", {kDocs[1], kDocs[0]}}});
  const auto v1_id_scores = V1RerankScores(v1_id), v1_text_scores = V1RerankScores(v1_text);
  ASSERT_EQ(v1_id_scores.size(), 2u);
  ASSERT_EQ(v1_text_scores.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(v1_id_scores[i], v1_text_scores[i], 1e-5) << i;
  // The cosine behind /rerank's [0, 1] score is the same number.
  EXPECT_NEAR(v1_id_scores[0], id_scores[1], 1e-5);

  // Generation over the ids: their K/V is reused, only the prompt is prefilled.
  const int64_t stored_tokens = EmbedPromptTokens(*c, kDocs[0]) + EmbedPromptTokens(*c, kDocs[1]);
  const json no_docs = Ok(*c, "/generate", Greedy({{"prompt", kQuestion}}, 4));
  s = Stats(*c);
  const json gen = Ok(*c, "/generate", OverIds({"id1", "id2"}, 4));
  s2 = Stats(*c);
  EXPECT_EQ(gen["usage"]["cached_tokens"].get<int64_t>(), stored_tokens) << gen;
  EXPECT_EQ(gen["usage"]["prompt_tokens"], no_docs["usage"]["prompt_tokens"]) << gen;
  EXPECT_EQ(gen["usage"]["completion_tokens"].get<int64_t>(), 4);
  EXPECT_EQ(s2["computed"], s["computed"]) << s2;
  EXPECT_EQ(s2["hits"].get<int64_t>(), s["hits"].get<int64_t>() + 2) << s2;
  // {"id": ...} objects are the same documents as bare ids.
  const json gen_obj = Ok(*c, "/generate",
                          Greedy({{"prompt", kQuestion},
                                  {"documents", {{{"id", "id1"}}, {{"id", "id2"}}}},
                                  {"kv_source", "embed"}},
                                 4));
  EXPECT_EQ(Tokens(gen_obj), Tokens(gen));

  // The OpenAI routes take the same fields: /v1/completions (a raw prompt)
  // equals /generate with "raw": true over the same documents.
  const json raw_gen = Ok(*c, "/generate",
                          Greedy({{"prompt", "Answer:"},
                                  {"raw", true},
                                  {"documents", {"id1", "id2"}},
                                  {"kv_source", "embed"}},
                                 6));
  s = Stats(*c);
  const json cmpl = Ok(*c, "/v1/completions",
                       {{"prompt", "Answer:"},
                        {"documents", {"id1", "id2"}},
                        {"kv_source", "embed"},
                        {"temperature", 0},
                        {"ignore_eos", true},
                        {"max_tokens", 6}});
  s2 = Stats(*c);
  EXPECT_EQ(cmpl["choices"][0]["text"], raw_gen["text"]) << cmpl;
  EXPECT_EQ(cmpl["usage"]["prompt_tokens"], raw_gen["usage"]["prompt_tokens"]) << cmpl;
  EXPECT_EQ(s2["hits"].get<int64_t>(), s["hits"].get<int64_t>() + 2);
  const json chat = Ok(*c, "/v1/chat/completions",
                       {{"messages", {{{"role", "user"}, {"content", kQuestion}}}},
                        {"documents", {"id1"}},
                        {"kv_source", "embed"},
                        {"temperature", 0},
                        {"ignore_eos", true},
                        {"max_tokens", 5}});
  EXPECT_EQ(chat["usage"]["completion_tokens"].get<int64_t>(), 5) << chat;
  EXPECT_EQ(Stat(*c, "computed"), s2["computed"].get<int64_t>());
}

json ErrorMessage(const httplib::Result& res) {
  if (!res) return json();
  return json::parse(res->body, nullptr, false)["error"]["message"];
}

// Unknown and deleted ids are a 404 that names the id, on every route.
TEST(HttpCacheTest, UnknownAndDeletedIdsAre404) {
  ServerProcess server(TinyCheckpointDir());
  auto c = server.Client();
  StoreDocs(*c, 2, "doc");

  auto res = PostJson(*c, "/generate", OverIds({"doc0", "no-such-doc"}, 2));
  ExpectError(res, 404, "unknown id in /generate");
  EXPECT_NE(ErrorMessage(res).get<std::string>().find("no-such-doc"), std::string::npos)
      << res->body;
  res = PostJson(*c, "/v1/completions",
                 {{"prompt", "x"}, {"documents", {{{"id", "ghost"}}}}, {"max_tokens", 2}});
  ExpectError(res, 404, "unknown id in /v1/completions");
  EXPECT_NE(res->body.find("ghost"), std::string::npos) << res->body;
  res = PostJson(*c, "/v1/chat/completions",
                 {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                  {"documents", {"ghost"}},
                  {"max_tokens", 2}});
  ExpectError(res, 404, "unknown id in /v1/chat/completions");
  res = PostJson(*c, "/rerank", {{"query", "q"}, {"texts", {{{"id", "ghost"}}}}});
  ExpectError(res, 404, "unknown id in /rerank");
  EXPECT_NE(res->body.find("ghost"), std::string::npos) << res->body;
  res = PostJson(*c, "/v1/rerank", {{"query", "q"}, {"documents", {{{"id", "ghost"}}}}});
  ExpectError(res, 404, "unknown id in /v1/rerank");

  const json before = Stats(*c);
  auto del = c->Delete("/cache/doc0");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
  const json after = Stats(*c);
  EXPECT_EQ(after["ids"].get<int64_t>(), before["ids"].get<int64_t>() - 1) << after;
  EXPECT_EQ(after["entries"].get<int64_t>(), before["entries"].get<int64_t>() - 1) << after;
  EXPECT_LT(after["bytes"].get<int64_t>(), before["bytes"].get<int64_t>());

  res = PostJson(*c, "/generate", OverIds({"doc0"}, 2));
  ExpectError(res, 404, "deleted id in /generate");
  EXPECT_NE(res->body.find("doc0"), std::string::npos) << res->body;
  ExpectError(PostJson(*c, "/rerank", {{"query", "q"}, {"texts", {{{"id", "doc0"}}}}}), 404,
              "deleted id in /rerank");
  ExpectError(c->Delete("/cache/doc0"), 404, "second DELETE");
  ExpectError(c->Delete("/cache/never-stored"), 404, "DELETE of an unknown id");
  // The other id is untouched.
  EXPECT_EQ(Ok(*c, "/generate", OverIds({"doc1"}, 2))["usage"]["completion_tokens"], 2);
}

// 2. One causal document is exactly prefix caching: the answer equals a plain
// generation over the document's tokens followed by the prompt's.
TEST(HttpCacheTest, CausalDocumentEqualsPlainPrefix) {
  ServerProcess server(TinyCheckpointDir());
  auto c = server.Client();
  const std::string doc = kDocs[1];
  const std::string prompt = " Question: what is the capital of France? Answer:";
  // Token ids on both sides, so no BPE merge across the boundary can differ.
  const std::vector<int64_t> doc_ids = TokenIds(*c, doc), prompt_ids = TokenIds(*c, prompt);
  ASSERT_FALSE(doc_ids.empty());
  ASSERT_FALSE(prompt_ids.empty());
  std::vector<int64_t> joined = doc_ids;
  joined.insert(joined.end(), prompt_ids.begin(), prompt_ids.end());
  const json reference = Ok(*c, "/generate", Greedy({{"prompt", joined}}));
  ASSERT_EQ(Tokens(reference).size(), 16u);

  const json before = Stats(*c);
  const json first = Ok(
      *c, "/generate",
      Greedy({{"prompt", prompt_ids}, {"documents", {{{"text", doc}}}}, {"kv_source", "causal"}}));
  const json mid = Stats(*c);
  EXPECT_EQ(Tokens(first), Tokens(reference)) << first;
  EXPECT_EQ(first["usage"]["cached_tokens"].get<int64_t>(), static_cast<int64_t>(doc_ids.size()));
  EXPECT_EQ(first["usage"]["prompt_tokens"].get<int64_t>(),
            static_cast<int64_t>(prompt_ids.size()));
  EXPECT_EQ(mid["computed"].get<int64_t>(), before["computed"].get<int64_t>() + 1) << mid;
  EXPECT_EQ(mid["entries"].get<int64_t>(), before["entries"].get<int64_t>() + 1) << mid;

  // Again, with the prompt as raw text (the same ids): served from the store.
  const json second = Ok(*c, "/generate",
                         Greedy({{"prompt", prompt},
                                 {"raw", true},
                                 {"documents", {{{"text", doc}}}},
                                 {"kv_source", "causal"}}));
  const json after = Stats(*c);
  EXPECT_EQ(Tokens(second), Tokens(reference)) << second;
  EXPECT_EQ(after["hits"].get<int64_t>(), mid["hits"].get<int64_t>() + 1) << after;
  EXPECT_EQ(after["computed"], mid["computed"]) << after;
  EXPECT_EQ(after["entries"], mid["entries"]) << after;
}

// 3. The disk tier: entries and ids survive a restart and are read, not recomputed.
TEST(HttpCacheTest, DiskTierSurvivesRestart) {
  const std::string dir = MakeTempDir("doc-cache");
  std::vector<int64_t> tokens;
  json vectors;
  {
    ServerProcess a(TinyCheckpointDir(), {"--cache-dir", dir});
    auto c = a.Client();
    vectors = Ok(*c, "/embed", {{"inputs", {kDocs[0], kDocs[1]}}, {"ids", {"alpha", "beta"}}});
    tokens = Tokens(Ok(*c, "/generate", OverIds({"alpha", "beta"})));
    ASSERT_EQ(tokens.size(), 16u);
    const json s = Stats(*c);
    EXPECT_EQ(s["disk_writes"].get<int64_t>(), 2) << s;
    EXPECT_EQ(s["dir"], dir);
    Stop(a);
  }
  EXPECT_EQ(KvFiles(dir).size(), 2u);
  EXPECT_EQ(AliasFiles(dir), 2u);

  ServerProcess b(TinyCheckpointDir(), {"--cache-dir", dir});
  auto c = b.Client();
  json s = Stats(*c);
  EXPECT_EQ(s["ids"].get<int64_t>(), 2) << s;
  EXPECT_EQ(s["entries"].get<int64_t>(), 0) << "entries load lazily: " << s;
  const json gen = Ok(*c, "/generate", OverIds({"alpha", "beta"}));
  EXPECT_EQ(Tokens(gen), tokens);
  s = Stats(*c);
  EXPECT_EQ(s["disk_reads"].get<int64_t>(), 2) << s;
  EXPECT_EQ(s["computed"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["disk_errors"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["entries"].get<int64_t>(), 2) << s;
  // The pooled vectors came back too: /embed is answered from the store.
  const json again = Ok(*c, "/embed", {{"inputs", {kDocs[0], kDocs[1]}}, {"cache", true}});
  ExpectVectorsNear(again, vectors, 1e-6, "/embed after restart");
  EXPECT_EQ(Stat(*c, "hits"), s["hits"].get<int64_t>() + 2);
  // DELETE also removes the id and its entry from disk, so they stay gone.
  auto del = c->Delete("/cache/beta");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
  Stop(b);
  EXPECT_EQ(KvFiles(dir).size(), 1u);
  EXPECT_EQ(AliasFiles(dir), 1u);
}

// Flips one byte in the middle of `path`.
void FlipByte(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << path;
  const std::streamoff middle = static_cast<std::streamoff>(fs::file_size(path) / 2);
  char byte = 0;
  f.seekg(middle);
  f.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x5a);
  f.seekp(middle);
  f.write(&byte, 1);
}

// 4. A damaged or truncated file is never used: it is dropped, the entry is
// recomputed and written again, and the answer does not change.
TEST(HttpCacheTest, DamagedFilesAreDroppedAndRecomputed) {
  const std::string dir = MakeTempDir("doc-cache");
  const std::vector<std::string> ids = {"d0", "d1", "d2"};
  std::vector<int64_t> tokens;
  {
    ServerProcess a(TinyCheckpointDir(), {"--cache-dir", dir});
    auto c = a.Client();
    StoreDocs(*c, 3, "d");
    tokens = Tokens(Ok(*c, "/generate", OverIds(ids)));
    ASSERT_EQ(tokens.size(), 16u);
    Stop(a);
  }
  {
    // The uncached answer: a memory-only server computing every document.
    ServerProcess plain(TinyCheckpointDir());
    auto c = plain.Client();
    json docs = json::array();
    for (size_t i = 0; i < 3; ++i) docs.push_back({{"text", kDocs[i]}});
    const json gen =
        Ok(*c, "/generate",
           Greedy({{"prompt", kQuestion}, {"documents", docs}, {"kv_source", "embed"}}));
    EXPECT_EQ(Tokens(gen), tokens) << "stored embedding-pass K/V vs computed K/V";
    EXPECT_EQ(Stat(*c, "computed"), 3);
  }
  std::vector<std::string> files = KvFiles(dir);
  ASSERT_EQ(files.size(), 3u);
  FlipByte(files[0]);
  fs::resize_file(files[1], fs::file_size(files[1]) - 100);
  const auto good_size = fs::file_size(files[2]);
  {
    ServerProcess b(TinyCheckpointDir(), {"--cache-dir", dir});
    auto c = b.Client();
    EXPECT_EQ(Tokens(Ok(*c, "/generate", OverIds(ids))), tokens);
    const json s = Stats(*c);
    EXPECT_GE(s["disk_errors"].get<int64_t>(), 2) << s;
    EXPECT_GE(s["computed"].get<int64_t>(), 2) << s;
    EXPECT_EQ(s["disk_reads"].get<int64_t>(), 1) << "the undamaged file is still used: " << s;
    Stop(b);
  }
  // Rewritten in full: a third server reads all three without an error.
  ASSERT_EQ(KvFiles(dir), files);
  EXPECT_EQ(fs::file_size(files[2]), good_size);
  ServerProcess c3(TinyCheckpointDir(), {"--cache-dir", dir});
  auto c = c3.Client();
  EXPECT_EQ(Tokens(Ok(*c, "/generate", OverIds(ids))), tokens);
  const json s = Stats(*c);
  EXPECT_EQ(s["disk_errors"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["computed"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["disk_reads"].get<int64_t>(), 3) << s;
  Stop(c3);
}

// Six documents of the same shape (so entries have nearly the same size).
std::vector<std::string> SimilarDocs() {
  const std::vector<std::string> topics = {"apples",  "rivers",   "engines",
                                           "violins", "glaciers", "comets"};
  std::vector<std::string> docs;
  for (const auto& t : topics)
    docs.push_back("This short note is about " + t + " and nothing else.");
  return docs;
}

// 5. Eviction keeps the store under its budget; an evicted id is recomputed
// from its alias and gives the same answer.
TEST(HttpCacheTest, EvictionKeepsTheBudgetAndIdsStillWork) {
  const std::vector<std::string> docs = SimilarDocs();
  int64_t one_entry = 0;
  std::vector<std::vector<int64_t>> expected;  // greedy tokens over e0, then e0+e1
  {
    // A store with room for everything: one entry's size and the reference answers.
    ServerProcess probe(TinyCheckpointDir());
    auto c = probe.Client();
    Ok(*c, "/embed", {{"inputs", {docs[0]}}, {"ids", {"e0"}}});
    one_entry = Stat(*c, "bytes");
    ASSERT_GT(one_entry, 0);
    Ok(*c, "/embed", {{"inputs", {docs[1]}}, {"ids", {"e1"}}});
    expected.push_back(Tokens(Ok(*c, "/generate", OverIds({"e0"}))));
    expected.push_back(Tokens(Ok(*c, "/generate", OverIds({"e0", "e1"}))));
  }
  // Room for two entries of this shape, not three.
  const int64_t budget = one_entry * 5 / 2;
  ServerProcess server(TinyCheckpointDir(), {"--cache-bytes", std::to_string(budget)});
  auto c = server.Client();
  for (size_t i = 0; i < docs.size(); ++i) {
    Ok(*c, "/embed", {{"inputs", {docs[i]}}, {"ids", {"e" + std::to_string(i)}}});
    const json s = Stats(*c);
    EXPECT_EQ(s["budget_bytes"].get<int64_t>(), budget);
    EXPECT_LE(s["bytes"].get<int64_t>(), budget) << "after storing " << i << ": " << s;
    EXPECT_LE(s["entries"].get<int64_t>(), 2) << s;
    EXPECT_EQ(s["ids"].get<int64_t>(), static_cast<int64_t>(i) + 1) << "ids outlive entries";
  }
  json s = Stats(*c);
  EXPECT_GE(s["evictions"].get<int64_t>(), 4) << s;

  const int64_t computed = s["computed"].get<int64_t>();
  EXPECT_EQ(Tokens(Ok(*c, "/generate", OverIds({"e0"}))), expected[0]);
  s = Stats(*c);
  EXPECT_EQ(s["computed"].get<int64_t>(), computed + 1) << "e0 was evicted: " << s;
  EXPECT_LE(s["bytes"].get<int64_t>(), budget) << s;
  EXPECT_EQ(Tokens(Ok(*c, "/generate", OverIds({"e0", "e1"}))), expected[1]);
  s = Stats(*c);
  EXPECT_EQ(s["computed"].get<int64_t>(), computed + 2) << "e1 was evicted, e0 was not: " << s;
  EXPECT_LE(s["bytes"].get<int64_t>(), budget) << s;
}

// An entry larger than the whole budget is used once and not kept.
TEST(HttpCacheTest, EntryLargerThanTheBudgetIsNotKept) {
  ServerProcess server(TinyCheckpointDir(), {"--cache-bytes", "1000"});
  auto c = server.Client();
  StoreDocs(*c, 1, "big");
  json s = Stats(*c);
  EXPECT_EQ(s["entries"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["bytes"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["ids"].get<int64_t>(), 1) << s;
  const auto first = Tokens(Ok(*c, "/generate", OverIds({"big0"}, 4)));
  EXPECT_EQ(Tokens(Ok(*c, "/generate", OverIds({"big0"}, 4))), first);
  s = Stats(*c);
  EXPECT_EQ(s["computed"].get<int64_t>(), 2) << "recomputed each time: " << s;
  EXPECT_EQ(s["bytes"].get<int64_t>(), 0) << s;
}

// Bytes the store holds for `doc` as a causal entry (no pooled vectors, so the
// size is the K/V plus the token ids).
int64_t CausalEntryBytes(httplib::Client& c, const std::string& doc, int64_t* tokens) {
  const int64_t before = Stat(c, "bytes");
  const json gen =
      Ok(c, "/generate",
         Greedy({{"prompt", kQuestion}, {"documents", {{{"text", doc}}}}, {"kv_source", "causal"}},
                16));
  EXPECT_EQ(Tokens(gen).size(), 16u) << gen;
  *tokens = gen["usage"]["cached_tokens"].get<int64_t>();
  return Stat(c, "bytes") - before;
}

// 6. Half-precision storage halves the K/V bytes and still answers; the
// stored half-precision file reads back to the same answers.
TEST(HttpCacheTest, HalfPrecisionStorage) {
  int64_t tokens32 = 0, bytes32 = 0;
  {
    ServerProcess f32(TinyCheckpointDir());
    auto c = f32.Client();
    bytes32 = CausalEntryBytes(*c, kDocs[2], &tokens32);
  }
  const std::string dir = MakeTempDir("doc-cache-f16");
  std::vector<int64_t> over_ids;
  {
    ServerProcess f16(TinyCheckpointDir(), {"--cache-dtype", "float16", "--cache-dir", dir});
    auto c = f16.Client();
    EXPECT_EQ(Stats(*c)["dtype"], "float16");
    int64_t tokens16 = 0;
    const int64_t bytes16 = CausalEntryBytes(*c, kDocs[2], &tokens16);
    ASSERT_EQ(tokens16, tokens32);
    ASSERT_GT(tokens16, 0);
    // Per stored token: float32 K/V plus an int32 id vs float16 K/V plus the id.
    const int64_t id_bytes = 4 * tokens16;
    EXPECT_EQ(bytes32 - id_bytes, 2 * (bytes16 - id_bytes))
        << "float32 " << bytes32 << " bytes, float16 " << bytes16 << " for " << tokens16
        << " tokens";
    StoreDocs(*c, 2, "h");
    over_ids = Tokens(Ok(*c, "/generate", OverIds({"h0", "h1"}, 12)));
    EXPECT_EQ(over_ids.size(), 12u);
    // The stored pooled vectors stay float32: a cache hit equals a fresh pass.
    ExpectVectorsNear(Ok(*c, "/embed", {{"inputs", {kDocs[0]}}, {"cache", true}}),
                      Ok(*c, "/embed", {{"inputs", {kDocs[0]}}}), 1e-5, "float16 store");
    Stop(f16);
  }
  ServerProcess again(TinyCheckpointDir(), {"--cache-dtype", "float16", "--cache-dir", dir});
  auto c = again.Client();
  EXPECT_EQ(Tokens(Ok(*c, "/generate", OverIds({"h0", "h1"}, 12))), over_ids);
  const json s = Stats(*c);
  EXPECT_EQ(s["disk_reads"].get<int64_t>(), 2) << s;
  EXPECT_EQ(s["disk_errors"].get<int64_t>(), 0) << s;
  EXPECT_EQ(s["computed"].get<int64_t>(), 0) << s;
}

TEST(HttpCacheTest, Bfloat16StorageAnswers) {
  ServerProcess server(TinyCheckpointDir(), {"--cache-dtype", "bfloat16"});
  auto c = server.Client();
  StoreDocs(*c, 2, "b");
  const json gen = Ok(*c, "/generate", OverIds({"b0", "b1"}, 8));
  EXPECT_EQ(Tokens(gen).size(), 8u) << gen;
  EXPECT_EQ(Stat(*c, "computed"), 0);
}

// 7. Concurrent generations over overlapping cached documents (some needing
// their causal entries computed while others read) equal the same requests
// sent one at a time.
TEST(HttpCacheTest, ConcurrentGenerationsMatchSequential) {
  ServerProcess server(TinyCheckpointDir());
  auto setup = server.Client();
  const std::vector<std::string> ids = StoreDocs(*setup, 4, "c");
  constexpr int kClients = 8;
  std::vector<json> requests;
  for (int i = 0; i < kClients; ++i) {
    requests.push_back(Greedy({{"prompt", "Client " + std::to_string(i) + " asks: why?"},
                               {"documents", {ids[i % 4], ids[(i + 1) % 4]}},
                               {"kv_source", i % 2 == 0 ? "embed" : "causal"}},
                              12));
  }
  std::vector<std::vector<int64_t>> concurrent(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", server.port());
      c.set_read_timeout(120, 0);
      auto res = PostJson(c, "/generate", requests[i]);
      if (res && res->status == 200) {
        json j = json::parse(res->body, nullptr, false);
        if (!j.is_discarded() && j.contains("tokens")) {
          concurrent[i] = j["tokens"].get<std::vector<int64_t>>();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    const std::vector<int64_t> one = Tokens(Ok(*setup, "/generate", requests[i]));
    EXPECT_EQ(one.size(), 12u);
    EXPECT_EQ(concurrent[i], one) << "client " << i;
  }
  // The causal entries of the four documents were computed once each.
  EXPECT_EQ(Stat(*setup, "computed"), 4);
}

// 8. /metrics reports the same counters as GET /cache.
TEST(HttpCacheTest, MetricsMatchCacheStats) {
  const std::string dir = MakeTempDir("doc-cache");
  ServerProcess server(TinyCheckpointDir(), {"--cache-dir", dir});
  auto c = server.Client();
  StoreDocs(*c, 2, "m");
  Ok(*c, "/generate", OverIds({"m0", "m1"}, 2));
  Ok(*c, "/generate", Greedy({{"prompt", "x"}, {"documents", {{{"text", kDocs[3]}}}}}, 2));
  const json s = Stats(*c);
  const std::string text = MetricsText(*c);
  EXPECT_GT(s["hits"].get<int64_t>(), 0);
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_hits_total"), s["hits"].get<double>()) << text;
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_misses_total"), s["misses"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_computed_total"), s["computed"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_evictions_total"), s["evictions"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_disk_reads_total"), s["disk_reads"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_disk_writes_total"), s["disk_writes"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_disk_errors_total"), s["disk_errors"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_entries"), s["entries"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_bytes"), s["bytes"].get<double>());
  EXPECT_EQ(Metric(text, "gritserve_doc_cache_budget_bytes"), s["budget_bytes"].get<double>());
  EXPECT_EQ(s["disk_writes"].get<int64_t>(), 3) << s;
}

}  // namespace
}  // namespace gritserve::testing
