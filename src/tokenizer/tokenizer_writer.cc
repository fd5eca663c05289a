#include "gritserve/tokenizer/tokenizer_writer.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "gritserve/common/error.h"
#include "gritserve/tokenizer/text_util.h"
#include "spm_api.h"

namespace gritserve {

namespace ti = tokenizer_internal;
using ojson = nlohmann::ordered_json;

namespace {

// Qwen2's pre-tokenizer split, so demo checkpoints tokenize like the real target.
constexpr char kQwen2Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kSpecials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  if (!out) throw LoadError("cannot write " + path);
}

std::string ToByteLevel(const std::string& bytes) {
  const auto& map = ti::ByteToUnicode();
  std::string s;
  for (unsigned char c : bytes) s += map[c];
  return s;
}

}  // namespace

const std::string& DemoTokenizerCorpus() {
  static const std::string corpus = R"(The quick brown fox jumps over the lazy dog.
A retrieval system embeds every document once and caches its keys and values.
When a question arrives, the server reuses the cached documents instead of reading them again.
Generative representational instruction tuning trains one model to embed and to generate.
The model reads the instruction, then the text, and the mean of its hidden states is the embedding.
Please summarise the following passage in two sentences.
What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs.
It's a small test, and we're sure they'll like it; I'd say you've done well.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1e-6 -17 +23%.
Dates like 2024-05-17 and times like 12:30:45 appear in logs.
User: Hello! Assistant: Hi, how can I help you today?
def embed(texts, instruction=""):
    """Return one normalised vector per text."""
    vectors = [model.encode(instruction + t) for t in texts]
    return [v / norm(v) for v in vectors]

for (int i = 0; i < n; ++i) {
  sum += values[i] * weights[i];
}
std::vector<int32_t> ids = tokenizer.Encode(text);
if (ids.empty()) { return nullptr; }
SELECT id, title FROM documents WHERE score > 0.5 ORDER BY score DESC;
{"name": "demo", "values": [1, 2, 3], "ok": true, "nested": {"key": null}}
<html><body><p class="note">Hello &amp; welcome</p></body></html>
$ cmake --build build -j2 && ctest --output-on-failure
    Indented code keeps its    spaces and	tabs.

Der schnelle braune Fuchs springt über den faulen Hund. Äpfel und Öl sind schön.
Le renard brun rapide saute par-dessus le chien paresseux. Où est la gare ? Très bien, merci.
El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la biblioteca? ¡Hola, señor!
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела?
Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.
敏捷的棕色狐狸跳过了懒狗。你好，世界！今天天气很好。我们一起学习机器学习。
素早い茶色の狐がのろまな犬を飛び越える。こんにちは、世界。ありがとうございます。
빠른 갈색 여우가 게으른 개를 뛰어넘는다. 안녕하세요, 세계! 감사합니다.
الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم.
דוגמה קצרה בעברית. שלום עולם.
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। नमस्ते दुनिया।
สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ สวัสดีชาวโลก
Emoji: 🚀 🦙 😀 👍🏽 ❤️ ✅ 🤖 — and symbols: ½ ∑ ∫ √ ≤ ≥ ≠ ∞ π € £ ¥ © ®.
Math: $E = mc^2$, $\sum_{i=1}^{n} x_i$, and $\frac{a}{b} + \sqrt{c}$.
The weather is nice today, so the children are playing outside in the garden.
Reading documents, writing answers, and checking the facts are the three steps.
Caching the document states makes the time to the first token much lower.
The the the and and and of of of to to to in in in is is is that that that.
)";
  return corpus;
}

