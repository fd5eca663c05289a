// Prompt templates: JSON loading and the embed / generate / chat encoders.
#include <gtest/gtest.h>

#include <algorithm>

#include "gritserve/common/error.h"
#include "gritserve/tokenizer/template.h"
#include "gritserve/tokenizer/tokenizer.h"
#include "gritserve/tokenizer/tokenizer_writer.h"
#include "test_util.h"

namespace gritserve {
namespace {

const Tokenizer& Qwen2() {
  static const auto tok = Tokenizer::FromDirectory(testing::FixturesDir() + "/qwen2-tiny");
  return *tok;
}

const Tokenizer& DemoSentencePiece() {
  static const auto tok = [] {
    const std::string dir = testing::MakeTempDir("tmpl_spm");
    WriteDemoSentencePieceTokenizer(dir);
    return Tokenizer::FromDirectory(dir);
  }();
  return *tok;
}

std::string LoadErrorOf(const std::string& json) {
  try {
    PromptTemplate::FromJsonText(json);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLoad);
    return e.what();
  }
  ADD_FAILURE() << "accepted " << json;
  return "";
}

TEST(PromptTemplateTest, EmbedSpanIsExactlyTheText) {
  const auto tmpl = PromptTemplate::BuiltinGritLM();
  const std::string text = "Caching documents makes answers fast.";
  const auto ep = EncodeEmbedPrompt(Qwen2(), tmpl, "Represent the query", text);
  const auto text_ids = Qwen2().Encode(text);
  ASSERT_EQ(ep.text_end, ep.ids.size());
  ASSERT_EQ(ep.text_end - ep.text_begin, text_ids.size());
  EXPECT_TRUE(std::equal(text_ids.begin(), text_ids.end(), ep.ids.begin() + ep.text_begin));
  // Qwen2 has no "<s>" and no BOS: the prefix is exactly the rest of the template.
  const auto prefix = Qwen2().Encode("<|user|>\nRepresent the query\n<|embed|>\n");
  ASSERT_EQ(ep.text_begin, prefix.size());
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), ep.ids.begin()));
  const auto plain = EncodeEmbedPrompt(Qwen2(), tmpl, "", text);
  EXPECT_EQ(plain.text_begin, Qwen2().Encode("<|embed|>\n").size());
  EXPECT_EQ(plain.text_end - plain.text_begin, text_ids.size());
}

TEST(PromptTemplateTest, LeadingBosBecomesTheTokenizersBos) {
  const Tokenizer& sp = DemoSentencePiece();
  const auto ep = EncodeEmbedPrompt(sp, PromptTemplate::BuiltinGritLM(), "", "Hello world");
  ASSERT_FALSE(ep.ids.empty());
  EXPECT_EQ(ep.ids[0], 1);  // <s>
  EXPECT_EQ(std::count(ep.ids.begin(), ep.ids.end(), 1), 1);
  const auto text_ids = sp.Encode("<|embed|>\nHello world");
  EXPECT_TRUE(std::equal(text_ids.begin(), text_ids.end(), ep.ids.begin() + 1, ep.ids.end()));
  const auto gen = EncodeGeneratePrompt(sp, PromptTemplate::BuiltinGritLM(), "Hi");
  EXPECT_EQ(gen[0], 1);
  EXPECT_EQ(sp.Decode(gen, true), "<|user|>\nHi\n<|assistant|>\n");
}

// GritLM's encode() tokenizes instruction + text as one string and pools from
// where the instruction's own tokens end. Sentencepiece gives the start of a
// string a "\u2581" prefix that the same text after "\n" does not get, so
// tokenizing the text apart would pool over tokens GritLM never sees.
TEST(PromptTemplateTest, GritLmEmbedPromptIsTokenizedAsOneString) {
  const Tokenizer& sp = DemoSentencePiece();
  const std::string instruction = "Represent the query", text = "Hello world";
  const auto ep = EncodeEmbedPrompt(sp, PromptTemplate::BuiltinGritLM(), instruction, text);
  const std::string prefix = "<|user|>\n" + instruction + "\n<|embed|>\n";
  std::vector<int32_t> joint = {1};  // BOS, which GritLM's tokenizer adds
  const auto body = sp.Encode(prefix + text);
  joint.insert(joint.end(), body.begin(), body.end());
  EXPECT_EQ(ep.ids, joint);
  EXPECT_EQ(ep.text_begin, 1 + sp.Encode(prefix).size());
  EXPECT_EQ(ep.text_end, joint.size());
  const auto alone = sp.Encode(text);
  EXPECT_FALSE(std::equal(alone.begin(), alone.end(), ep.ids.begin() + ep.text_begin, ep.ids.end()))
      << "the text tokenized apart should differ here, or this test shows nothing";
}

