#include "http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

namespace gritserve::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using Clock = std::chrono::steady_clock;

std::string Request::Header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (beast::iequals(k, name)) return v;
  }
  return {};
}

void Response::SetHeader(std::string name, std::string value) {
  for (auto& [k, v] : headers) {
    if (beast::iequals(k, name)) {
      v = std::move(value);
      return;
    }
  }
  headers.emplace_back(std::move(name), std::move(value));
}

namespace {

// After an error that closes the connection, unread request bytes are read
// and dropped for a moment before the socket closes: closing with unread data
// resets the connection, and the client could lose the error response.
constexpr std::chrono::milliseconds kLingerTime{1000};
constexpr size_t kLingerBytes = 64 << 20;

// %XX escapes in a path, as clients send ids with spaces or slashes; anything
// that is not a valid escape stays as it is.
std::string PercentDecode(const std::string& s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool IsBodyMethod(const std::string& m) { return m == "POST" || m == "PUT" || m == "PATCH"; }

// A failure to read a request, as the error its client is sent.
Error ReadFailure(const beast::error_code& ec, const char* phase, int64_t max_body_bytes) {
  if (ec == beast::error::timeout) {
    return Error(ErrorKind::kTimeout, std::string("the request's ") + phase +
                                          " did not arrive within its deadline");
  }
  if (ec == bhttp::error::body_limit) {
    return Error(ErrorKind::kTooLarge,
                 "request body larger than " + std::to_string(max_body_bytes) + " bytes");
  }
  if (ec == bhttp::error::header_limit) {
    return Error(ErrorKind::kHeaderTooLarge, "request header fields too large");
  }
  if (ec == bhttp::error::bad_content_length) return InvalidRequest("bad Content-Length");
  if (ec == bhttp::error::partial_message) {
    return InvalidRequest(std::string("the connection ended inside the request's ") + phase);
  }
  return InvalidRequest(std::string("malformed request ") + phase + ": " + ec.message());
}

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  class Session;

  HttpLimits limits;
  HttpCallbacks callbacks;
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  asio::thread_pool workers;
  std::vector<std::thread> io_threads;
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> connections{0};
  std::mutex sessions_mu;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;

  Impl(HttpLimits l, HttpCallbacks c)
      : limits(l), callbacks(std::move(c)), workers(static_cast<size_t>(l.worker_threads)) {}

  void Accept();
  void Refuse(tcp::socket socket);
};

class HttpServer::Impl::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<Impl> srv, tcp::socket socket)
      : srv_(std::move(srv)), stream_(std::move(socket)), deadline_(stream_.get_executor()) {
    srv_->connections.fetch_add(1);
  }
  ~Session() {
    srv_->connections.fetch_sub(1);
    std::lock_guard<std::mutex> lock(srv_->sessions_mu);
    srv_->sessions.erase(this);
  }

  void Start() {
    beast::error_code ec;
    // Responses go out in one write, but streamed events are small: without
    // this, Nagle's algorithm holds each back for the client's delayed ACK.
    stream_.socket().set_option(tcp::no_delay(true), ec);
    WaitForRequest();
  }

  // From Stop(): any thread.
  void Close() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      beast::error_code ec;
      self->stream_.socket().close(ec);
    });
    cv_.notify_all();
  }

 private:
  class Sink : public ChunkSink {
   public:
    explicit Sink(Session& s) : s_(s) {}
    bool Write(std::string data) override { return s_.QueueChunk(std::move(data)); }

   private:
    Session& s_;
  };

  const HttpLimits& limits() const { return srv_->limits; }

  // A kept-alive connection may idle until the next request's first byte;
  // from that byte on, the headers have their own deadline.
  void WaitForRequest() {
    if (srv_->stopping) return Shutdown();
    if (buffer_.size() > 0) return ReadHeader();  // pipelined
    stream_.expires_after(limits().idle_timeout);
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](
                                                       beast::error_code ec, size_t n) {
      if (ec) return self->Shutdown();
      self->buffer_.commit(n);
      self->ReadHeader();
    });
  }

  // Header and body reads end at a deadline of our own: the stream's own
  // timeout would close the socket, and the client should get its 408.
  void ArmDeadline(std::chrono::milliseconds after) {
    stream_.expires_never();
    timed_out_ = false;
    const uint64_t gen = ++deadline_gen_;
    deadline_.expires_after(after);
    deadline_.async_wait([self = shared_from_this(), gen](beast::error_code ec) {
      if (ec || gen != self->deadline_gen_) return;  // the read ended first
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }

  // The read's outcome, with a cancellation by the deadline made a timeout.
  beast::error_code Disarm(beast::error_code ec) {
    ++deadline_gen_;
    deadline_.cancel();
    return timed_out_ ? beast::error_code(beast::error::timeout) : ec;
  }

  void ReadHeader() {
    parser_.emplace();
    parser_->header_limit(limits().max_header_bytes);
    parser_->body_limit(static_cast<uint64_t>(std::max<int64_t>(limits().max_body_bytes, 0)));
    ArmDeadline(limits().header_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = shared_from_this()](beast::error_code ec, size_t) {
                               self->OnHeader(self->Disarm(ec));
                             });
  }

  void OnHeader(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream) return Shutdown();
    if (ec) {
      return Fail(ReadFailure(ec, "header", limits().max_body_bytes));
    }
    const auto& msg = parser_->get();
    const std::string method(msg.method_string());
    if (msg.count(bhttp::field::content_length) > 1) {
      // Even equal copies are refused: proxies in front may read a different one.
      return Fail(InvalidRequest("more than one Content-Length header"));
    }
    if (msg.count(bhttp::field::transfer_encoding) > 0 && !parser_->chunked()) {
      return Fail(InvalidRequest("unsupported Transfer-Encoding (only chunked is accepted)"));
    }
    if (IsBodyMethod(method) && !parser_->content_length() && !parser_->chunked()) {
      return Fail(Error(ErrorKind::kLengthRequired,
                        method + " needs a Content-Length or a chunked body"));
    }
    if (beast::iequals(msg[bhttp::field::expect], "100-continue") && !parser_->is_done()) {
      auto cont = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      stream_.expires_after(limits().write_timeout);
      asio::async_write(stream_, asio::buffer(*cont),
                        [self = shared_from_this(), cont](beast::error_code ec2, size_t) {
                          if (ec2) return self->Shutdown();
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    if (parser_->is_done()) return OnBody({});
    ArmDeadline(limits().body_timeout);
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        self->OnBody(self->Disarm(ec));
                      });
  }

  void OnBody(beast::error_code ec) {
    if (ec) {
      return Fail(ReadFailure(ec, "body", limits().max_body_bytes));
    }
    stream_.expires_never();
    auto msg = parser_->release();
    parser_.reset();
    req_ = Request();
    req_.method = std::string(msg.method_string());
    const std::string target(msg.target());
    const size_t q = target.find('?');
    req_.path = PercentDecode(target.substr(0, q));
    if (q != std::string::npos) req_.query = target.substr(q + 1);
    for (const auto& field : msg) {
      req_.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    req_.body = std::move(msg.body());
    keep_alive_ = msg.keep_alive();
    version_ = msg.version();
    res_ = Response();
    if (srv_->callbacks.runs_inline && srv_->callbacks.runs_inline(req_)) {
      Handle();
      return Respond();
    }
    asio::post(srv_->workers, [self = shared_from_this()] {
      self->Handle();
      asio::post(self->stream_.get_executor(), [self] { self->Respond(); });
    });
  }

  void Handle() {
    try {
      srv_->callbacks.handle(req_, res_);
    } catch (const std::exception& e) {
      spdlog::error("{} {}: {}", req_.method, req_.path, e.what());
      res_ = Response();
      srv_->callbacks.error(Error(ErrorKind::kInternal, "internal error"), res_);
    }
  }

  // An error found before any handler ran; the connection closes after it.
  void Fail(const Error& error) {
    parser_.reset();
    res_ = Response();
    srv_->callbacks.error(error, res_);
    res_.close = true;
    keep_alive_ = false;
    Respond();
  }

  void Respond() {
    if (res_.stream) return RespondStreamed();
    auto msg = std::make_shared<bhttp::response<bhttp::string_body>>();
    msg->version(version_ == 10 ? 10 : 11);
    msg->result(static_cast<unsigned>(res_.status));
    for (const auto& [k, v] : res_.headers) msg->set(k, v);
    msg->set(bhttp::field::content_type, res_.content_type);
    msg->body() = std::move(res_.body);
    msg->keep_alive(keep_alive_ && !res_.close);
    msg->prepare_payload();
    stream_.expires_after(limits().write_timeout);
    bhttp::async_write(stream_, *msg,
                       [self = shared_from_this(), msg](beast::error_code ec, size_t) {
                         self->AfterResponse(ec, msg->keep_alive());
                       });
  }

  void AfterResponse(beast::error_code ec, bool keep_alive) {
    if (ec) return Shutdown();
    if (!keep_alive) return Linger();
    WaitForRequest();
  }

  // Streamed: the headers, then the handler's producer on a worker, whose
  // chunks this strand writes in order.
  void RespondStreamed() {
    head_ = std::make_shared<bhttp::response<bhttp::empty_body>>();
    head_->version(11);
    head_->result(static_cast<unsigned>(res_.status));
    for (const auto& [k, v] : res_.headers) head_->set(k, v);
    head_->set(bhttp::field::content_type, res_.content_type);
    head_->keep_alive(keep_alive_ && !res_.close);
    head_->chunked(true);
    serializer_ = std::make_shared<bhttp::response_serializer<bhttp::empty_body>>(*head_);
    stream_.expires_after(limits().write_timeout);
    bhttp::async_write_header(
        stream_, *serializer_, [self = shared_from_this()](beast::error_code ec, size_t) {
          if (ec) {
            std::lock_guard<std::mutex> lock(self->mu_);
            self->failed_ = true;
          }
          asio::post(self->srv_->workers, [self] { self->Produce(); });
        });
  }

  void Produce() {
    Sink sink(*this);
    try {
      res_.stream(sink);
    } catch (const std::exception& e) {
      spdlog::error("{} {}: stream failed: {}", req_.method, req_.path, e.what());
      std::lock_guard<std::mutex> lock(mu_);
      failed_ = true;
    }
    std::lock_guard<std::mutex> lock(mu_);
    producer_done_ = true;
    if (!writing_) {
      writing_ = true;
      asio::post(stream_.get_executor(), [self = shared_from_this()] { self->WriteNextChunk(); });
    }
  }

  bool QueueChunk(std::string data) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!failed_ && !srv_->stopping && pending_bytes_ > limits().stream_buffer_bytes) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
    if (failed_ || srv_->stopping) return false;
    if (data.empty()) return true;  // an empty chunk would end the body
    pending_bytes_ += data.size();
    pending_.push_back(std::move(data));
    if (!writing_) {
      writing_ = true;
      asio::post(stream_.get_executor(), [self = shared_from_this()] { self->WriteNextChunk(); });
    }
    return true;
  }

  void WriteNextChunk() {
    std::unique_lock<std::mutex> lock(mu_);
    if (failed_ || srv_->stopping) {
      writing_ = false;
      cv_.notify_all();
      if (producer_done_) Shutdown();
      return;
    }
    if (pending_.empty()) {
      writing_ = false;
      if (producer_done_) {
        lock.unlock();
        WriteLastChunk();
      }
      return;
    }
    current_ = std::move(pending_.front());
    pending_.pop_front();
    lock.unlock();
    stream_.expires_after(limits().write_timeout);
    asio::async_write(stream_, bhttp::make_chunk(asio::buffer(current_)),
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        {
                          std::lock_guard<std::mutex> l(self->mu_);
                          self->pending_bytes_ -= self->current_.size();
                          if (ec) self->failed_ = true;
                        }
                        self->cv_.notify_all();
                        self->WriteNextChunk();
                      });
  }

  void WriteLastChunk() {
    stream_.expires_after(limits().write_timeout);
    asio::async_write(stream_, bhttp::make_chunk_last(),
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        const bool keep_alive = self->head_->keep_alive();
                        self->head_.reset();
                        self->serializer_.reset();
                        {
                          std::lock_guard<std::mutex> l(self->mu_);
                          self->producer_done_ = false;
                        }
                        self->AfterResponse(ec, keep_alive);
                      });
  }

  // Stop sending, read and drop what the client still sends for a moment, close.
  void Linger() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return Shutdown();
    linger_deadline_ = Clock::now() + kLingerTime;
    DrainSome();
  }

  void DrainSome() {
    if (Clock::now() >= linger_deadline_ || lingered_ > kLingerBytes) return Shutdown();
    buffer_.consume(buffer_.size());
    stream_.expires_at(linger_deadline_);
    stream_.async_read_some(buffer_.prepare(65536), [self = shared_from_this()](
                                                        beast::error_code ec, size_t n) {
      if (ec) return self->Shutdown();
      self->lingered_ += n;
      self->DrainSome();
    });
  }

  void Shutdown() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  std::shared_ptr<Impl> srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Request req_;
  Response res_;
  bool keep_alive_ = false;
  unsigned version_ = 11;
  asio::steady_timer deadline_;  // of the header or body being read
  uint64_t deadline_gen_ = 0;    // which read the armed deadline belongs to
  bool timed_out_ = false;
  Clock::time_point linger_deadline_;
  size_t lingered_ = 0;

  // A streamed response.
  std::shared_ptr<bhttp::response<bhttp::empty_body>> head_;
  std::shared_ptr<bhttp::response_serializer<bhttp::empty_body>> serializer_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> pending_;  // chunks the producer queued
  std::string current_;              // the chunk being written
  size_t pending_bytes_ = 0;
  bool writing_ = false;
  bool failed_ = false;
  bool producer_done_ = false;
};

void HttpServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [self = shared_from_this()](
                                                    beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || self->stopping) return;
    if (!ec) {
      if (self->connections.load() >= self->limits.max_connections) {
        self->Refuse(std::move(socket));
      } else {
        auto session = std::make_shared<Session>(self, std::move(socket));
        {
          std::lock_guard<std::mutex> lock(self->sessions_mu);
          self->sessions.emplace(session.get(), session);
        }
        session->Start();
      }
    } else {
      // Out of descriptors and the like: wait a little rather than spin.
      spdlog::warn("accept failed: {}", ec.message());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    self->Accept();
  });
}

// Over the connection cap: a short 503 and close, from a buffer that lives
// with the write.
void HttpServer::Impl::Refuse(tcp::socket socket) {
  Response res;
  callbacks.error(Error(ErrorKind::kUnavailable, "too many open connections; retry later"), res);
  auto text = std::make_shared<std::string>(
      "HTTP/1.1 " + std::to_string(res.status) + " " +
      std::string(bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(res.status)))) +
      "\r\nConnection: close\r\nContent-Type: " +
      res.content_type + "\r\nContent-Length: " + std::to_string(res.body.size()) + "\r\n\r\n" +
      res.body);
  auto sock = std::make_shared<tcp::socket>(std::move(socket));
  asio::async_write(*sock, asio::buffer(*text), [sock, text](beast::error_code, size_t) {
    beast::error_code ec;
    sock->shutdown(tcp::socket::shutdown_both, ec);
    sock->close(ec);
  });
}

