// The HTTP/1.1 front: connections, framing, deadlines and workers, on
// Boost.Beast (parsing, serialising) and Boost.Asio (sockets, timers).
//
// Why not cpp-httplib 0.11 (used before): it gives every connection a thread
// for as long as the connection lives and restarts its read timeout with every
// byte, so a few dozen slow clients held every thread; it answered one of
// several pipelined requests, applied Range to every response, waited for the
// timeout on bad framing, accepted two different Content-Length headers, and
// wrote headers and body in separate small writes without TCP_NODELAY. Here
// reading and writing are asynchronous on a couple of I/O threads, each phase
// of a request has a deadline that bytes do not extend, and only a request
// read in full takes a worker thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gritserve/common/error.h"

namespace gritserve::http {

struct Request {
  std::string method;  // as sent, e.g. "POST"
  std::string path;    // the target up to any '?'
  std::string query;   // after the '?', undecoded
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // The first header of that name (any case); empty when there is none.
  std::string Header(const std::string& name) const;
};

// Where a streamed response writes its body. Write blocks while the client
// is behind by more than a bounded amount, and returns false once the client
// has gone, has not taken its data within the write deadline, or the server
// is stopping: the producer should then stop.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  virtual bool Write(std::string data) = 0;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // Set for a streamed (chunked) body: runs on a worker thread after the
  // status line and headers went out, and returns when the body is complete.
  std::function<void(ChunkSink&)> stream;
  bool close = false;  // close the connection after this response

  void SetHeader(std::string name, std::string value);
};

using Handler = std::function<void(const Request&, Response&)>;

struct HttpLimits {
  int64_t max_body_bytes = 4 << 20;
  uint32_t max_header_bytes = 16 << 10;
  int64_t max_connections = 1024;  // open at once; past it a new one gets 503 and is closed
  int64_t worker_threads = 72;     // run handlers of requests read in full
  int io_threads = 2;
  // Deadlines that a trickle of bytes does not extend.
  std::chrono::milliseconds header_timeout{10000};  // from a request's first byte to its headers' end
  std::chrono::milliseconds body_timeout{60000};    // the whole body, once the headers are in
  std::chrono::milliseconds idle_timeout{60000};    // a kept-alive connection waiting for a request
  std::chrono::milliseconds write_timeout{60000};   // each response write to be taken by the client
  size_t stream_buffer_bytes = 1 << 20;             // a stream's data queued for a slow reader
};

// What the server needs from its user.
struct HttpCallbacks {
  Handler handle;
  // Requests cheap enough to answer on an I/O thread (they never block), so
  // that they answer even while every worker is busy.
  std::function<bool(const Request&)> runs_inline;
  // Fills the response for a failure found outside any handler (bad framing,
  // too large, too slow, too many connections), in the API's error shape.
  std::function<void(const Error&, Response&)> error;
};

class HttpServer {
 public:
  HttpServer(HttpLimits limits, HttpCallbacks callbacks);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Listens on host:port (port 0: any free port); returns the bound port, or
  // -1 with `error` set.
  int Bind(const std::string& host, int port, std::string* error);
  // Starts accepting on the I/O threads; returns at once.
  void Start();
  // Stops accepting, closes every connection, ends streams and joins all
  // threads (handlers still running are waited for).
  void Stop();

  int64_t open_connections() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// A GET of target on host:port within timeout (the health check's client):
// the status and body; Error(kUnavailable) when no answer came.
std::pair<int, std::string> Get(const std::string& host, int port, const std::string& target,
                                std::chrono::milliseconds timeout);

}  // namespace gritserve::http
