// Retrieval on the engine, as the collection routes do it: documents embedded
// with their K/V kept under "<collection>/<id>", a question embedded and
// searched, the hits resolved from their text. Generation over the retrieved
// documents gives the same tokens and logits as over the same ids named
// explicitly, reuses the K/V of the adding pass, and recomputes it the same
// when it was evicted.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "collections_api.h"
#include "gritserve/collection/collection.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine.h"
#include "test_util.h"

namespace gritserve {
namespace {

const std::vector<std::string> kDocs = {
    "The cat sat on the mat and looked at the bird outside the window.",
    "Paris is the capital of France and lies on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Mount Everest is the highest mountain on Earth, in the Himalaya.",
    "A byte has eight bits, and a nibble has four.",
    "Photosynthesis turns light into chemical energy in plants."};
constexpr char kQuestion[] = "Which mountain is the highest on Earth?";

class CollectionRetrieveTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("coll-retrieve"));
    WriteCheckpoint(*dir_, CheckpointPreset("tiny"));
    EngineOptions o;
    o.model_dir = *dir_;
    o.threads = 2;
    engine_ = Engine::Load(o).release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete dir_;
  }

  static SamplingParams Greedy() {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = 12;
    p.ignore_eos = true;
    p.capture_logits = true;
    return p;
  }

  static void ExpectSameGeneration(const GenerateResult& a, const GenerateResult& b) {
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.cached_tokens, b.cached_tokens);
    ASSERT_EQ(a.step_logits.size(), b.step_logits.size());
    double worst = 0;
    for (size_t s = 0; s < a.step_logits.size(); ++s) {
      ASSERT_EQ(a.step_logits[s].size(), b.step_logits[s].size());
      for (size_t v = 0; v < a.step_logits[s].size(); ++v) {
        worst = std::max(worst,
                         std::fabs(static_cast<double>(a.step_logits[s][v]) - b.step_logits[s][v]));
      }
    }
    EXPECT_LE(worst, 1e-4);
  }

  static inline std::string* dir_ = nullptr;
  static inline Engine* engine_ = nullptr;
};

TEST_F(CollectionRetrieveTest, RetrievedDocumentsEqualExplicitIds) {
  Runner& runner = engine_->runner();
  const FrontEnd& front = engine_->front();
  const CollectionSettings s{"kb", "Represent the passage", "Find the passage that answers",
                             KvSource::kEmbed};
  // Adding: one pass embeds each document and keeps its K/V under "kb/<id>".
  std::vector<EncodedPrompt> prompts;
  std::vector<std::string> aliases;
  for (size_t i = 0; i < kDocs.size(); ++i) {
    prompts.push_back(CollectionDocumentPrompt(front, s, kDocs[i]));
    aliases.push_back("kb/d" + std::to_string(i));
  }
  EmbedOptions doc_options;
  doc_options.instruction = s.document_instruction;
  const auto vecs = runner.Embed(prompts, doc_options, EmbedStore::kKeep, aliases);
  Collection c(s, front.config().hidden_size, IndexOptions{});
  std::vector<CollectionDocument> docs;
  for (size_t i = 0; i < kDocs.size(); ++i) {
    docs.push_back({"d" + std::to_string(i), "d" + std::to_string(i), kDocs[i], nullptr, vecs[i]});
  }
  c.Upsert(docs, 100);

  EmbedOptions query_options;
  query_options.instruction = s.query_instruction;
  const auto q = runner.Embed({front.EncodeEmbed(kQuestion, query_options)}, query_options)[0];
  SearchParams p;
  p.top_k = 3;
  const auto hits = c.Search(q, p);
  ASSERT_EQ(hits.size(), 3u);

  std::vector<ResolvedDocument> retrieved;
  std::vector<DocumentRef> named;
  for (const auto& h : hits) {
    retrieved.push_back(ResolveCollectionDocument(front, s, h.text, KvSource::kEmbed));
    DocumentRef ref;
    ref.id = "kb/" + h.id;
    named.push_back(ref);
  }
  const auto explicit_docs = front.ResolveDocuments(named, KvSource::kEmbed);
  for (size_t i = 0; i < hits.size(); ++i) {
    EXPECT_EQ(retrieved[i].key, explicit_docs[i].key) << hits[i].id;
    EXPECT_EQ(retrieved[i].ids, explicit_docs[i].ids);
    EXPECT_EQ(retrieved[i].text_begin, explicit_docs[i].text_begin);
    EXPECT_EQ(retrieved[i].text_end, explicit_docs[i].text_end);
  }

  const std::vector<int32_t> prompt = front.EncodeGenerate(kQuestion, /*raw=*/false);
  const int64_t computed = front.document_stats().computed;
  const GenerateResult a = runner.Generate(prompt, Greedy(), nullptr, retrieved);
  const GenerateResult b = runner.Generate(prompt, Greedy(), nullptr, explicit_docs);
  // The K/V came from the adding pass: nothing was computed for either.
  EXPECT_EQ(front.document_stats().computed, computed);
  EXPECT_GT(a.cached_tokens, 0);
  ExpectSameGeneration(a, b);

  // Evicted (entries and aliases gone): found again from the text, computed
  // once more, and the answer does not change.
  for (const auto& h : hits) {
    ASSERT_TRUE(engine_->front().RemoveDocument("kb/" + h.id));
  }
  std::vector<ResolvedDocument> again;
  for (const auto& h : hits) {
    again.push_back(ResolveCollectionDocument(front, s, h.text, KvSource::kEmbed));
  }
  const GenerateResult recomputed = runner.Generate(prompt, Greedy(), nullptr, again);
  EXPECT_EQ(front.document_stats().computed, computed + 3);
  ExpectSameGeneration(recomputed, b);
}

