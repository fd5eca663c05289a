// Document K/V for generation: resolving documents, building store entries,
// and placing cached entries before a prompt.
#include <c10/core/InferenceMode.h>
#include <xxhash.h>

#include <filesystem>
#include <fstream>

#include "engine_impl.h"
#include "gritserve/common/error.h"

namespace gritserve {
namespace {

std::string ReadPrefix(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string s(max_bytes, '\0');
  in.read(s.data(), static_cast<std::streamsize>(max_bytes));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

}  // namespace

std::string ModelFingerprint(const std::string& model_dir) {
  namespace fs = std::filesystem;
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  const std::string config = ReadPrefix(model_dir + "/config.json", 1 << 20);
  XXH3_128bits_update(st, config.data(), config.size());
  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(model_dir)) {
    if (f.path().extension() == ".safetensors") files.push_back(f.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    // The header names every tensor with its dtype, shape and offsets; its
    // first 64 KiB plus the file size tell checkpoints apart cheaply.
    const std::string head = ReadPrefix(f.string(), 64 << 10);
    const uint64_t size = fs::file_size(f);
    XXH3_128bits_update(st, head.data(), head.size());
    XXH3_128bits_update(st, &size, sizeof(size));
  }
  XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  return DocKey{h.high64, h.low64}.Hex();
}

KvSource FrontEnd::default_kv_source() const {
  return impl_->prompt_template.kv_source == "causal" ? KvSource::kCausal : KvSource::kEmbed;
}

DocKvStats FrontEnd::document_stats() const { return impl_->store->stats(); }

bool FrontEnd::RemoveDocument(const std::string& id) { return impl_->store->Remove(id); }

EncodedPrompt FrontEnd::StoredPrompt(const std::string& id) const {
  auto alias = impl_->store->Lookup(id);
  if (!alias) throw NotFound("unknown document id '" + id + "'");
  EncodedPrompt p;
  p.ids = alias->ids;
  p.text_begin = alias->text_begin;
  p.text_end = alias->text_end;
  return p;
}

std::vector<ResolvedDocument> FrontEnd::ResolveDocuments(const std::vector<DocumentRef>& docs,
                                                         KvSource source) const {
  const Impl& e = *impl_;
  std::vector<ResolvedDocument> out;
  for (const DocumentRef& d : docs) {
    ResolvedDocument r;
    r.source = source;
    if (!d.id.empty()) {
      auto alias = e.store->Lookup(d.id);
      if (!alias) throw NotFound("unknown document id '" + d.id + "'");
      if (alias->source == source) {
        r = *alias;
      } else if (source == KvSource::kCausal) {
        // A causal entry holds the document's own tokens, without the embed template.
        r.ids.assign(alias->ids.begin() + static_cast<std::ptrdiff_t>(alias->text_begin),
                     alias->ids.begin() + static_cast<std::ptrdiff_t>(alias->text_end));
        r.text_end = r.ids.size();
      } else {
        const std::string text = e.tokenizer->Decode(std::vector<int32_t>(
            alias->ids.begin() + static_cast<std::ptrdiff_t>(alias->text_begin),
            alias->ids.begin() + static_cast<std::ptrdiff_t>(alias->text_end)));
        EncodedPrompt p =
            EncodeEmbedPrompt(*e.tokenizer, e.prompt_template, "", text, d.parse_special);
        r.ids = std::move(p.ids);
        r.text_begin = p.text_begin;
        r.text_end = p.text_end;
      }
    } else if (d.text.empty()) {
      r.ids = d.ids;
      r.text_end = r.ids.size();
      for (int32_t id : r.ids) {
        if (id < 0 || id >= e.config.vocab_size) {
          throw Unprocessable("document token id " + std::to_string(id) +
                              " is outside the vocabulary");
        }
      }
    } else {
      if (source == KvSource::kEmbed) {
        EncodedPrompt p =
            EncodeEmbedPrompt(*e.tokenizer, e.prompt_template, "", d.text, d.parse_special);
        r.ids = std::move(p.ids);
        r.text_begin = p.text_begin;
        r.text_end = p.text_end;
      } else {
        r.ids = e.tokenizer->Encode(d.text, d.parse_special);
        r.text_end = r.ids.size();
      }
    }
    if (r.ids.empty()) throw Unprocessable("a document has no tokens");
    r.key = e.store->MakeKey(e.prompt_template.name, source, r.ids);
    out.push_back(std::move(r));
  }
  // On this HTTP thread, so that the inference thread finds them in memory.
  std::vector<DocKey> keys;
  for (const ResolvedDocument& r : out) keys.push_back(r.key);
  e.store->Prefetch(keys);
  return out;
}

void FrontEnd::PrefetchEmbedded(const std::vector<EncodedPrompt>& prompts) const {
  std::vector<DocKey> keys;
  for (const EncodedPrompt& p : prompts) {
    keys.push_back(impl_->store->MakeKey(impl_->prompt_template.name, KvSource::kEmbed, p.ids));
  }
  impl_->store->Prefetch(keys);
}

DocKvEntry ComputeEntry(const Runner::Impl& r, const ResolvedDocument& doc) {
  c10::InferenceMode guard;
  const int64_t n = static_cast<int64_t>(doc.ids.size());
  std::vector<int64_t> ids(doc.ids.begin(), doc.ids.end());
  ForwardInput in;
  in.ids = at::tensor(ids, at::kLong).view({1, n});      // [1, T]
  in.positions = at::arange(n, at::kLong).view({1, n});  // [1, T]
  in.attention =
      doc.source == KvSource::kEmbed ? AttentionSpec::Bidirectional() : AttentionSpec::Causal();
  KvCache cache = r.decoder->NewCache(1);
  // On the CPU: the pooled vectors below are read through data_ptr.
  at::Tensor h = r.decoder->Forward(in, &cache)[0].to(at::kCPU).to(at::kFloat);  // [T, H]
  DocKvEntry entry;
  entry.key = doc.key;
  entry.source = doc.source;
  entry.ids = doc.ids;
  entry.text_begin = doc.text_begin;
  entry.text_end = doc.text_end;
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    entry.keys.push_back(cache.keys(l)[0].clone());  // [Hkv, T, D]
    entry.values.push_back(cache.values(l)[0].clone());
  }
  if (doc.source == KvSource::kEmbed && doc.text_end > doc.text_begin) {
    at::Tensor span = h.narrow(0, static_cast<int64_t>(doc.text_begin),
                               static_cast<int64_t>(doc.text_end - doc.text_begin));  // [S, H]
    at::Tensor mean = span.mean(0).contiguous(), last = span[-1].contiguous();
    entry.mean.assign(mean.data_ptr<float>(), mean.data_ptr<float>() + mean.numel());
    entry.last.assign(last.data_ptr<float>(), last.data_ptr<float>() + last.numel());
  }
  return entry;
}

KvCache AssembleDocuments(const Runner::Impl& r, const std::vector<ResolvedDocument>& docs,
                          DocPositions positions, int64_t reserve_after) {
  c10::InferenceMode guard;
  const Decoder& d = *r.decoder;
  std::vector<std::shared_ptr<const DocKvEntry>> entries;
  int64_t total = 0;
  for (const ResolvedDocument& doc : docs) {
    std::shared_ptr<const DocKvEntry> entry = r.shared.store->Get(doc.key);
    if (!entry) {
      entry = r.shared.store->Put(ComputeEntry(r, doc));
      r.shared.store->CountComputed();
    }
    total += entry->tokens();
    entries.push_back(std::move(entry));
  }
  KvCache cache = d.NewCache(1);
  // One allocation for documents, prompt and answer: growing step by step would
  // copy the documents' K/V again at every doubling.
  cache.Reserve(std::min(total + reserve_after, r.shared.config.max_position_embeddings));
  int64_t offset = 0;
  for (const auto& entry : entries) {
    const int64_t n = entry->tokens();
    // Entries hold keys for positions 0..n-1; a rotation by the start moves
    // them exactly to where the document sits in this prompt.
    const int64_t start = positions == DocPositions::kSequential ? offset : 0;
    auto [ks, vs] = cache.Slots(n);  // [1, Hkv, n, D] per layer
    d.PlaceKv(ks, entry->keys, vs, entry->values, start);
    cache.Advance(at::ones({1, n}, at::TensorOptions().dtype(at::kBool).device(d.device())));
    offset += n;
  }
  return cache;
}

}  // namespace gritserve
