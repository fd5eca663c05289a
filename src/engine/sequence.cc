// Causal generation of one sequence: prefill, then one token per Step, with
// sampling, EOS, stop strings and streaming-safe text; and the hand-over of
// its text and result to the client waiting on it.
#include "gritserve/engine/sequence.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "engine_impl.h"
#include "gritserve/cache/kv_cache.h"
#include "gritserve/common/error.h"

namespace gritserve {

namespace {

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

// Long prompts are prefilled in chunks of this many tokens (see Run).
constexpr int64_t kChunk = 256;
// Prompt tokens that one shared pass takes in, over all prefilling generations
// (each gives at most kChunk): what starts together still prefills together,
// while a round stays short enough for those already decoding.
constexpr int64_t kRoundPrefillTokens = 2048;

}  // namespace

struct Sequence::State {
  State(const Runner::Impl& runner, Sequence& seq)
      : r_(runner),
        seq_(seq),
        prompt_(seq.request().prompt),
        documents_(seq.request().documents),
        positions_(seq.request().positions),
        params_(seq.request().params),
        sampler_(params_, runner.shared.sampleable_vocab),
        stream_(*runner.shared.tokenizer, /*skip_special=*/true),
        start_(std::chrono::steady_clock::now()) {
    const Tokenizer& tok = *r_.shared.tokenizer;
    for (const auto& s : params_.stop) {
      if (s.empty()) continue;
      // A stop string that is a special token never shows in the (special-free)
      // text, so it is matched as a token instead.
      if (auto id = tok.TokenToId(s); id && tok.IsSpecial(*id)) {
        stop_ids_.push_back(*id);
      } else {
        stops_.push_back(s);
      }
    }
    result_.prompt_tokens = static_cast<int64_t>(prompt_.size());
  }

  bool Step() {
    if (finished_) return false;
    c10::InferenceMode guard;
    if (params_.max_tokens <= 0) {
      Finish("length");
      return false;
    }
    at::Tensor logits;  // [V]
    if (!prefilled_) {
      if (fed_ == 0) PlaceDocuments();
      logits = Run(std::vector<int32_t>(prompt_.begin() + fed_, prompt_.end()), cache_.length());
      fed_ = static_cast<int64_t>(prompt_.size());
      EndPrefill();
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      logits = Run({result_.tokens.back()}, cache_.length());
      result_.decode_ms += MsSince(t0);
    }
    return Consume(logits);
  }

  // Batched prefill (StepGenerations): a prompt joins shared forwards one
  // chunk per round, so that a long prompt does not stall the generations
  // already decoding for its whole prefill, and a cancelled one stops between
  // chunks.
  bool CanJoinPrefill() const { return !prefilled_ && !finished_ && params_.max_tokens > 0; }
  // The next at most `limit` prompt tokens; the documents are placed before the first.
  std::vector<int64_t> NextPrefillChunk(int64_t limit) {
    if (fed_ == 0) PlaceDocuments();  // may compute and store missing documents
    const int64_t n = std::min({kChunk, limit, static_cast<int64_t>(prompt_.size()) - fed_});
    return std::vector<int64_t>(prompt_.begin() + fed_, prompt_.begin() + fed_ + n);
  }
  // Whether `n` more prompt tokens complete the prompt.
  bool CompletesPrefill(int64_t n) const {
    return fed_ + n == static_cast<int64_t>(prompt_.size());
  }
  // After a shared pass took `n` more prompt tokens into the cache.
  void FedPrefill(int64_t n) { fed_ += n; }

  // Documents come from the store (or are computed once and stored); only
  // the prompt itself is prefilled, after them.
  void PlaceDocuments() {
    prefill_start_ = std::chrono::steady_clock::now();
    // The cache is allocated once at its final length (documents, prompt and
    // every answer token, within the context), so decoding never copies it to
    // grow; pages the answer does not reach are never touched.
    const int64_t after = static_cast<int64_t>(prompt_.size()) + params_.max_tokens;
    if (documents_.empty()) {
      cache_ = r_.decoder->NewCache(1);
      cache_.Reserve(std::min(after, r_.shared.config.max_position_embeddings));
    } else {
      cache_ = AssembleDocuments(r_, documents_, positions_, after);
    }
    result_.documents_ms = MsSince(prefill_start_);
    result_.cached_tokens = cache_.length();
  }
  void EndPrefill() {
    result_.prefill_ms = MsSince(prefill_start_);
    prefilled_ = true;
  }

