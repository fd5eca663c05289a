// Engine API on generated checkpoints: pooling, batching, early exit, and
// generation (greedy, sampling, stop strings, streaming, cancellation).
#include "gritserve/engine/engine.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>

#include "gritserve/common/error.h"
#include "gritserve/common/memory_info.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/model/decoder.h"
#include "test_util.h"

namespace gritserve {
namespace {

struct Loaded {
  std::string dir;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Decoder> decoder;  // an independent copy of the weights
};

Loaded LoadPreset(const std::string& preset) {
  Loaded l;
  l.dir = testing::MakeTempDir(preset);
  WriteCheckpoint(l.dir, CheckpointPreset(preset));
  EngineOptions o;
  o.model_dir = l.dir;
  o.threads = 2;
  o.dtype = "float32";  // compared with the float32 decoder below
  l.engine = Engine::Load(o);
  ModelConfig c = ModelConfig::FromDirectory(l.dir);
  l.decoder = std::make_unique<Decoder>(c, LoadWeights(l.dir, c, at::kFloat, at::kCPU));
  return l;
}

// Hidden states of one sequence through the independent decoder: [T, H]
at::Tensor Hidden(const Decoder& d, const std::vector<int32_t>& ids, AttentionSpec spec,
                  int64_t layers = -1) {
  c10::InferenceMode guard;
  std::vector<int64_t> v(ids.begin(), ids.end());
  const int64_t n = static_cast<int64_t>(v.size());
  ForwardInput in;
  in.ids = at::tensor(v, at::kLong).view({1, n});
  in.positions = at::arange(n, at::kLong).view({1, n});
  in.attention = spec;
  in.num_layers = layers;
  return d.Forward(in, nullptr)[0];
}

at::Tensor Vec(const std::vector<float>& v) { return at::tensor(v, at::kFloat); }
double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Greedy decoding by recomputing the whole sequence every step (no KV cache).
std::vector<int32_t> NaiveGreedy(const Loaded& l, std::vector<int32_t> ids, int steps) {
  c10::InferenceMode guard;
  const int64_t limit = l.engine->front().tokenizer().VocabSize();
  std::vector<int32_t> out;
  for (int s = 0; s < steps; ++s) {
    at::Tensor h = Hidden(*l.decoder, ids, AttentionSpec::Causal());
    at::Tensor logits = l.decoder->Logits(h.narrow(0, h.size(0) - 1, 1))[0];
    int32_t next = static_cast<int32_t>(logits.narrow(0, 0, limit).argmax().item<int64_t>());
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tiny_ = new Loaded(LoadPreset("tiny")); }
  static void TearDownTestSuite() { delete tiny_; }
  static Loaded* tiny_;
};
Loaded* EngineTest::tiny_ = nullptr;

TEST_F(EngineTest, MeanPoolsOverTextTokensOnly) {
  Engine& e = *tiny_->engine;
  EmbedOptions o;
  o.instruction = "Represent this sentence for retrieval";
  o.normalize = false;
  EncodedPrompt p = e.front().EncodeEmbed("the cat sat on the mat", o);
  ASSERT_GT(p.text_begin, 0u);
  ASSERT_EQ(p.text_end, p.ids.size());
  std::vector<float> emb = e.runner().Embed({p}, o)[0];
  at::Tensor h = Hidden(*tiny_->decoder, p.ids, AttentionSpec::Bidirectional());
  at::Tensor text_mean = h.narrow(0, p.text_begin, p.text_end - p.text_begin).mean(0);
  EXPECT_LT(MaxDiff(Vec(emb), text_mean), 1e-5);
  EXPECT_GT(MaxDiff(Vec(emb), h.mean(0)), 1e-3);  // including the instruction would differ
}

TEST_F(EngineTest, LastPoolingAndNormalisation) {
  Engine& e = *tiny_->engine;
  EmbedOptions o;
  o.pooling = Pooling::kLast;
  o.normalize = false;
  EncodedPrompt p = e.front().EncodeEmbed("hello world", o);
  at::Tensor h = Hidden(*tiny_->decoder, p.ids, AttentionSpec::Bidirectional());
  EXPECT_LT(MaxDiff(Vec(e.runner().Embed({p}, o)[0]), h[p.text_end - 1]), 1e-5);
  o.normalize = true;
  at::Tensor n = Vec(e.runner().Embed({p}, o)[0]);
  EXPECT_NEAR(n.norm().item<double>(), 1.0, 1e-5);
  o.dimensions = 16;
  at::Tensor d = Vec(e.runner().Embed({p}, o)[0]);
  ASSERT_EQ(d.size(0), 16);
  at::Tensor expect = h[p.text_end - 1].narrow(0, 0, 16);
  EXPECT_LT(MaxDiff(d, expect / expect.norm()), 1e-5);
}

TEST_F(EngineTest, BatchedEmbeddingEqualsOneAtATime) {
  Engine& e = *tiny_->engine;
  std::vector<std::string> texts = {"a", "a much longer sentence about several different things",
                                    "medium length text here", "x y z"};
  EmbedOptions o;
  o.instruction = "query";
  auto batched = e.runner().EmbedTexts(texts, o);
  ASSERT_EQ(batched.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto single = e.runner().EmbedTexts({texts[i]}, o);
    EXPECT_LT(MaxDiff(Vec(batched[i]), Vec(single[0])), 1e-5) << texts[i];
  }
  EXPECT_GT(MaxDiff(Vec(batched[0]), Vec(batched[1])), 1e-3);
}

TEST_F(EngineTest, EarlyExitLayerUsesTheFirstLayersOnly) {
  Engine& e = *tiny_->engine;
  EmbedOptions o;
  o.raw = true;
  o.normalize = false;
  o.layer = 1;
  EncodedPrompt p = e.front().EncodeEmbed("early exit", o);
  at::Tensor h = Hidden(*tiny_->decoder, p.ids, AttentionSpec::Bidirectional(), 1);
  at::Tensor got = Vec(e.runner().Embed({p}, o)[0]);
  EXPECT_LT(MaxDiff(got, h.mean(0)), 1e-5);
  o.layer = -1;
  EXPECT_GT(MaxDiff(got, Vec(e.runner().Embed({p}, o)[0])), 1e-3);
  o.layer = 99;
  EXPECT_THROW(e.runner().Embed({p}, o), Error);
}

TEST_F(EngineTest, GreedyGenerationEqualsRecomputingEveryStep) {
  Engine& e = *tiny_->engine;
  std::vector<int32_t> prompt = e.front().EncodeGenerate("Once upon a time", false);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 12;
  p.ignore_eos = true;
  GenerateResult r = e.runner().Generate(prompt, p);
  EXPECT_EQ(r.tokens, NaiveGreedy(*tiny_, prompt, 12));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.completion_tokens, 12);
  EXPECT_EQ(r.prompt_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(r.text, e.front().tokenizer().Decode(r.tokens, true));
}

std::string LongText() {
  std::string s;
  for (int i = 0; i < 300; ++i) s += "word" + std::to_string(i % 17) + " ";
  return s;
}

// Concurrent generations prefill and decode in shared forwards (StepAll): each gets the
// tokens and logits it gets alone, whatever joins or leaves the batch when, a
// sampled one keeps its seed's sequence, and a cancelled one leaves the rest.
TEST_F(EngineTest, BatchedPrefillAndDecodingEqualOneAtATime) {
  Engine& e = *tiny_->engine;
  struct Run {
    std::string prompt;
    int max_tokens;
    double temperature;
    std::vector<std::string> docs;
  };
  const std::vector<Run> runs = {{"Once upon a time", 9, 0, {}},
                                 {"The weather today", 3, 0, {}},
                                 {"Sample something", 7, 1.0, {}},
                                 {"A question about the documents", 6, 0, {"first doc", "second"}},
                                 {"x", 11, 0, {}},
                                 {LongText(), 4, 0, {}}};  // over a prefill chunk
  auto params = [](const Run& r) {
    SamplingParams p;
    p.temperature = r.temperature;
    p.seed = 5;
    p.max_tokens = r.max_tokens;
    p.ignore_eos = true;
    p.capture_logits = true;
    return p;
  };
  auto start = [&](const Run& r) {
    std::vector<DocumentRef> refs;
    for (const auto& d : r.docs) refs.push_back(DocumentRef{"", d, {}});
    return e.runner().StartGeneration(e.front().EncodeGenerate(r.prompt, false), params(r), nullptr,
                                      e.front().ResolveDocuments(refs, KvSource::kCausal));
  };
  std::vector<GenerateResult> alone;
  for (const Run& r : runs) {
    auto g = start(r);
    while (g->Step()) {
    }
    alone.push_back(g->result());
  }
  // Together: two start at once, the others join one step apart; one more is
  // started and cancelled on its second step.
  std::vector<std::unique_ptr<Sequence>> gens;
  std::vector<size_t> index;  // gens[i] is runs[index[i]]
  std::unique_ptr<Sequence> cancelled = start(runs[0]);
  std::vector<bool> running;
  size_t next = 0;
  for (int round = 0; round < 40; ++round) {
    for (size_t j = 0; j < (round == 0 ? 2u : 1u) && next < runs.size(); ++j, ++next) {
      gens.push_back(start(runs[next]));
      index.push_back(next);
      running.push_back(true);
    }
    std::vector<Sequence*> step;
    std::vector<size_t> which;
    for (size_t i = 0; i < gens.size(); ++i) {
      if (running[i]) step.push_back(gens[i].get()), which.push_back(i);
    }
    if (!cancelled->finished()) {
      if (round == 2) cancelled->Cancel();
      step.push_back(cancelled.get());
    }
    if (step.empty()) break;
    std::vector<std::exception_ptr> errors;
    std::vector<bool> more = e.runner().StepAll(step, &errors);
    ASSERT_EQ(more.size(), step.size());
    for (size_t j = 0; j < which.size(); ++j) {
      ASSERT_FALSE(errors[j]);
      running[which[j]] = more[j];
    }
  }
  ASSERT_EQ(gens.size(), runs.size());
  for (size_t i = 0; i < gens.size(); ++i) {
    const GenerateResult& r = gens[i]->result();
    const GenerateResult& a = alone[index[i]];
    ASSERT_TRUE(gens[i]->finished());
    EXPECT_EQ(r.tokens, a.tokens) << runs[index[i]].prompt;
    EXPECT_EQ(r.finish_reason, "length");
    EXPECT_EQ(r.cached_tokens, a.cached_tokens);
    ASSERT_EQ(r.step_logits.size(), a.step_logits.size());
    for (size_t s = 0; s < r.step_logits.size(); ++s) {
      EXPECT_LT(MaxDiff(Vec(r.step_logits[s]), Vec(a.step_logits[s])), 1e-4)
          << runs[index[i]].prompt << " step " << s;
    }
  }
  EXPECT_EQ(cancelled->result().finish_reason, "cancelled");
  EXPECT_LE(cancelled->result().completion_tokens, 2);
}

TEST_F(EngineTest, LongPromptsArePrefilledInChunksExactly) {
  Engine& e = *tiny_->engine;
  // Longer than the 256-token prefill chunk, so the prompt spans three chunks.
  std::vector<int32_t> prompt;
  for (int i = 0; i < 600; ++i) prompt.push_back((i * 37 + 11) % e.front().tokenizer().VocabSize());
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 4;
  p.ignore_eos = true;
  EXPECT_EQ(e.runner().Generate(prompt, p).tokens, NaiveGreedy(*tiny_, prompt, 4));
}

// A long prompt joins shared passes one 256-token chunk per round: a
// generation already decoding gets a token every round meanwhile, both get
// the tokens and logits they get alone, and one cancelled between its chunks
// stops there.
TEST_F(EngineTest, LongPromptPrefillsAChunkPerRoundWhileOthersDecode) {
  Engine& e = *tiny_->engine;
  std::vector<int32_t> long_prompt;  // three chunks
  for (int i = 0; i < 600; ++i)
    long_prompt.push_back((i * 37 + 11) % e.front().tokenizer().VocabSize());
  const std::vector<int32_t> short_prompt = e.front().EncodeGenerate("Once upon a time", false);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 6;
  p.ignore_eos = true;
  p.capture_logits = true;
  const GenerateResult short_alone = e.runner().Generate(short_prompt, p);
  const GenerateResult long_alone = e.runner().Generate(long_prompt, p);

  auto decoding = e.runner().StartGeneration(short_prompt, p);
  ASSERT_TRUE(decoding->Step());  // prefilled, first token out
  auto prefilling = e.runner().StartGeneration(long_prompt, p);
  auto dropped = e.runner().StartGeneration(long_prompt, p);
  std::vector<Sequence*> gens = {decoding.get(), prefilling.get(), dropped.get()};
  std::vector<std::exception_ptr> errors;
  for (size_t round = 1; round <= 3; ++round) {
    if (round == 2) dropped->Cancel();
    std::vector<bool> more = e.runner().StepAll(gens, &errors);
    for (const auto& err : errors) ASSERT_FALSE(err);
    EXPECT_EQ(decoding->result().tokens.size(), 1 + round) << "round " << round;
    EXPECT_EQ(prefilling->result().tokens.size(), round == 3 ? 1u : 0u) << "round " << round;
    EXPECT_EQ(more[2], round == 1);
  }
  EXPECT_EQ(dropped->result().finish_reason, "cancelled");
  EXPECT_EQ(dropped->result().completion_tokens, 0);
  gens = {decoding.get(), prefilling.get()};
  while (true) {
    std::vector<bool> more = e.runner().StepAll(gens, &errors);
    std::vector<Sequence*> still;
    for (size_t i = 0; i < gens.size(); ++i) {
      ASSERT_FALSE(errors[i]);
      if (more[i]) still.push_back(gens[i]);
    }
    if (still.empty()) break;
    gens = still;
  }
  for (const auto& [got, want] : {std::make_pair(&decoding->result(), &short_alone),
                                  std::make_pair(&prefilling->result(), &long_alone)}) {
    EXPECT_EQ(got->tokens, want->tokens);
    EXPECT_EQ(got->prompt_tokens, want->prompt_tokens);
    ASSERT_EQ(got->step_logits.size(), want->step_logits.size());
    for (size_t s = 0; s < got->step_logits.size(); ++s) {
      EXPECT_LT(MaxDiff(Vec(got->step_logits[s]), Vec(want->step_logits[s])), 1e-4) << s;
    }
  }
}

TEST_F(EngineTest, SamplingIsReproducibleForASeed) {
  Engine& e = *tiny_->engine;
  std::vector<int32_t> prompt = e.front().EncodeGenerate("Sample something", false);
  SamplingParams p;
  p.temperature = 1.0;
  p.max_tokens = 10;
  p.ignore_eos = true;
  p.seed = 7;
  auto a = e.runner().Generate(prompt, p).tokens;
  EXPECT_EQ(a, e.runner().Generate(prompt, p).tokens);
  p.seed = 8;
  EXPECT_NE(a, e.runner().Generate(prompt, p).tokens);
  p.top_k = 1;  // top-1 sampling is greedy whatever the seed
  SamplingParams g = p;
  g.temperature = 0;
  EXPECT_EQ(e.runner().Generate(prompt, p).tokens, e.runner().Generate(prompt, g).tokens);
  p.top_k = 0;
  p.top_p = 1e-9;  // nucleus of one token: greedy as well
  EXPECT_EQ(e.runner().Generate(prompt, p).tokens, e.runner().Generate(prompt, g).tokens);
}

TEST_F(EngineTest, StopStringsStreamingAndCancellation) {
  Engine& e = *tiny_->engine;
  std::vector<int32_t> prompt = e.front().EncodeGenerate("The weather today", false);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 24;
  p.ignore_eos = true;
  std::string streamed;
  GenerateResult full = e.runner().Generate(prompt, p, [&](const std::string& s) {
    streamed += s;
    return true;
  });
  EXPECT_EQ(streamed, full.text);
  ASSERT_GE(full.text.size(), 6u);
  // Stop on a piece of the greedy text: output ends just before its first occurrence.
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  p.stop = {stop};
  streamed.clear();
  GenerateResult stopped = e.runner().Generate(prompt, p, [&](const std::string& s) {
    streamed += s;
    return true;
  });
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(streamed, stopped.text);
  // A callback that returns false cancels after the first piece.
  p.stop.clear();
  int calls = 0;
  GenerateResult cancelled = e.runner().Generate(prompt, p, [&](const std::string&) {
    ++calls;
    return false;
  });
  EXPECT_EQ(cancelled.finish_reason, "cancelled");
  EXPECT_EQ(calls, 1);
  EXPECT_LT(cancelled.completion_tokens, 24);
}

TEST_F(EngineTest, RejectsUnusableInput) {
  Engine& e = *tiny_->engine;
  SamplingParams p;
  EXPECT_THROW(e.runner().Generate({}, p), Error);
  EXPECT_THROW(e.runner().Generate({-1}, p), Error);
  EXPECT_THROW(e.runner().Embed({e.front().EncodeEmbedIds({})}, EmbedOptions{}), Error);
  EmbedOptions o;
  o.dimensions = 100000;
  EXPECT_THROW(e.runner().EmbedTexts({"x"}, o), Error);
  EngineOptions bad;
  bad.model_dir = tiny_->dir;
  bad.device = "tpu";
  EXPECT_THROW(Engine::Load(bad), Error);
}

// Llama (no biases, untied head, sentencepiece) and Mistral (sliding window) run
// through the same decoder: they load, embed and generate like the naive loop.
// --dtype bfloat16 on CPU: bfloat16 matrix products where the CPU has native
// kernels (float32 norms, attention and KV cache), LibTorch's bfloat16 otherwise.
// Either way the results stay close to float32 and the precision is reported.
TEST(MemoryInfo, AvailableIsMemAvailableCappedByTheCgroupLimit) {
  const std::string meminfo =
      "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n";
  const std::string stat = "anon 1000\nfile 2500000000\ninactive_file 2000000000\n";
  EXPECT_EQ(AvailableMemoryBytes(meminfo, "", "", ""), int64_t{20000000} * 1024);
  EXPECT_EQ(AvailableMemoryBytes(meminfo, "max\n", "123\n", stat), int64_t{20000000} * 1024);
  EXPECT_EQ(AvailableMemoryBytes(meminfo, "8000000000\n", "3000000000\n", ""), int64_t{5000000000});
  // Inactive page cache (a checkpoint just read) is reclaimable: not in use.
  EXPECT_EQ(AvailableMemoryBytes(meminfo, "8000000000\n", "3000000000\n", stat),
            int64_t{7000000000});
  EXPECT_EQ(AvailableMemoryBytes("", "8000000000\n", "9000000000\n", ""), 0);  // over its limit
  EXPECT_EQ(AvailableMemoryBytes("", "", "", ""), std::nullopt);
  EXPECT_EQ(AvailableMemoryBytes("MemTotal: 5 kB\n", "max", "", ""), std::nullopt);
  ASSERT_TRUE(AvailableMemoryBytes().has_value());  // Linux has /proc/meminfo
  EXPECT_GT(*AvailableMemoryBytes(), 0);
}

// `auto` on a CPU: bfloat16 products where the CPU has them natively (their
// quality: QuantQuality.Bfloat16ProductsHoldQ8sBoundsOnTheTinyModel), float32
// where it does not; and the engine loads what the rule says for this CPU.
TEST_F(EngineTest, AutoDtypeIsBfloat16ProductsWhereNativeElseFloat32) {
  EXPECT_EQ(AutoCpuDtype(true), "bfloat16");
  EXPECT_EQ(AutoCpuDtype(false), "float32");
  EngineOptions o;
  o.model_dir = tiny_->dir;
  o.threads = 1;
  ASSERT_EQ(o.dtype, "auto");
  const auto e = Engine::Load(o);
  EXPECT_EQ(e->front().dtype_name(),
            Linear::CpuBf16Available() ? "BFloat16 matmul, Float" : "Float");
}

TEST_F(EngineTest, CpuBfloat16StaysCloseToFloat32AndSaysWhatItRuns) {
  EngineOptions o;
  o.model_dir = tiny_->dir;
  o.threads = 2;
  o.dtype = "bfloat16";
  auto bf16 = Engine::Load(o);
  Engine& f32 = *tiny_->engine;
  EXPECT_EQ(bf16->front().dtype_name(),
            Linear::CpuBf16Available() ? "BFloat16 matmul, Float" : "BFloat16");
  EXPECT_EQ(f32.front().dtype_name(), "Float");

  const std::vector<std::string> texts = {"the cat sat on the mat", "a rather different text"};
  EmbedOptions eo;
  const auto a = f32.runner().EmbedTexts(texts, eo), b = bf16->runner().EmbedTexts(texts, eo);
  for (size_t i = 0; i < texts.size(); ++i) {
    const double cos = at::cosine_similarity(Vec(a[i]), Vec(b[i]), 0).item<double>();
    EXPECT_GT(cos, 0.999) << texts[i];
    EXPECT_LT(cos, 1.0 - 1e-9) << "bfloat16 should not be bit-identical to float32";
  }

  std::vector<int32_t> prompt = f32.front().EncodeGenerate("Once upon a time", false);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 1;
  p.ignore_eos = true;
  p.capture_logits = true;
  const GenerateResult x = f32.runner().Generate(prompt, p), y = bf16->runner().Generate(prompt, p);
  at::Tensor lx = Vec(x.step_logits[0]), ly = Vec(y.step_logits[0]);
  EXPECT_LT(MaxDiff(lx, ly), 0.05 * lx.abs().max().item<double>());
  EXPECT_GT(at::cosine_similarity(lx, ly, 0).item<double>(), 0.999);
}

TEST(EngineArchitectures, LlamaAndMistralWithSentencepiece) {
  for (const std::string preset : {"tiny-llama", "tiny-mistral"}) {
    Loaded l = LoadPreset(preset);
    Engine& e = *l.engine;
    EXPECT_EQ(e.front().tokenizer().Kind(), "sentencepiece");
    EXPECT_FALSE(e.front().config().qkv_bias);
    EXPECT_FALSE(e.front().config().tie_word_embeddings);
    auto emb = e.runner().EmbedTexts({"hello there", "general kenobi"}, EmbedOptions{});
    ASSERT_EQ(emb.size(), 2u);
    EXPECT_NEAR(Vec(emb[0]).norm().item<double>(), 1.0, 1e-5);
    EXPECT_GT(MaxDiff(Vec(emb[0]), Vec(emb[1])), 1e-3);
    std::vector<int32_t> prompt = e.front().EncodeGenerate("Tell me a story", false);
    ASSERT_TRUE(e.front().tokenizer().bos_id().has_value());
    EXPECT_EQ(prompt[0], *e.front().tokenizer().bos_id());
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = 8;
    p.ignore_eos = true;
    EXPECT_EQ(e.runner().Generate(prompt, p).tokens, NaiveGreedy(l, prompt, 8)) << preset;
  }
}

}  // namespace
}  // namespace gritserve