HttpServer::HttpServer(HttpLimits limits, HttpCallbacks callbacks)
    : impl_(std::make_shared<Impl>(limits, std::move(callbacks))) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::Bind(const std::string& host, int port, std::string* error) {
  beast::error_code ec;
  tcp::resolver resolver(impl_->ioc);
  auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    *error = "cannot resolve '" + host + "': " + ec.message();
    return -1;
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    *error = ec.message();
    return -1;
  }
  return a.local_endpoint().port();
}

void HttpServer::Start() {
  impl_->Accept();
  for (int i = 0; i < std::max(1, impl_->limits.io_threads); ++i) {
    impl_->io_threads.emplace_back([impl = impl_] { impl->ioc.run(); });
  }
}

void HttpServer::Stop() {
  if (impl_->stopping.exchange(true)) return;
  asio::post(impl_->ioc, [impl = impl_] {
    beast::error_code ec;
    impl->acceptor.close(ec);
  });
  std::vector<std::shared_ptr<Impl::Session>> live;
  {
    std::lock_guard<std::mutex> lock(impl_->sessions_mu);
    for (auto& [_, weak] : impl_->sessions) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) s->Close();
  live.clear();
  // Handlers still running finish (their writes fail on closed sockets).
  impl_->workers.join();
  impl_->ioc.stop();
  for (auto& t : impl_->io_threads) t.join();
  impl_->io_threads.clear();
  // Operations still queued hold their sessions, which hold this server: run
  // them out (every socket is closed, so each ends at once).
  impl_->ioc.restart();
  impl_->ioc.run_for(std::chrono::seconds(2));
}