  // Batched decoding (StepGenerations): past its prefill, a generation's next
  // step is its last token through a forward shared with other generations.
  bool Batchable() const { return prefilled_ && !finished_; }
  int32_t NextInput() const { return result_.tokens.back(); }
  KvCache* cache() { return &cache_; }
  void AddDecodeMs(double ms) { result_.decode_ms += ms; }

  // The rest of a step once its logits are known: sample, then stop checks
  // and streaming.  logits: [V]
  bool Consume(const at::Tensor& logits) {
    const at::Tensor l = logits.to(at::kFloat).contiguous();  // [V]
    if (params_.capture_logits) {
      result_.step_logits.emplace_back(l.data_ptr<float>(), l.data_ptr<float>() + l.numel());
    }
    const int32_t next = sampler_.Sample(l.data_ptr<float>(), l.numel());
    if (result_.tokens.empty()) result_.ttft_ms = MsSince(start_);
    Accept(next);
    return !finished_;
  }

  bool finished() const { return finished_; }
  void Cancel() {
    if (!finished_) Finish("cancelled");
  }
  const GenerateResult& result() const { return result_; }

 private:
  // Feeds tokens at positions [pos, pos + n) and returns the last position's logits.
  // Long prompts go in chunks: causal attention over the cache makes that exact,
  // and it keeps activations small (glibc hands allocations over 32 MB back to
  // the OS each time, so one huge pass spends its time page-faulting).
  at::Tensor Run(const std::vector<int32_t>& tokens, int64_t pos) {
    const int64_t total = static_cast<int64_t>(tokens.size());
    at::Tensor h;  // [1, T, H] of the last chunk
    for (int64_t begin = 0; begin < total; begin += kChunk) {
      const int64_t n = std::min(kChunk, total - begin);
      std::vector<int64_t> ids(tokens.begin() + begin, tokens.begin() + begin + n);
      ForwardInput in;
      in.ids = at::tensor(ids, at::kLong).view({1, n});                                 // [1, T]
      in.positions = at::arange(pos + begin, pos + begin + n, at::kLong).view({1, n});  // [1, T]
      in.attention = AttentionSpec::Causal();
      in.last_position_only = true;          // earlier chunks only fill the cache
      h = r_.decoder->Forward(in, &cache_);  // [1, 1, H]
    }
    return r_.decoder->Logits(h[0])[0].to(at::kCPU);  // [V]
  }

  void Accept(int32_t token) {
    const bool is_eos = r_.shared.eos_ids.count(token) > 0 ||
                        std::find(stop_ids_.begin(), stop_ids_.end(), token) != stop_ids_.end();
    if (is_eos && !(params_.ignore_eos && r_.shared.eos_ids.count(token) > 0)) {
      Finish("stop");
      return;
    }
    result_.tokens.push_back(token);
    result_.completion_tokens = static_cast<int64_t>(result_.tokens.size());
    AddText(stream_.Push(token));
    if (finished_) return;
    if (result_.completion_tokens >= params_.max_tokens ||
        cache_.length() + 1 >= r_.shared.config.max_position_embeddings) {
      Finish("length");
    }
  }

  // Emits text that can no longer be part of a stop string; finishes on a stop.
  void AddText(const std::string& piece) {
    pending_ += piece;
    size_t cut = std::string::npos;
    for (const auto& s : stops_) cut = std::min(cut, pending_.find(s));
    if (cut != std::string::npos) {
      Emit(pending_.substr(0, cut));
      pending_.clear();
      Finish("stop");
      return;
    }
    size_t hold = 0;
    for (const auto& s : stops_) {
      for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k) {
        if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
      }
    }
    Emit(pending_.substr(0, pending_.size() - hold));
    pending_.erase(0, pending_.size() - hold);
  }

  void Emit(const std::string& text) {
    if (text.empty()) return;
    result_.text += text;
    if (!seq_.Deliver(text)) Finish("cancelled");
  }

