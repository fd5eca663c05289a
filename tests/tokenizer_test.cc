// Byte-level BPE against the real Qwen2 vocabulary in the test fixtures.
#include "gritserve/tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "gritserve/common/error.h"
#include "gritserve/tokenizer/text_util.h"
#include "test_util.h"
#include "unicode_util.h"

namespace gritserve {
namespace {

using testing::Nfc;
using testing::Utf8;
using testing::ValidUtf8;

// Random valid UTF-8 drawn from many scripts, combining marks, emoji, CJK and
// whitespace, so normalisation, the split regex and byte merges all get exercised.
std::string RandomText(std::mt19937& rng, int max_chars) {
  static const std::vector<std::pair<int32_t, int32_t>> ranges = {
      {0x20, 0x7E},       {0x20, 0x7E},       {0x20, 0x7E},       {0x09, 0x0D},
      {0xA0, 0xFF},       {0x100, 0x24F},     {0x300, 0x36F},     {0x370, 0x3FF},
      {0x400, 0x4FF},     {0x590, 0x5FF},     {0x600, 0x6FF},     {0x900, 0x97F},
      {0xE00, 0xE7F},     {0x1100, 0x11FF},   {0x2000, 0x206F},   {0x3000, 0x303F},
      {0x3040, 0x30FF},   {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},   {0xFE00, 0xFE0F},
      {0x1F300, 0x1F64F}, {0x1F900, 0x1F9FF}, {0x20000, 0x2A6DF}, {0x200D, 0x200D},
  };
  std::uniform_int_distribution<int> n_dist(0, max_chars);
  std::uniform_int_distribution<size_t> r_dist(0, ranges.size() - 1);
  std::string s;
  const int n = n_dist(rng);
  for (int i = 0; i < n; ++i) {
    const auto& [lo, hi] = ranges[r_dist(rng)];
    s += Utf8(std::uniform_int_distribution<int32_t>(lo, hi)(rng));
  }
  return s;
}

class Qwen2TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = Tokenizer::FromDirectory(testing::FixturesDir() + "/qwen2-tiny").release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  static const Tokenizer& tok() { return *tok_; }
  static Tokenizer* tok_;
};
Tokenizer* Qwen2TokenizerTest::tok_ = nullptr;

TEST_F(Qwen2TokenizerTest, Metadata) {
  EXPECT_EQ(tok().Kind(), "bpe");
  EXPECT_EQ(tok().VocabSize(), 151665);
  EXPECT_FALSE(tok().bos_id().has_value());
  EXPECT_EQ(tok().eos_id(), 151643);
  EXPECT_EQ(tok().pad_id(), 151643);
  EXPECT_FALSE(tok().add_bos());
  EXPECT_EQ(tok().TokenToId("<|im_start|>"), 151644);
  EXPECT_EQ(tok().TokenToId("Hello"), 9707);
  EXPECT_EQ(tok().TokenToId("ĠHello"), 21927);  // spelled as in the file
  EXPECT_FALSE(tok().TokenToId("no-such-token-xyz").has_value());
  EXPECT_TRUE(tok().IsSpecial(151644));
  EXPECT_FALSE(tok().IsSpecial(151657));  // <tool_call> is added but not special
  EXPECT_FALSE(tok().IsSpecial(9707));
  EXPECT_EQ(tok().TokenBytes(21927), " Hello");
}

// Every case is Hugging Face's own ids (six were corrected in the fixture: five
// LaTeX cases once read a literal backslash-t as a TAB, and "}</s>\n" once listed
// "</s>" as one token where the split regex gives "}</", "s", ">\n"), so each one
// must encode exactly and decode back to its NFC text.
TEST_F(Qwen2TokenizerTest, FixtureCasesEncodeExactly) {
  std::ifstream in(testing::FixturesDir() + "/tokenizer/qwen2.jsonl");
  ASSERT_TRUE(in) << "missing fixture";
  std::string line;
  int cases = 0, exact = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const std::string text = j.at("text").get<std::string>();
    const auto want = j.at("ids").get<std::vector<int32_t>>();
    const auto got = tok().Encode(text);
    ++cases;
    EXPECT_EQ(tok().Decode(got), Nfc(text)) << "text: " << text;
    EXPECT_EQ(tok().Decode(want), Nfc(text)) << "fixture ids do not spell: " << text;
    EXPECT_EQ(got, want) << "text: " << text;
    exact += got == want;
  }
  EXPECT_EQ(cases, 143);
  EXPECT_EQ(exact, cases);
}

