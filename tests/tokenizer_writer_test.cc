// Generated demo tokenizers: the BPE writer and the sentencepiece wrapper.
#include "gritserve/tokenizer/tokenizer_writer.h"

#include <gtest/gtest.h>
#include <utf8proc.h>

#include <cstdlib>
#include <random>

#include "gritserve/common/error.h"
#include "gritserve/tokenizer/template.h"
#include "gritserve/tokenizer/tokenizer.h"
#include "test_util.h"
#include "unicode_util.h"

namespace gritserve {
namespace {

using testing::Nfc;
using testing::Utf8;
using testing::ValidUtf8;

std::string RandomUtf8(std::mt19937& rng, int n) {
  std::string s;
  std::uniform_int_distribution<int32_t> cp_dist(1, 0x2FFFF);
  for (int i = 0; i < n; ++i) {
    int32_t cp = cp_dist(rng);
    if (!utf8proc_codepoint_valid(cp)) cp = 'x';
    s += Utf8(cp);
  }
  return s;
}

TEST(DemoBpeTokenizerTest, LoadsBackAndRoundTrips) {
  const std::string dir = testing::MakeTempDir("demo_bpe");
  const int32_t vocab = WriteDemoBpeTokenizer(dir, 300);
  const auto tok = Tokenizer::FromDirectory(dir);
  EXPECT_EQ(tok->Kind(), "bpe");
  EXPECT_EQ(tok->VocabSize(), vocab);
  EXPECT_LE(vocab, 256 + 300 + 3);
  EXPECT_GT(vocab, 256 + 3);
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    const auto id = tok->TokenToId(s);
    ASSERT_TRUE(id.has_value()) << s;
    EXPECT_TRUE(tok->IsSpecial(*id));
    EXPECT_GE(*id, vocab - 3);
  }
  EXPECT_EQ(tok->eos_id(), tok->TokenToId("<|endoftext|>"));
  EXPECT_FALSE(tok->bos_id().has_value());
  EXPECT_FALSE(tok->add_bos());
  // Merges were learned: common English compresses below one token per byte.
  const std::string english = "The model reads the documents and the question.";
  EXPECT_LT(tok->Encode(english).size(), english.size() / 2);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    const std::string text = RandomUtf8(rng, 30);
    EXPECT_EQ(tok->Decode(tok->Encode(text, false)), Nfc(text)) << "case " << i;
  }
  const auto ids = tok->Encode("<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(ids.front(), *tok->TokenToId("<|im_start|>"));
  EXPECT_EQ(ids.back(), *tok->TokenToId("<|im_end|>"));
  EXPECT_EQ(DefaultTemplateFor(*tok).name, "chatml");
}

TEST(DemoBpeTokenizerTest, Deterministic) {
  const std::string a = testing::MakeTempDir("demo_bpe_a"), b = testing::MakeTempDir("demo_bpe_b");
  WriteDemoBpeTokenizer(a, 100);
  WriteDemoBpeTokenizer(b, 100);
  EXPECT_EQ(testing::ReadFile(a + "/tokenizer.json"), testing::ReadFile(b + "/tokenizer.json"));
}

class SentencePieceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("demo_spm"));
    vocab_ = WriteDemoSentencePieceTokenizer(*dir_, 400);
    tok_ = Tokenizer::FromDirectory(*dir_).release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
  }
  static const Tokenizer& tok() { return *tok_; }
  static Tokenizer* tok_;
  static std::string* dir_;
  static int32_t vocab_;
};
Tokenizer* SentencePieceTest::tok_ = nullptr;
std::string* SentencePieceTest::dir_ = nullptr;
int32_t SentencePieceTest::vocab_ = 0;

TEST_F(SentencePieceTest, Metadata) {
  EXPECT_EQ(tok().Kind(), "sentencepiece");
  EXPECT_EQ(tok().VocabSize(), vocab_);
  EXPECT_GT(vocab_, 259);
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_TRUE(tok().add_bos());
  EXPECT_EQ(tok().TokenToId("<s>"), 1);
  EXPECT_EQ(tok().TokenToId("</s>"), 2);
  EXPECT_EQ(tok().TokenToId("<unk>"), 0);
  EXPECT_FALSE(tok().TokenToId("definitely-not-a-piece").has_value());
  EXPECT_TRUE(tok().IsSpecial(1));
  EXPECT_TRUE(tok().IsSpecial(2));
  EXPECT_EQ(tok().TokenBytes(1), "<s>");
  EXPECT_EQ(DefaultTemplateFor(tok()).name, "gritlm");
}

TEST_F(SentencePieceTest, RoundTripsEnglishAndBytes) {
  for (const std::string text :
       {"The quick brown fox jumps over the lazy dog.", "Hello world", "a",
        "Caching the document states makes it fast.", "Ünïcödé 你好 🦙 unseen ☃ text",
        "two  spaces\n\tand a tab", " leading space"}) {
    const auto ids = tok().Encode(text);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok().Decode(ids), text) << text;
    for (int32_t id : ids) EXPECT_FALSE(tok().IsSpecial(id)) << text;
  }
  EXPECT_TRUE(tok().Encode("").empty());
}

TEST_F(SentencePieceTest, ControlPiecesParsedOnlyWhenAsked) {
  const auto ids = tok().Encode("<s>Hello world</s>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tok().Decode(ids, /*skip_special=*/true), "Hello world");
  EXPECT_EQ(tok().Decode(ids), "<s>Hello world</s>");
  const auto plain = tok().Encode("<s>Hello", false);
  for (int32_t id : plain) EXPECT_FALSE(tok().IsSpecial(id));
  EXPECT_EQ(tok().Decode(plain), "<s>Hello");
}

TEST_F(SentencePieceTest, StreamDecodeEqualsDecode) {
  for (const std::string text : {"The quick brown fox jumps.", "<s>Hello world</s> again",
                                 "你好 🦙 ☃ byte fallback ✅", "two  spaces"}) {
    const auto ids = tok().Encode(text);
    for (bool skip : {true, false}) {
      StreamDecoder dec(tok(), skip);
      std::string joined;
      for (int32_t id : ids) {
        const std::string piece = dec.Push(id);
        EXPECT_TRUE(ValidUtf8(piece));
        joined += piece;
      }
      joined += dec.Flush();
      EXPECT_EQ(joined, tok().Decode(ids, skip)) << text;
    }
  }
}

TEST_F(SentencePieceTest, OffsetsAndErrors) {
  const std::string text = "Hello world";
  const auto spans = tok().EncodeWithOffsets(text);
  ASSERT_FALSE(spans.empty());
  EXPECT_EQ(spans.front().start, 0u);
  EXPECT_EQ(spans.back().stop, text.size());
  for (size_t i = 1; i < spans.size(); ++i) EXPECT_EQ(spans[i].start, spans[i - 1].stop);
  try {
    tok().Encode("bad \xff");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnprocessable);
  }
  try {
    tok().Decode({vocab_});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnprocessable);
  }
}

TEST(DemoSentencePieceTest, Deterministic) {
  const std::string a = testing::MakeTempDir("demo_spm_a"), b = testing::MakeTempDir("demo_spm_b");
  EXPECT_EQ(WriteDemoSentencePieceTokenizer(a, 400), WriteDemoSentencePieceTokenizer(b, 400));
  EXPECT_EQ(testing::ReadFile(a + "/tokenizer.model"), testing::ReadFile(b + "/tokenizer.model"));
}

}  // namespace
}  // namespace gritserve