  void Finish(const std::string& reason) {
    if (finished_) return;
    if (reason != "cancelled") {
      // Whatever the stream decoder held back is final now; a stop string may
      // still complete inside it.
      std::string tail = pending_ + stream_.Flush();
      pending_.clear();
      size_t cut = std::string::npos;
      for (const auto& s : stops_) cut = std::min(cut, tail.find(s));
      finished_ = true;  // set first so a cancelling callback cannot re-enter
      result_.finish_reason = cut != std::string::npos ? "stop" : reason;
      if (cut != std::string::npos) tail.resize(cut);
      if (!tail.empty()) {
        result_.text += tail;
        seq_.Deliver(tail);
      }
    } else {
      finished_ = true;
      result_.finish_reason = reason;
    }
    cache_ = KvCache();  // free the KV memory as soon as the sequence ends
  }

  const Runner::Impl& r_;
  Sequence& seq_;
  const std::vector<int32_t>& prompt_;
  const std::vector<ResolvedDocument>& documents_;
  const DocPositions positions_;
  const SamplingParams& params_;
  Sampler sampler_;
  StreamDecoder stream_;
  std::chrono::steady_clock::time_point start_;
  KvCache cache_;
  std::vector<std::string> stops_;
  std::vector<int32_t> stop_ids_;
  std::string pending_;
  std::chrono::steady_clock::time_point prefill_start_;
  int64_t fed_ = 0;  // prompt tokens already in the cache (batched prefill)
  bool prefilled_ = false;
  bool finished_ = false;
  GenerateResult result_;
};

namespace {

// A sequence in a round's shared forward pass.
struct Member {
  size_t index;  // in the round's sequences
  Sequence::State* state;
  bool prefill;            // feeds prompt tokens (else a decode step)
  int64_t fed = 0;         // prompt tokens it feeds this round (0: a decode step)
  int64_t logit_row = -1;  // its row of the round's logits, or -1 (no token yet)
};

// The shared pass's inputs: a chunk of each prefilling prompt (within the
// round's token budget) and each decoding sequence's last token. Members that
// fail to join get their error; those left for a later round continue.
std::vector<Member> JoinRound(const std::vector<Member>& candidates,
                              std::vector<ForwardInput>* inputs, std::vector<KvCache*>* caches,
                              std::vector<bool>* more, std::vector<std::exception_ptr>* errors) {
  std::vector<Member> joined;
  int64_t budget = kRoundPrefillTokens;
  for (Member m : candidates) {
    try {
      std::vector<int64_t> ids;
      if (m.prefill) {
        if (budget == 0) {
          (*more)[m.index] = true;  // waits for a later round
          continue;
        }
        ids = m.state->NextPrefillChunk(budget);
        budget -= static_cast<int64_t>(ids.size());
      } else {
        ids.push_back(m.state->NextInput());
      }
      const int64_t n = static_cast<int64_t>(ids.size());
      const int64_t pos = m.state->cache()->length();
      ForwardInput in;
      in.ids = at::tensor(ids, at::kLong).view({1, n});                 // [1, T]
      in.positions = at::arange(pos, pos + n, at::kLong).view({1, n});  // [1, T]
      in.attention = AttentionSpec::Causal();
      inputs->push_back(std::move(in));
      caches->push_back(m.state->cache());
      m.fed = m.prefill ? n : 0;
      joined.push_back(m);
    } catch (...) {
      (*errors)[m.index] = std::current_exception();
    }
  }
  return joined;
}

// Runs the shared pass and gives each member its outcome.
void RunRound(const Runner::Impl& runner, std::vector<Member> joined,
              const std::vector<ForwardInput>& inputs, const std::vector<KvCache*>& caches,
              std::vector<bool>* more, std::vector<std::exception_ptr>* errors) {
  const auto t0 = std::chrono::steady_clock::now();
  // Logits only for members with a next token to sample: decode steps, and
  // prompts whose last chunk this is.
  std::vector<int64_t> sampling;  // indices into joined
  for (size_t k = 0; k < joined.size(); ++k) {
    if (joined[k].fed == 0 || joined[k].state->CompletesPrefill(joined[k].fed)) {
      joined[k].logit_row = static_cast<int64_t>(sampling.size());
      sampling.push_back(static_cast<int64_t>(k));
    }
  }
  at::Tensor logits;  // [sampling, V]
  try {
    // [joined, H]: each member's last position
    at::Tensor last = runner.decoder->ForwardMany(inputs, caches, /*last_positions_only=*/true);
    if (!sampling.empty()) {
      logits = runner.decoder
                   ->Logits(last.index_select(0, at::tensor(sampling, at::kLong).to(last.device())))
                   .to(at::kCPU);
    }
  } catch (...) {
    for (const Member& m : joined) (*errors)[m.index] = std::current_exception();
    return;
  }
  const double ms = MsSince(t0);
  for (const Member& m : joined) {
    m.state->FedPrefill(m.fed);
    try {
      if (m.logit_row < 0) {
        (*more)[m.index] = true;  // a prompt with chunks still to come
        continue;
      }
      if (m.prefill) {
        m.state->EndPrefill();
      } else {
        m.state->AddDecodeMs(ms);
      }
      (*more)[m.index] = m.state->Consume(logits[m.logit_row]);
    } catch (...) {
      (*errors)[m.index] = std::current_exception();
    }
  }
}

}  // namespace