TEST_F(Qwen2TokenizerTest, RandomUtf8RoundTrips) {
  std::mt19937 rng(1234);
  for (int i = 0; i < 400; ++i) {
    const std::string text = RandomText(rng, 60);
    ASSERT_TRUE(ValidUtf8(text));
    const auto ids = tok().Encode(text, /*parse_special=*/false);
    EXPECT_EQ(tok().Decode(ids), Nfc(text)) << "case " << i;
  }
}

TEST_F(Qwen2TokenizerTest, SpecialTokensParsedOnlyWhenAsked) {
  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  const auto with = tok().Encode(text, true);
  ASSERT_GE(with.size(), 3u);
  EXPECT_EQ(with.front(), 151644);
  EXPECT_EQ(with.back(), 151645);
  const auto without = tok().Encode(text, false);
  for (int32_t id : without) EXPECT_FALSE(tok().IsSpecial(id)) << id;
  EXPECT_EQ(tok().Decode(without), text);
  EXPECT_EQ(tok().Decode(with), text);
  EXPECT_EQ(tok().Decode(with, /*skip_special=*/true), "user\nhi");
  // Non-special added tokens are matched either way, as in HF.
  EXPECT_EQ(tok().Encode("<tool_call>", false), std::vector<int32_t>{151657});
}

TEST_F(Qwen2TokenizerTest, InvalidUtf8IsUnprocessable) {
  for (const std::string& bad :
       {std::string("abc\xff"), std::string("\xc3"), std::string("\xed\xa0\x80"),
        std::string("\xc0\x80"), std::string("ok \xe2\x82 no")}) {
    try {
      tok().Encode(bad);
      ADD_FAILURE() << "accepted invalid UTF-8";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnprocessable);
    }
  }
  // Embedded NUL is valid UTF-8.
  const std::string nul("a\0b", 3);
  EXPECT_EQ(tok().Decode(tok().Encode(nul)), nul);
}

TEST_F(Qwen2TokenizerTest, UnknownIdIsUnprocessable) {
  for (int32_t id : {-1, 151665, 151935, 1 << 30}) {
    try {
      tok().Decode({9707, id});
      ADD_FAILURE() << "decoded unknown id " << id;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnprocessable);
      EXPECT_NE(std::string(e.what()).find(std::to_string(id)), std::string::npos);
    }
    EXPECT_THROW(tok().TokenBytes(id), Error);
  }
}

TEST_F(Qwen2TokenizerTest, DecodeReplacesInvalidBytes) {
  // 🦙 is split into byte tokens; the first of them alone is an incomplete sequence.
  const auto ids = tok().Encode(" 🦙");
  ASSERT_EQ(ids, (std::vector<int32_t>{11162, 99, 247}));
  EXPECT_EQ(tok().Decode({ids[0]}), " \xEF\xBF\xBD");
  EXPECT_EQ(tok().Decode({ids[0], 9707}), " \xEF\xBF\xBDHello");
}

TEST_F(Qwen2TokenizerTest, StreamDecoderMatchesDecode) {
  std::mt19937 rng(99);
  std::vector<std::string> texts = {
      "🚀 (normal) 😶‍🌫️ 你好，世界！ 안녕하세요 🦙.cpp",
      "<|im_start|>assistant\nÄpfel ½ 🤖<|im_end|>"};
  for (int i = 0; i < 100; ++i) texts.push_back(RandomText(rng, 40));
  for (const auto& text : texts) {
    const auto ids = tok().Encode(text);
    for (bool skip : {true, false}) {
      StreamDecoder dec(tok(), skip);
      std::string joined;
      for (int32_t id : ids) {
        const std::string piece = dec.Push(id);
        EXPECT_TRUE(ValidUtf8(piece)) << "text: " << text;
        joined += piece;
      }
      joined += dec.Flush();
      EXPECT_EQ(joined, tok().Decode(ids, skip)) << "text: " << text;
    }
  }
}

