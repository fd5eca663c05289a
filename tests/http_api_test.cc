// Every route of the real server, one tiny-checkpoint server for the suite:
// response shapes, the options each route takes, and cross-route consistency.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "http_api_util.h"
#include "server_harness.h"

namespace gritserve::testing {
namespace {

using Vec = std::vector<float>;

double Norm(const Vec& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

double MaxDiff(const Vec& a, const Vec& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return d;
}

std::vector<Vec> ToVecs(const json& j) {
  std::vector<Vec> out;
  if (!j.is_array()) {
    ADD_FAILURE() << "expected [[float]], got " << j.dump().substr(0, 200);
    return out;
  }
  for (const auto& row : j) {
    EXPECT_TRUE(row.is_array());
    Vec v;
    for (const auto& x : row) {
      EXPECT_TRUE(x.is_number_float() || x.is_number());
      v.push_back(x.get<float>());
    }
    out.push_back(std::move(v));
  }
  return out;
}

// Little-endian float32 from OpenAI's base64 encoding.
Vec DecodeBase64Floats(const std::string& b64) {
  std::string bytes(b64.size(), '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(bytes.data()),
                                reinterpret_cast<const unsigned char*>(b64.data()),
                                static_cast<int>(b64.size()));
  EXPECT_GT(n, 0);
  // EVP_DecodeBlock counts '=' padding as zero bytes; a float vector is a whole
  // number of 4-byte words, so the padding falls off below.
  Vec v(static_cast<size_t>(n) / 4);
  for (size_t i = 0; i < v.size(); ++i) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + 4 * i;
    const uint32_t u = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    std::memcpy(&v[i], &u, 4);
  }
  return v;
}

class HttpApiTest : public SharedServerTest<HttpApiTest> {
 protected:
  json Post(const std::string& path, const json& body) { return Ok(*client_, path, body); }
  std::vector<Vec> Embed(const json& body) { return ToVecs(Post("/embed", body)); }
  Vec Embed1(json body) {
    auto v = Embed(body);
    EXPECT_EQ(v.size(), 1u);
    return v.empty() ? Vec() : v[0];
  }
};

constexpr size_t kHidden = 64;  // the tiny preset's hidden size

TEST_F(HttpApiTest, EmbedInputShapes) {
  const Vec one = Embed1({{"inputs", "hello world"}});
  ASSERT_EQ(one.size(), kHidden);
  EXPECT_NEAR(Norm(one), 1.0, 1e-4);  // normalize defaults to true

  auto two = Embed({{"inputs", {"hello world", "a different text"}}});
  ASSERT_EQ(two.size(), 2u);
  EXPECT_LT(MaxDiff(two[0], one), 1e-5) << "a batch must give the single-input vector";
  EXPECT_GT(MaxDiff(two[1], one), 1e-3);

  // Token ids: one list, or a list of lists; raw text embeds exactly its tokens.
  json tok = Post("/tokenize", {{"inputs", "hello world"}, {"add_special_tokens", false}});
  std::vector<int> ids;
  for (const auto& t : tok[0]) ids.push_back(t["id"].get<int>());
  ASSERT_FALSE(ids.empty());
  const Vec by_ids = Embed1({{"inputs", ids}});
  ASSERT_EQ(by_ids.size(), kHidden);
  const Vec raw = Embed1({{"inputs", "hello world"}, {"raw", true}});
  EXPECT_LT(MaxDiff(raw, by_ids), 1e-5);
  EXPECT_GT(MaxDiff(raw, one), 1e-3) << "without raw the prompt template applies";
  auto lists = Embed({{"inputs", {ids, std::vector<int>{ids[0], ids[1]}}}});
  ASSERT_EQ(lists.size(), 2u);
  EXPECT_LT(MaxDiff(lists[0], by_ids), 1e-5);
  EXPECT_GT(MaxDiff(lists[1], by_ids), 1e-3);
}

TEST_F(HttpApiTest, EmbedOptions) {
  const json base = {{"inputs", "the cat sat on the mat"}};
  const Vec unit = Embed1(base);
  json b = base;
  b["normalize"] = false;
  const Vec plain = Embed1(b);
  ASSERT_EQ(plain.size(), kHidden);
  EXPECT_GT(std::fabs(Norm(plain) - 1.0), 1e-2) << "normalize false must keep the raw length";
  Vec rescaled = plain;
  for (float& x : rescaled) x = static_cast<float>(x / Norm(plain));
  EXPECT_LT(MaxDiff(rescaled, unit), 1e-4);

  // dimensions keeps the first N components (then normalizes).
  b = base;
  b["dimensions"] = 16;
  const Vec d16 = Embed1(b);
  ASSERT_EQ(d16.size(), 16u);
  EXPECT_NEAR(Norm(d16), 1.0, 1e-4);
  b["normalize"] = false;
  const Vec d16_plain = Embed1(b);
  EXPECT_LT(MaxDiff(d16_plain, Vec(plain.begin(), plain.begin() + 16)), 1e-5);

  b = base;
  b["instruction"] = "Represent this sentence for retrieval";
  EXPECT_GT(MaxDiff(Embed1(b), unit), 1e-3) << "an instruction must change the vector";
  b = base;
  b["pooling"] = "last";
  EXPECT_GT(MaxDiff(Embed1(b), unit), 1e-3) << "last-token pooling must differ from mean";
  b = base;
  b["layer"] = 1;
  EXPECT_GT(MaxDiff(Embed1(b), unit), 1e-3) << "layer 1 of 2 must differ from the full model";
  b["layer"] = 2;  // the last layer is the full model
  EXPECT_LT(MaxDiff(Embed1(b), unit), 1e-5);
}

TEST_F(HttpApiTest, OpenAiEmbeddingsMatchEmbed) {
  const std::vector<std::string> inputs = {"first input", "second, longer input text"};
  json f = Post("/v1/embeddings", {{"input", inputs}, {"model", "anything"}});
  EXPECT_EQ(f["object"], "list");
  EXPECT_TRUE(f["model"].is_string());
  ASSERT_EQ(f["data"].size(), 2u);
  auto from_embed = Embed({{"inputs", inputs}});
  ASSERT_EQ(from_embed.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const json& d = f["data"][i];
    EXPECT_EQ(d["object"], "embedding");
    EXPECT_EQ(d["index"], i);
    Vec v = d["embedding"].get<Vec>();
    ASSERT_EQ(v.size(), kHidden);
    EXPECT_LT(MaxDiff(v, from_embed[i]), 1e-6) << "/embed and /v1/embeddings must agree";
  }
  // Usage counts the tokens embedded: for ids it is exactly their number.
  EXPECT_GT(f["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(f["usage"]["prompt_tokens"], f["usage"]["total_tokens"]);
  json by_ids = Post("/v1/embeddings", {{"input", {5, 6, 7, 8, 9}}});
  EXPECT_EQ(by_ids["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(by_ids["usage"]["total_tokens"], 5);

  json b = Post("/v1/embeddings", {{"input", inputs}, {"encoding_format", "base64"}});
  ASSERT_EQ(b["data"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(b["data"][i]["embedding"].is_string());
    Vec v = DecodeBase64Floats(b["data"][i]["embedding"].get<std::string>());
    ASSERT_EQ(v.size(), kHidden);
    EXPECT_LT(MaxDiff(v, f["data"][i]["embedding"].get<Vec>()), 1e-6);
  }
  json d = Post("/v1/embeddings", {{"input", "short"}, {"dimensions", 8}});
  EXPECT_EQ(d["data"][0]["embedding"].size(), 8u);
}

TEST_F(HttpApiTest, TeiRerank) {
  const std::vector<std::string> texts = {"dogs bark loudly", "the cat sleeps", "cars drive fast",
                                          "a small bird"};
  const json body = {{"query", "the cat sleeps"}, {"texts", texts}, {"return_text", true}};
  json r = Post("/rerank", body);
  ASSERT_TRUE(r.is_array());
  ASSERT_EQ(r.size(), texts.size());
  EXPECT_EQ(r[0]["index"], 1) << "the identical text must rank first: " << r.dump();
  EXPECT_NEAR(r[0]["score"].get<double>(), 1.0, 1e-4);
  std::set<int> seen;
  for (size_t i = 0; i < r.size(); ++i) {
    const int idx = r[i]["index"].get<int>();
    seen.insert(idx);
    EXPECT_EQ(r[i]["text"], texts[static_cast<size_t>(idx)]);
    const double s = r[i]["score"].get<double>();
    EXPECT_GE(s, 0.0);
    EXPECT_LE(s, 1.0 + 1e-6);
    if (i > 0) {
      EXPECT_LE(s, r[i - 1]["score"].get<double>()) << "best first";
    }
  }
  EXPECT_EQ(seen.size(), texts.size());

  json raw_body = body;
  raw_body["raw_scores"] = true;
  raw_body.erase("return_text");
  json raw = Post("/rerank", raw_body);
  ASSERT_EQ(raw.size(), texts.size());
  std::vector<double> cosine(texts.size());
  for (const auto& e : raw) {
    EXPECT_FALSE(e.contains("text")) << "text only with return_text";
    const double s = e["score"].get<double>();
    EXPECT_GE(s, -1.0 - 1e-6);
    EXPECT_LE(s, 1.0 + 1e-6);
    cosine[e["index"].get<size_t>()] = s;
  }
  // The default score is the cosine mapped onto [0, 1].
  for (const auto& e : r) {
    EXPECT_NEAR(e["score"].get<double>(), (cosine[e["index"].get<size_t>()] + 1) / 2, 1e-5);
  }
}

TEST_F(HttpApiTest, CohereRerank) {
  json docs = {"dogs bark loudly", {{"text", "the cat sleeps"}}, "cars drive fast", "a small bird"};
  json r = Post("/v1/rerank", {{"query", "the cat sleeps"}, {"documents", docs}, {"model", "m"}});
  ASSERT_TRUE(r["results"].is_array());
  ASSERT_EQ(r["results"].size(), 4u);
  EXPECT_EQ(r["results"][0]["index"], 1);
  EXPECT_NEAR(r["results"][0]["relevance_score"].get<double>(), 1.0, 1e-4);
  EXPECT_FALSE(r["results"][0].contains("document"));
  EXPECT_GT(r["usage"]["total_tokens"].get<int>(), 0);
  for (size_t i = 1; i < 4; ++i) {
    EXPECT_LE(r["results"][i]["relevance_score"].get<double>(),
              r["results"][i - 1]["relevance_score"].get<double>());
  }
  // Strings and {"text"} objects are the same documents.
  json as_strings = Post(
      "/v1/rerank",
      {{"query", "the cat sleeps"},
       {"documents", {"dogs bark loudly", "the cat sleeps", "cars drive fast", "a small bird"}}});
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(as_strings["results"][i]["index"], r["results"][i]["index"]);
    EXPECT_NEAR(as_strings["results"][i]["relevance_score"].get<double>(),
                r["results"][i]["relevance_score"].get<double>(), 1e-6);
  }
  json top = Post(
      "/v1/rerank",
      {{"query", "the cat sleeps"}, {"documents", docs}, {"top_n", 2}, {"return_documents", true}});
  ASSERT_EQ(top["results"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(top["results"][i]["index"], r["results"][i]["index"]);
    const size_t idx = top["results"][i]["index"].get<size_t>();
    const std::string text =
        docs[idx].is_string() ? docs[idx].get<std::string>() : docs[idx]["text"].get<std::string>();
    EXPECT_EQ(top["results"][i]["document"]["text"], text);
  }
}

TEST_F(HttpApiTest, GenerateShapeAndDeterminism) {
  const json body = {{"prompt", "Once upon a time"},
                     {"max_tokens", 12},
                     {"temperature", 0},
                     {"return_tokens", true}};
  json a = Post("/generate", body);
  ASSERT_TRUE(a["text"].is_string());
  ASSERT_TRUE(a["finish_reason"].is_string());
  EXPECT_TRUE(a["finish_reason"] == "length" || a["finish_reason"] == "stop");
  for (const char* k : {"prompt_tokens", "cached_tokens", "completion_tokens"}) {
    EXPECT_TRUE(a["usage"][k].is_number_integer()) << k << ": " << a.dump();
  }
  EXPECT_GT(a["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_LE(a["usage"]["completion_tokens"].get<int>(), 12);
  for (const char* k : {"ttft_ms", "prefill_ms", "decode_ms"}) {
    EXPECT_TRUE(a["timings"][k].is_number()) << k;
    EXPECT_GE(a["timings"][k].get<double>(), 0.0) << k;
  }
  ASSERT_TRUE(a["tokens"].is_array());
  EXPECT_EQ(a["tokens"].size(), a["usage"]["completion_tokens"].get<size_t>());
  json b = Post("/generate", body);
  EXPECT_EQ(a["text"], b["text"]) << "temperature 0 must be deterministic";
  EXPECT_EQ(a["tokens"], b["tokens"]);
  // The returned ids decode to the text.
  if (!a["tokens"].empty()) {
    EXPECT_EQ(Post("/detokenize", {{"ids", a["tokens"]}}), a["text"]);
  }
  json plain = Post("/generate", {{"prompt", "Once upon a time"}, {"max_tokens", 2}});
  EXPECT_FALSE(plain.contains("tokens")) << "tokens only with return_tokens";
}

TEST_F(HttpApiTest, GenerateIgnoreEosGivesExactlyMaxTokens) {
  json g = Post("/generate", {{"prompt", "hello"},
                              {"max_tokens", 37},
                              {"ignore_eos", true},
                              {"temperature", 0.8},
                              {"seed", 3},
                              {"return_tokens", true}});
  EXPECT_EQ(g["usage"]["completion_tokens"], 37);
  EXPECT_EQ(g["tokens"].size(), 37u);
  EXPECT_EQ(g["finish_reason"], "length");
}

TEST_F(HttpApiTest, GenerateStopString) {
  // A seeded sample is reproducible and, unlike this random model's greedy
  // output (one repeated token), varied enough to hold a stop string mid-way.
  json body = {{"prompt", "hello"},
               {"max_tokens", 40},
               {"temperature", 1.0},
               {"seed", 5},
               {"ignore_eos", true}};
  const std::string full = Post("/generate", body)["text"].get<std::string>();
  ASSERT_EQ(Post("/generate", body)["text"], full) << "a fixed seed must reproduce";
  // Pick an ASCII-letter run from the second half so the cut is well inside.
  std::string stop;
  for (size_t i = full.size() / 3; i + 3 <= full.size() && stop.empty(); ++i) {
    if (std::isalpha(static_cast<unsigned char>(full[i])) &&
        std::isalpha(static_cast<unsigned char>(full[i + 1])) &&
        std::isalpha(static_cast<unsigned char>(full[i + 2]))) {
      stop = full.substr(i, 3);
    }
  }
  ASSERT_FALSE(stop.empty()) << "no letters to stop at in: " << full;
  body["stop"] = {stop};
  json g = Post("/generate", body);
  EXPECT_EQ(g["text"], full.substr(0, full.find(stop))) << "stop=" << stop << " full=" << full;
  EXPECT_EQ(g["finish_reason"], "stop");
  EXPECT_LT(g["usage"]["completion_tokens"].get<int>(), 40);

  // The same with the greedy output, whose text is one token repeated.
  json greedy = {{"prompt", "Once upon a time"},
                 {"raw", true},
                 {"max_tokens", 20},
                 {"temperature", 0},
                 {"ignore_eos", true}};
  const std::string gfull = Post("/generate", greedy)["text"].get<std::string>();
  ASSERT_GE(gfull.size(), 4u);
  greedy["stop"] = gfull.substr(1, 2);
  json gs = Post("/generate", greedy);
  EXPECT_EQ(gs["text"], gfull.substr(0, gfull.find(gfull.substr(1, 2))));
  EXPECT_EQ(gs["finish_reason"], "stop");
}

TEST_F(HttpApiTest, ChatRoutesAgree) {
  const json messages = {{{"role", "system"}, {"content", "Be brief."}},
                         {{"role", "user"}, {"content", "Say something."}}};
  json g = Post("/generate", {{"messages", messages}, {"max_tokens", 10}, {"temperature", 0}});
  ASSERT_TRUE(g["text"].is_string());
  EXPECT_GT(g["usage"]["prompt_tokens"].get<int>(), 6) << "the messages are in the prompt";

  json c = Post("/v1/chat/completions",
                {{"model", "x"}, {"messages", messages}, {"max_tokens", 10}, {"temperature", 0}});
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_TRUE(c["created"].is_number_integer());
  EXPECT_TRUE(c["model"].is_string());
  ASSERT_EQ(c["choices"].size(), 1u);
  const json& choice = c["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(choice["message"]["content"], g["text"]) << "same chat prompt, same greedy text";
  EXPECT_TRUE(choice["finish_reason"] == "length" || choice["finish_reason"] == "stop");
  const json& u = c["usage"];
  EXPECT_EQ(u["prompt_tokens"], g["usage"]["prompt_tokens"]);
  EXPECT_EQ(u["completion_tokens"], g["usage"]["completion_tokens"]);
  EXPECT_EQ(u["total_tokens"].get<int>(),
            u["prompt_tokens"].get<int>() + u["completion_tokens"].get<int>());
}

TEST_F(HttpApiTest, CompletionsMatchRawGenerate) {
  const std::string prompt = "The quick brown fox";
  json c = Post("/v1/completions",
                {{"model", "x"}, {"prompt", prompt}, {"max_tokens", 15}, {"temperature", 0}});
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(c["choices"].size(), 1u);
  EXPECT_EQ(c["choices"][0]["index"], 0);
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_string());
  const json& u = c["usage"];
  EXPECT_EQ(u["completion_tokens"].get<int>() + u["prompt_tokens"].get<int>(),
            u["total_tokens"].get<int>());
  json g = Post("/generate",
                {{"prompt", prompt}, {"raw", true}, {"max_tokens", 15}, {"temperature", 0}});
  EXPECT_EQ(c["choices"][0]["text"], g["text"]);
  EXPECT_EQ(u["prompt_tokens"], g["usage"]["prompt_tokens"]);
  // OpenAI's one-element list prompt is the same prompt.
  json l = Post("/v1/completions", {{"prompt", {prompt}}, {"max_tokens", 15}, {"temperature", 0}});
  EXPECT_EQ(l["choices"][0]["text"], g["text"]);
}

TEST_F(HttpApiTest, TokenizeDetokenizeRoundTrip) {
  const std::string text = "hello world, tokenize me";
  json t = Post("/tokenize", {{"inputs", text}, {"add_special_tokens", false}});
  ASSERT_TRUE(t.is_array());
  ASSERT_EQ(t.size(), 1u);
  std::vector<int> ids;
  std::string joined;
  size_t last_stop = 0;
  for (const auto& tok : t[0]) {
    for (const char* k : {"id", "text", "special", "start", "stop"}) {
      EXPECT_TRUE(tok.contains(k)) << k << " in " << tok.dump();
    }
    const size_t start = tok["start"].get<size_t>(), stop = tok["stop"].get<size_t>();
    EXPECT_EQ(start, last_stop) << "offsets tile the text";
    EXPECT_EQ(tok["text"], text.substr(start, stop - start));
    EXPECT_FALSE(tok["special"].get<bool>());
    last_stop = stop;
    joined += tok["text"].get<std::string>();
    ids.push_back(tok["id"].get<int>());
  }
  EXPECT_EQ(joined, text);
  EXPECT_EQ(Post("/detokenize", {{"ids", ids}}), text);

  json two = Post("/tokenize", {{"inputs", {"one", "two words"}}});
  ASSERT_EQ(two.size(), 2u);
  std::vector<std::vector<int>> nested;
  for (const auto& list : two) {
    nested.emplace_back();
    for (const auto& tok : list) nested.back().push_back(tok["id"].get<int>());
  }
  json back = Post("/detokenize", {{"ids", nested}, {"skip_special_tokens", true}});
  EXPECT_EQ(back, json({"one", "two words"}));
}

TEST_F(HttpApiTest, InfoModelsHealth) {
  auto h = client_->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(BodyJson(h)["status"], "ok");

  json info = BodyJson(client_->Get("/info"));
  EXPECT_EQ(info["hidden_size"], kHidden);
  EXPECT_EQ(info["num_hidden_layers"], 2);
  EXPECT_TRUE(info["model_id"].is_string());
  EXPECT_GT(info["max_context"].get<int>(), 0);
  // What was asked for and what it resolved to (which, on this CPU:
  // EngineTest.AutoDtypeIsBfloat16ProductsWhereNativeElseFloat32).
  EXPECT_EQ(info["dtype_requested"], "auto");
  EXPECT_TRUE(info["dtype"] == "BFloat16 matmul, Float" || info["dtype"] == "Float") << info;
  for (const char* k : {"max_body_bytes", "max_inputs", "max_input_tokens", "max_tokens",
                        "max_concurrent_requests"}) {
    EXPECT_TRUE(info["limits"][k].is_number_integer()) << k;
  }

  json models = BodyJson(client_->Get("/v1/models"));
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["id"], info["model_id"]);
}

TEST_F(HttpApiTest, MetricsCountRequestsAndTokens) {
  const std::string embed_ok = "gritserve_requests_total{route=\"/embed\",status=\"200\"}";
  const std::string before = MetricsText(*client_);
  const double embeds = std::max(0.0, Metric(before, embed_ok));
  const double prompt_tokens = Metric(before, "gritserve_prompt_tokens_total");
  const double generated = Metric(before, "gritserve_generated_tokens_total");
  ASSERT_GE(prompt_tokens, 0);
  ASSERT_GE(generated, 0);

  Embed1({{"inputs", "count me"}});
  Embed1({{"inputs", "count me too"}});
  Post("/generate", {{"prompt", "x"}, {"max_tokens", 9}, {"ignore_eos", true}});

  const std::string after = MetricsText(*client_);
  EXPECT_EQ(Metric(after, embed_ok), embeds + 2);
  EXPECT_GT(Metric(after, "gritserve_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(Metric(after, "gritserve_generated_tokens_total"), generated + 9);
  EXPECT_GE(Metric(after, "gritserve_request_duration_seconds_count{route=\"/embed\"}"), 2);
  EXPECT_GE(
      Metric(after, "gritserve_request_duration_seconds_bucket{route=\"/embed\",le=\"+Inf\"}"), 2);
  EXPECT_GE(Metric(after, "gritserve_request_duration_seconds_sum{route=\"/embed\"}"), 0);
  EXPECT_NE(after.find("# TYPE gritserve_request_duration_seconds histogram"), std::string::npos);
  EXPECT_EQ(Metric(after, "gritserve_active_generations"), 0);
  // /metrics counts itself like any route, with the status it answered.
  EXPECT_GE(Metric(after, "gritserve_requests_total{route=\"/metrics\",status=\"200\"}"), 1);
  EXPECT_EQ(after.find("status=\"-1\""), std::string::npos) << after;
}

TEST_F(HttpApiTest, OpenApiListsEveryRoute) {
  json spec = BodyJson(client_->Get("/openapi.json"));
  ASSERT_TRUE(spec["openapi"].is_string());
  EXPECT_EQ(spec["openapi"].get<std::string>().substr(0, 2), "3.");
  ASSERT_TRUE(spec["paths"].is_object());
  for (const char* path :
       {"/embed", "/v1/embeddings", "/rerank", "/v1/rerank", "/generate", "/v1/completions",
        "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/health", "/info",
        "/metrics", "/openapi.json", "/cache"}) {
    EXPECT_TRUE(spec["paths"].contains(path)) << path;
  }
}

TEST_F(HttpApiTest, UnknownRouteAndWrongMethod) {
  ExpectError(client_->Get("/no/such/route"), 404, "GET unknown");
  ExpectError(client_->Post("/v1/nothing", "{}", "application/json"), 404, "POST unknown");
  ExpectError(client_->Get("/embed"), 405, "GET /embed");
  ExpectError(client_->Get("/v1/chat/completions"), 405, "GET chat");
  ExpectError(client_->Post("/health", "{}", "application/json"), 405, "POST /health");
  ExpectError(client_->Delete("/generate"), 405, "DELETE /generate");
  ExpectError(client_->Put("/v1/models", "{}", "application/json"), 405, "PUT /v1/models");
}

}  // namespace
}  // namespace gritserve::testing