// Query caching: the question's K/V kept by its search embedding pass, placed
// after the documents, gives the same generation as the same question
// computed afresh by the document path's own bidirectional pass.
TEST_F(CollectionRetrieveTest, CachedQueryEqualsTheUncachedPass) {
  Runner& runner = engine_->runner();
  const FrontEnd& front = engine_->front();
  const CollectionSettings s{"kq", "Represent the passage", "Find the passage that answers",
                             KvSource::kEmbed};
  const std::string question = "Which river runs through the capital of France?";
  std::vector<ResolvedDocument> docs = {
      ResolveCollectionDocument(front, s, kDocs[1], KvSource::kEmbed),
      ResolveCollectionDocument(front, s, kDocs[3], KvSource::kEmbed)};
  const ResolvedDocument query = QueryDocument(front, s, question);
  EmbedOptions o;
  o.instruction = s.query_instruction;
  const EncodedPrompt qp = front.EncodeEmbed(question, o);
  EXPECT_EQ(query.ids, qp.ids) << "the query instruction's embedding prompt";
  EXPECT_EQ(query.source, KvSource::kEmbed);
  ASSERT_FALSE(engine_->front().RemoveDocument(query.key.Hex())) << "not stored yet";

  // The documents alone (their K/V computed here if no other test kept it).
  const std::vector<int32_t> prompt = front.EncodeGenerate("Answer:", /*raw=*/false);
  const GenerateResult plain = runner.Generate(prompt, Greedy(), nullptr, docs);
  // The search's pass, keeping the query's K/V.
  const auto kept = runner.Embed({qp}, o, EmbedStore::kKeep)[0];
  const auto fresh = runner.Embed({qp}, o)[0];
  ASSERT_EQ(kept.size(), fresh.size());
  for (size_t i = 0; i < kept.size(); ++i) EXPECT_NEAR(kept[i], fresh[i], 1e-5) << i;
  std::vector<ResolvedDocument> with_query = docs;
  with_query.push_back(query);
  const int64_t computed = front.document_stats().computed;
  const GenerateResult cached = runner.Generate(prompt, Greedy(), nullptr, with_query);
  EXPECT_EQ(front.document_stats().computed, computed) << "the question's K/V was found";
  EXPECT_EQ(cached.cached_tokens, plain.cached_tokens + static_cast<int64_t>(qp.ids.size()));

  // Uncached: the entry gone, the generation computes the question's K/V itself.
  ASSERT_TRUE(engine_->front().RemoveDocument(query.key.Hex()));
  const int64_t again = front.document_stats().computed;
  const GenerateResult uncached = runner.Generate(prompt, Greedy(), nullptr, with_query);
  EXPECT_EQ(front.document_stats().computed, again + 1);
  ExpectSameGeneration(cached, uncached);
  EXPECT_NE(cached.step_logits, plain.step_logits) << "the question's K/V changes the answer";
}

// Causal K/V is built from the document's own tokens: the same record the
// store makes of an /embed id asked for causal K/V.
TEST_F(CollectionRetrieveTest, CausalDocumentsEqualTheIdsCausalRecord) {
  const FrontEnd& front = engine_->front();
  const CollectionSettings s{"kc", "Represent the passage", "", KvSource::kCausal};
  EmbedOptions o;
  o.instruction = s.document_instruction;
  engine_->runner().Embed({CollectionDocumentPrompt(front, s, kDocs[1])}, o, EmbedStore::kKeep,
                          {"kc/d1"});
  DocumentRef ref;
  ref.id = "kc/d1";
  const ResolvedDocument by_id = front.ResolveDocuments({ref}, KvSource::kCausal).at(0);
  const ResolvedDocument r = ResolveCollectionDocument(front, s, kDocs[1], KvSource::kCausal);
  EXPECT_EQ(r.key, by_id.key);
  EXPECT_EQ(r.ids, by_id.ids);
  EXPECT_EQ(r.source, KvSource::kCausal);
  EXPECT_FALSE(r.ids.empty());
}

}  // namespace
}  // namespace gritserve