TEST_F(Qwen2TokenizerTest, StreamDecoderFlushesIncompleteTail) {
  const auto ids = tok().Encode(" 🦙");
  StreamDecoder dec(tok());
  EXPECT_EQ(dec.Push(ids[0]), " ");
  EXPECT_EQ(dec.Flush(), "\xEF\xBF\xBD");
}

TEST_F(Qwen2TokenizerTest, OffsetsCoverAsciiText) {
  const std::string text = "Hello, world! It's  2024.\n\tok";
  const auto spans = tok().EncodeWithOffsets(text);
  ASSERT_FALSE(spans.empty());
  EXPECT_EQ(spans.front().start, 0u);
  EXPECT_EQ(spans.back().stop, text.size());
  size_t pos = 0;
  std::vector<int32_t> ids;
  for (const auto& s : spans) {
    EXPECT_EQ(s.start, pos);
    EXPECT_EQ(text.substr(s.start, s.stop - s.start), tok().TokenBytes(s.id));
    pos = s.stop;
    ids.push_back(s.id);
  }
  EXPECT_EQ(ids, tok().Encode(text));
}

TEST_F(Qwen2TokenizerTest, OffsetsCoverMultibyteText) {
  // Already NFC: spans tile the input exactly, byte tokens of one character included.
  const std::string text = "нещо 你好 🦙 <|im_end|> x";
  const auto spans = tok().EncodeWithOffsets(text);
  size_t pos = 0;
  for (const auto& s : spans) {
    EXPECT_EQ(s.start, pos);
    EXPECT_GT(s.stop, s.start);
    pos = s.stop;
  }
  EXPECT_EQ(pos, text.size());
  // Decomposed input: spans stay monotone, inside the text, and end at its end.
  const std::string nfd = "Cafe\xCC\x81 cre\xCC\x80me";
  const auto nspans = tok().EncodeWithOffsets(nfd);
  size_t prev = 0;
  for (const auto& s : nspans) {
    EXPECT_GE(s.start, prev);
    EXPECT_LE(s.stop, nfd.size());
    EXPECT_LE(s.start, s.stop);
    prev = s.start;
  }
  EXPECT_EQ(nspans.back().stop, nfd.size());
}

TEST_F(Qwen2TokenizerTest, LongPathologicalInputs) {
  // Correctness on inputs that make naive BPE / regex quadratic (speed lives in bench/).
  const std::string spaces(20000, ' ');
  EXPECT_EQ(tok().Decode(tok().Encode(spaces)), spaces);
  std::string b64;
  for (int i = 0; i < 5000; ++i) b64 += "QUJDRA+/";
  EXPECT_EQ(tok().Decode(tok().Encode(b64)), b64);
  const std::string as(30000, 'a');
  EXPECT_EQ(tok().Decode(tok().Encode(as)), as);
}

TEST(TokenizerLoadTest, MissingDirectoryIsLoadError) {
  try {
    Tokenizer::FromDirectory("/nonexistent/dir");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLoad);
  }
  const std::string empty = testing::MakeTempDir("tok_empty");
  EXPECT_THROW(Tokenizer::FromDirectory(empty), Error);
}

}  // namespace
}  // namespace gritserve

namespace gritserve {
namespace {

// A Split pre-tokenizer with a plain {"String": ...} pattern matches it
// literally (PCRE2 refuses its Unicode-properties option beside a literal).
TEST(PreTokenizerRegex, LiteralPatternsMatchAsPlainStrings) {
  const tokenizer_internal::Regex dot(".", /*literal=*/true);
  EXPECT_EQ(dot.FindAll("a.b..ü"),
            (std::vector<std::pair<size_t, size_t>>{{1, 2}, {3, 4}, {4, 5}}));
  const tokenizer_internal::Regex space(" ", /*literal=*/true);
  EXPECT_EQ(space.FindAll("a b"), (std::vector<std::pair<size_t, size_t>>{{1, 2}}));
}

}  // namespace
}  // namespace gritserve
