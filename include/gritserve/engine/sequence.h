// One sequence being generated, the one type from request to last decode
// step: the HTTP thread that submitted it waits on it for text and the result;
// the inference thread (Runner) starts and steps it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

#include "gritserve/engine/types.h"

namespace gritserve {

class Sequence {
 public:
  // With `on_text`, text goes to it as it becomes final (returning false
  // cancels); without, it is buffered for WaitForText.
  explicit Sequence(GenerateRequest request, TextCallback on_text = nullptr);
  ~Sequence();
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  const GenerateRequest& request() const { return request_; }

  // --- any thread: the client waiting for it ---
  // Waits up to `timeout` for new text or the end. Returns the text produced
  // since the last call; `done` tells whether the result is final.
  std::string WaitForText(std::chrono::milliseconds timeout, bool* done);
  // Blocks until Complete() and returns the result (or rethrows the error).
  GenerateResult Wait();
  // Waits for Complete() until `deadline`; true when it came.
  bool WaitUntil(std::chrono::steady_clock::time_point deadline);
  // The client went away: the inference thread stops it before its next token.
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // --- the inference thread ---
  // After Runner::Start: prefills on the first call, then one token per call.
  // Returns false once finished (the result is then final).
  bool Step();
  bool started() const { return state_ != nullptr; }
  bool finished() const;
  const GenerateResult& result() const;
  // Hands the result (or `error`) to whoever waits; called once, after the
  // last Step, by whoever drives the sequence.
  void Complete(std::exception_ptr error = nullptr);

  // Decode state (KV cache, sampler, stop strings), defined and used only
  // inside the engine; null until Runner::Start.
  struct State;
  State* state() const { return state_.get(); }

 private:
  friend class Runner;
  // From the decode state: text that became final. False: stop (cancelled).
  bool Deliver(const std::string& text);

  const GenerateRequest request_;
  const TextCallback on_text_;
  std::unique_ptr<State> state_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::string unread_;
  bool done_ = false;
  std::exception_ptr error_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace gritserve