namespace {

// A trained byte-level BPE: the vocabulary (id -> raw bytes) and the merges, in order.
struct DemoBpe {
  std::vector<std::string> vocab;
  std::map<std::string, int> vocab_ids;
  std::vector<std::pair<int, int>> merges;
};
// The corpus's words as symbol ids, each with its count.
using SymbolWords = std::vector<std::pair<std::vector<int>, int>>;

// Word (as raw bytes) -> count; std::map keeps the training order deterministic.
std::map<std::string, int> CountCorpusWords() {
  const std::string norm = ti::Normalize(DemoTokenizerCorpus(), ti::NormalForm::kNfc);
  const ti::Regex split(ti::AdaptRegexForPcre2(kQwen2Pattern));
  std::map<std::string, int> word_counts;
  for (const auto& [b, e] : split.FindAll(norm)) ++word_counts[norm.substr(b, e - b)];
  return word_counts;
}

// Ids 0..255 are the bytes in GPT-2's table order of code points ("!" first), as in
// GPT-2 / Qwen2 vocabularies.
std::vector<int> Gpt2ByteOrder() {
  const auto& map = ti::ByteToUnicode();
  // That order is: printable bytes (mapped to themselves) first, then the rest.
  std::vector<int> byte_order;
  for (int pass = 0; pass < 2; ++pass) {
    for (int b = 0; b < 256; ++b) {
      const bool printable = map[b].size() == 1 || static_cast<unsigned char>(map[b][0]) < 0xC4;
      if (printable == (pass == 0)) byte_order.push_back(b);
    }
  }
  return byte_order;
}

// Seeds the vocabulary with the 256 bytes and spells every word in their ids.
SymbolWords SeedByteVocab(const std::map<std::string, int>& word_counts, DemoBpe* bpe) {
  std::vector<int> byte_id(256);
  for (int b : Gpt2ByteOrder()) {
    byte_id[b] = static_cast<int>(bpe->vocab.size());
    bpe->vocab_ids[std::string(1, static_cast<char>(b))] = byte_id[b];
    bpe->vocab.push_back(std::string(1, static_cast<char>(b)));
  }
  SymbolWords words;
  for (const auto& [w, c] : word_counts) {
    std::vector<int> syms;
    for (unsigned char ch : w) syms.push_back(byte_id[ch]);
    words.emplace_back(std::move(syms), c);
  }
  return words;
}

// Most frequent pair; ties go to the smallest byte strings, so output is stable.
std::optional<std::pair<int, int>> MostFrequentPair(const SymbolWords& words,
                                                    const std::vector<std::string>& vocab) {
  std::map<std::pair<int, int>, int> pair_counts;
  for (const auto& [syms, c] : words) {
    for (size_t i = 0; i + 1 < syms.size(); ++i) pair_counts[{syms[i], syms[i + 1]}] += c;
  }
  const std::pair<int, int>* best = nullptr;
  int best_count = 0;
  for (const auto& [p, c] : pair_counts) {
    const bool better = c > best_count || (c == best_count && best != nullptr &&
                                           std::tie(vocab[p.first], vocab[p.second]) <
                                               std::tie(vocab[best->first], vocab[best->second]));
    if (better) {
      best = &p;
      best_count = c;
    }
  }
  if (best == nullptr) return std::nullopt;
  return *best;
}

// Id of the token a + b, added to the vocabulary unless it is there already.
int MergedTokenId(int a, int b, DemoBpe* bpe) {
  const std::string merged = bpe->vocab[a] + bpe->vocab[b];
  auto it = bpe->vocab_ids.find(merged);
  if (it != bpe->vocab_ids.end()) return it->second;
  const int id = static_cast<int>(bpe->vocab.size());
  bpe->vocab.push_back(merged);
  bpe->vocab_ids[merged] = id;
  return id;
}

// Replaces each (a, b) in the words, left to right, by `id`.
void ApplyMerge(int a, int b, int id, SymbolWords* words) {
  for (auto& [syms, c] : *words) {
    std::vector<int> out;
    out.reserve(syms.size());
    for (size_t i = 0; i < syms.size(); ++i) {
      if (i + 1 < syms.size() && syms[i] == a && syms[i + 1] == b) {
        out.push_back(id);
        ++i;
      } else {
        out.push_back(syms[i]);
      }
    }
    syms = std::move(out);
  }
}

DemoBpe TrainDemoBpe(int num_merges) {
  DemoBpe bpe;
  SymbolWords words = SeedByteVocab(CountCorpusWords(), &bpe);
  for (int m = 0; m < num_merges; ++m) {
    const auto best = MostFrequentPair(words, bpe.vocab);
    if (!best) break;
    const auto [a, b] = *best;
    const int id = MergedTokenId(a, b, &bpe);
    bpe.merges.emplace_back(a, b);
    ApplyMerge(a, b, id, &words);
  }
  return bpe;
}

// tokenizer.json's "added_tokens": kSpecials, numbered from `first_id`.
ojson SpecialTokensJson(int32_t first_id) {
  ojson added = ojson::array();
  int32_t next_id = first_id;
  for (const char* s : kSpecials) {
    added.push_back({{"id", next_id++},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  return added;
}

// tokenizer.json's "model", tokens spelled through GPT-2's byte-to-unicode table.
ojson DemoBpeModelJson(const DemoBpe& bpe) {
  ojson model = {{"type", "BPE"},
                 {"dropout", nullptr},
                 {"unk_token", nullptr},
                 {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", ""},
                 {"fuse_unk", false},
                 {"byte_fallback", false},
                 {"ignore_merges", false}};
  ojson v = ojson::object();
  const int32_t regular = static_cast<int32_t>(bpe.vocab.size());
  for (int32_t id = 0; id < regular; ++id) v[ToByteLevel(bpe.vocab[id])] = id;
  model["vocab"] = std::move(v);
  ojson ms = ojson::array();
  for (const auto& [a, b] : bpe.merges)
    ms.push_back(ToByteLevel(bpe.vocab[a]) + " " + ToByteLevel(bpe.vocab[b]));
  model["merges"] = std::move(ms);
  return model;
}

// The whole tokenizer.json, keys in the order HF writes them.
ojson DemoBpeTokenizerJson(const DemoBpe& bpe) {
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = SpecialTokensJson(static_cast<int32_t>(bpe.vocab.size()));
  j["normalizer"] = {{"type", "NFC"}};
  const ojson byte_level = {{"type", "ByteLevel"},
                            {"add_prefix_space", false},
                            {"trim_offsets", false},
                            {"use_regex", false}};
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", kQwen2Pattern}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          byte_level}}};
  j["post_processor"] = byte_level;
  j["decoder"] = byte_level;
  j["model"] = DemoBpeModelJson(bpe);
  return j;
}

}  // namespace

int32_t WriteDemoBpeTokenizer(const std::string& dir, int num_merges) {
  const DemoBpe bpe = TrainDemoBpe(num_merges);
  WriteFile(dir + "/tokenizer.json", DemoBpeTokenizerJson(bpe).dump(1));
  const ojson cfg = {{"add_bos_token", false},
                     {"add_prefix_space", false},
                     {"bos_token", nullptr},
                     {"eos_token", "<|endoftext|>"},
                     {"pad_token", "<|endoftext|>"},
                     {"unk_token", nullptr},
                     {"model_max_length", 32768},
                     {"clean_up_tokenization_spaces", false},
                     {"tokenizer_class", "Qwen2Tokenizer"}};
  WriteFile(dir + "/tokenizer_config.json", cfg.dump(2));
  return static_cast<int32_t>(bpe.vocab.size() + std::size(kSpecials));
}

namespace {

// Keeps only lines of 1- and 2-byte UTF-8 (Latin, Greek, Cyrillic...): sentencepiece
// reserves a piece for every character it must cover (coverage >= 0.98), and the CJK
// and other scripts would not fit a few-hundred-piece vocabulary. They are still
// encodable through byte fallback.
std::vector<std::string> NarrowLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    bool narrow = true;
    for (unsigned char c : line) narrow = narrow && c < 0xE0;
    if (!line.empty() && narrow) lines.push_back(line);
  }
  return lines;
}

}  // namespace

int32_t WriteDemoSentencePieceTokenizer(const std::string& dir, int vocab_size) {
  const std::vector<std::string> sentences = NarrowLines(DemoTokenizerCorpus());
  std::string proto, error;
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      // Rare characters go through byte fallback, leaving room for merges in a small vocab.
      {"character_coverage", "0.98"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", "1"},
      // The corpus is tiny; let the trainer stop short of vocab_size instead of failing.
      {"hard_vocab_limit", "false"},
      // As Llama-2 / Mistral: no text normalisation, so newlines and runs of spaces
      // survive (through byte fallback) and every text round-trips.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"minloglevel", "2"},
  };
  const SpmApi& spm = Spm();
  if (!spm.train(args, sentences, &proto, &error)) {
    throw LoadError("sentencepiece training failed: " + error);
  }
  WriteFile(dir + "/tokenizer.model", proto);
  const ojson cfg = {{"add_bos_token", true}, {"add_eos_token", false},
                     {"bos_token", "<s>"},    {"eos_token", "</s>"},
                     {"unk_token", "<unk>"},  {"pad_token", nullptr},
                     {"legacy", true},        {"tokenizer_class", "LlamaTokenizer"}};
  WriteFile(dir + "/tokenizer_config.json", cfg.dump(2));
  void* model = spm.load(proto, /*is_proto=*/true, &error);
  if (model == nullptr) throw LoadError("trained sentencepiece model is unreadable: " + error);
  const int size = spm.piece_size(model);
  spm.destroy(model);
  return size;
}

}  // namespace gritserve