std::vector<bool> StepSequences(const Runner::Impl& runner, const std::vector<Sequence*>& seqs,
                                std::vector<std::exception_ptr>* errors) {
  c10::InferenceMode guard;
  std::vector<bool> more(seqs.size(), false);
  errors->assign(seqs.size(), nullptr);
  // Who joins the shared forward; the rest step alone.
  std::vector<Member> members;
  std::vector<size_t> alone;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence::State* st = seqs[i]->state();
    if (st == nullptr) {
      (*errors)[i] = std::make_exception_ptr(
          Error(ErrorKind::kInternal, "a sequence was stepped before Runner::Start"));
      continue;
    }
    if (seqs[i]->cancelled()) st->Cancel();
    if (st->Batchable() || st->CanJoinPrefill()) {
      members.push_back({i, st, !st->Batchable()});
    } else {
      alone.push_back(i);
    }
  }
  // A lone decode step keeps the single-sequence path (its one-row kernels).
  if (members.size() == 1 && !members[0].prefill) {
    alone.push_back(members[0].index);
    members.clear();
  }
  for (size_t i : alone) {
    try {
      more[i] = seqs[i]->Step();  // long prompts, finished ones, lone decodes
    } catch (...) {
      (*errors)[i] = std::current_exception();
    }
  }
  if (members.empty()) return more;
  std::vector<ForwardInput> inputs;
  std::vector<KvCache*> caches;
  std::vector<Member> joined = JoinRound(members, &inputs, &caches, &more, errors);
  if (!joined.empty()) RunRound(runner, std::move(joined), inputs, caches, &more, errors);
  return more;
}

// Here rather than in runner.cc: only this file sees State whole.
void Runner::Start(Sequence& sequence) {
  if (sequence.state_ != nullptr) throw Error(ErrorKind::kInternal, "a sequence started twice");
  front_.ValidateGenerate(sequence.request());
  sequence.state_ = std::make_unique<Sequence::State>(*impl_, sequence);
}

Sequence::Sequence(GenerateRequest request, TextCallback on_text)
    : request_(std::move(request)), on_text_(std::move(on_text)) {}

Sequence::~Sequence() = default;

bool Sequence::Step() {
  if (state_ == nullptr) {
    throw Error(ErrorKind::kInternal, "a sequence was stepped before Runner::Start");
  }
  return state_->Step();
}

bool Sequence::finished() const { return state_ != nullptr && state_->finished(); }

const GenerateResult& Sequence::result() const {
  if (state_ == nullptr) throw Error(ErrorKind::kInternal, "a sequence that never started");
  return state_->result();
}

bool Sequence::Deliver(const std::string& text) {
  if (on_text_) return on_text_(text) && !cancelled_;
  std::lock_guard<std::mutex> lock(mu_);
  unread_ += text;
  cv_.notify_all();
  return !cancelled_;
}

void Sequence::Complete(std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!error && state_ == nullptr) {
    error = std::make_exception_ptr(Error(ErrorKind::kInternal, "a sequence that never started"));
  }
  error_ = error;
  done_ = true;
  cv_.notify_all();
}

std::string Sequence::WaitForText(std::chrono::milliseconds timeout, bool* done) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !unread_.empty() || done_; });
  std::string out;
  out.swap(unread_);
  *done = done_;
  return out;
}

bool Sequence::WaitUntil(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return done_; });
}

GenerateResult Sequence::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
  return state_->result();
}

}  // namespace gritserve