TEST(PromptTemplateTest, ChatMlChatForQwen2) {
  const Tokenizer& tok = Qwen2();
  const auto tmpl = DefaultTemplateFor(tok);
  EXPECT_EQ(tmpl.name, "chatml");
  EXPECT_EQ(tmpl.kv_source, "causal");
  const auto ids = EncodeChat(
      tok, tmpl,
      {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}});
  const int32_t start = *tok.TokenToId("<|im_start|>"), end = *tok.TokenToId("<|im_end|>");
  std::vector<size_t> starts, ends;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == start) starts.push_back(i);
    if (ids[i] == end) ends.push_back(i);
  }
  ASSERT_EQ(starts.size(), 5u);  // four messages and the generation prompt
  ASSERT_EQ(ends.size(), 4u);
  EXPECT_EQ(starts[0], 0u);
  for (size_t k = 0; k < 4; ++k) {
    EXPECT_LT(starts[k], ends[k]);
    EXPECT_EQ(starts[k + 1], ends[k] + 2);  // <|im_end|> "\n" <|im_start|>
  }
  // Ends with the generation prompt.
  const auto gen = tok.Encode("<|im_start|>assistant\n");
  EXPECT_TRUE(std::equal(gen.rbegin(), gen.rend(), ids.rbegin()));
  EXPECT_EQ(tok.Decode(ids),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
            "<|im_start|>assistant\n");
  try {
    EncodeChat(tok, tmpl, {{"robot", "x"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnprocessable);
  }
}

TEST(PromptTemplateTest, DefaultSystemIsInsertedOnlyWithoutOne) {
  auto tmpl = PromptTemplate::BuiltinChatML();
  tmpl.default_system = "You are helpful.";
  const auto with_default = Qwen2().Decode(EncodeChat(Qwen2(), tmpl, {{"user", "Hi"}}));
  EXPECT_EQ(with_default.rfind("<|im_start|>system\nYou are helpful.<|im_end|>\n", 0), 0u);
  const auto own = Qwen2().Decode(EncodeChat(Qwen2(), tmpl, {{"system", "X"}, {"user", "Hi"}}));
  EXPECT_EQ(own.find("You are helpful."), std::string::npos);
}

TEST(PromptTemplateTest, FromJsonTextNamesBadKeys) {
  EXPECT_NE(LoadErrorOf(R"({"embed_plain": ""})").find("\"name\""), std::string::npos);
  EXPECT_NE(LoadErrorOf(R"({"name": "x", "embed_plian": ""})").find("embed_plian"),
            std::string::npos);
  EXPECT_NE(LoadErrorOf(R"({"name": "x", "generate": 3})").find("generate"), std::string::npos);
  EXPECT_NE(LoadErrorOf(R"({"name": "x", "generate": "no placeholder"})").find("generate"),
            std::string::npos);
  EXPECT_NE(LoadErrorOf(R"({"name": "x", "kv_source": "magic"})").find("kv_source"),
            std::string::npos);
  EXPECT_NE(LoadErrorOf(R"({"name": "x", "stop": "oops"})").find("stop"), std::string::npos);
  EXPECT_FALSE(LoadErrorOf("{not json").empty());
  const auto t = PromptTemplate::FromJsonText(R"({"name": "mini", "stop": ["END"]})");
  EXPECT_EQ(t.name, "mini");
  EXPECT_EQ(t.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(t.embed_plain, PromptTemplate().embed_plain);
}

TEST(PromptTemplateTest, ConfigFilesMatchBuiltins) {
  const std::string dir = std::string(GRITSERVE_SOURCE_DIR) + "/configs/";
  const std::pair<const char*, PromptTemplate> cases[] = {
      {"gritlm.json", PromptTemplate::BuiltinGritLM()},
      {"chatml.json", PromptTemplate::BuiltinChatML()},
      {"plain.json", PromptTemplate::BuiltinPlain()},
  };
  for (const auto& [file, builtin] : cases) {
    const auto t = PromptTemplate::FromJsonFile(dir + file);
    EXPECT_EQ(t.name, builtin.name) << file;
    EXPECT_EQ(t.embed_instruction, builtin.embed_instruction) << file;
    EXPECT_EQ(t.embed_plain, builtin.embed_plain) << file;
    EXPECT_EQ(t.generate, builtin.generate) << file;
    EXPECT_EQ(t.chat_begin, builtin.chat_begin) << file;
    EXPECT_EQ(t.chat_system, builtin.chat_system) << file;
    EXPECT_EQ(t.chat_user, builtin.chat_user) << file;
    EXPECT_EQ(t.chat_assistant, builtin.chat_assistant) << file;
    EXPECT_EQ(t.chat_generation_prompt, builtin.chat_generation_prompt) << file;
    EXPECT_EQ(t.kv_source, builtin.kv_source) << file;
    EXPECT_EQ(t.stop, builtin.stop) << file;
  }
  EXPECT_THROW(PromptTemplate::FromJsonFile(dir + "missing.json"), Error);
  // Plain wraps nothing.
  const auto plain = PromptTemplate::BuiltinPlain();
  EXPECT_EQ(EncodeGeneratePrompt(Qwen2(), plain, "Hello world"), Qwen2().Encode("Hello world"));
  const auto ep = EncodeEmbedPrompt(Qwen2(), plain, "", "Hello world");
  EXPECT_EQ(ep.text_begin, 0u);
}

}  // namespace
}  // namespace gritserve