int64_t HttpServer::open_connections() const { return impl_->connections.load(); }

std::pair<int, std::string> Get(const std::string& host, int port, const std::string& target,
                                std::chrono::milliseconds timeout) {
  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);
  bhttp::request<bhttp::empty_body> req{bhttp::verb::get, target, 11};
  req.set(bhttp::field::host, host);
  req.set(bhttp::field::connection, "close");
  bhttp::response<bhttp::string_body> res;
  beast::flat_buffer buffer;
  beast::error_code failure;
  auto fail = [&](beast::error_code ec) { failure = ec; };
  // Asynchronous, so that one deadline covers connecting, sending and reading.
  stream.expires_after(timeout);
  resolver.async_resolve(host, std::to_string(port), [&](beast::error_code ec, auto results) {
    if (ec) return fail(ec);
    stream.async_connect(results, [&](beast::error_code ec2, auto) {
      if (ec2) return fail(ec2);
      bhttp::async_write(stream, req, [&](beast::error_code ec3, size_t) {
        if (ec3) return fail(ec3);
        bhttp::async_read(stream, buffer, res, [&](beast::error_code ec4, size_t) {
          if (ec4) fail(ec4);
        });
      });
    });
  });
  ioc.run();
  if (failure) {
    throw Error(ErrorKind::kUnavailable, "no answer from " + host + ":" + std::to_string(port) +
                                             ": " + failure.message());
  }
  return {static_cast<int>(res.result_int()), res.body()};
}

}  // namespace gritserve::http
